"""Typed chapter configs: every size a chapter uses is one field, declared once with its value per profile.

A chapter's config is a ``@dataclass(kw_only=True)`` subclass of :class:`ChapterConfig`. A field that
differs between profiles is declared with :func:`per_profile`, on one line with the comment that says
why::

    d_model: int = per_profile(smoke=64, cpu=96, gpu=512)  # C of the small models

A field that is the same everywhere is a plain default. :meth:`ChapterConfig.for_profile` builds the
config of a profile with overrides applied, after checking each key, type and value, so a bad
parameter fails with one clear message before any notebook kernel starts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Profile = Literal["smoke", "cpu", "gpu", "multi-gpu"]
PROFILES: tuple[str, ...] = typing.get_args(Profile)
# CUDA devices a profile needs; checked before a chapter runs (a GPU-scale run on a CPU would take hours)
REQUIRED_GPUS = {"smoke": 0, "cpu": 0, "gpu": 1, "multi-gpu": 2}
PER_PROFILE = "llmbook_per_profile"  # dataclass field metadata key holding {profile: value}

C = TypeVar("C", bound="ChapterConfig")


class ParameterError(ValueError):
    """A chapter parameter is unknown, of the wrong type, or impossible."""


def per_profile(*, smoke: Any, cpu: Any, gpu: Any, multi_gpu: Any = None) -> Any:
    """A dataclass field whose default differs by profile; the ``cpu`` value is the plain default.

    ``multi_gpu`` falls back to the ``gpu`` value. Values must be immutable (tuples, not lists).
    """
    values = {"smoke": smoke, "cpu": cpu, "gpu": gpu, "multi-gpu": gpu if multi_gpu is None else multi_gpu}
    return dataclasses.field(default=cpu, metadata={PER_PROFILE: values})


@dataclass(kw_only=True)
class ChapterConfig:
    """Base of every chapter config: the fields shared by all chapters."""

    profile: Profile = "cpu"  # which profile the other fields' defaults came from
    seed: int = 0  # one seed drives every random choice in the chapter

    @classmethod
    def for_profile(cls: type[C], profile: str, /, **overrides: Any) -> C:
        """The config of ``profile`` with every non-None override type-checked, applied and validated."""
        if profile not in PROFILES:
            raise ParameterError(f"no profile {profile!r}; allowed: {list(PROFILES)}")
        types_ = cls.parameter_types()
        values = {}
        for field in dataclasses.fields(cls):
            if PER_PROFILE in field.metadata:
                values[field.name] = field.metadata[PER_PROFILE][profile]
        for key, value in overrides.items():
            if key not in types_:
                raise ParameterError(f"no parameter {key!r}; allowed: {sorted(types_)}")
            if value is not None:
                values[key] = check_type(key, value, types_[key])
        config = cls(profile=profile, **values)
        config.validate()
        return config

    @classmethod
    def parameter_types(cls) -> dict[str, Any]:
        """Field name -> type annotation: the keys a notebook's ``params`` or the CLI's ``-p`` may set."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "profile"}

    @classmethod
    def parse_value(cls, key: str, text: str) -> Any:
        """Turn a command-line string into a typed value for ``key`` (JSON literals, else a plain string)."""
        types_ = cls.parameter_types()
        if key not in types_:
            raise ParameterError(f"no parameter {key!r}; allowed: {sorted(types_)}")
        if text in ("None", "null"):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = {"True": True, "False": False}.get(text, text)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _wants_str(types_[key]):
            value = text  # "-p name 123" where a string is expected stays a string
        return check_type(key, value, types_[key])

    def check(self, condition: bool, key: str, message: str) -> None:
        """Raise a ParameterError naming ``key`` unless ``condition`` holds."""
        if not condition:
            raise ParameterError(f"parameter {key}={getattr(self, key)!r}: {message}")

    def validate(self) -> None:
        """Chapter configs extend this to reject impossible combinations."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class TorchChapterConfig(ChapterConfig):
    """Base of chapters that run torch: the intra-op thread count belongs to the profile."""

    # intra-op threads; None = torch's default. 1 for tiny models: more threads only wait on each other
    torch_threads: int | None = per_profile(smoke=1, cpu=1, gpu=None)

    def validate(self) -> None:
        super().validate()
        self.check(self.torch_threads is None or self.torch_threads >= 1, "torch_threads", "must be None or >= 1")

    def apply_threads(self) -> None:
        """Set torch's intra-op thread count from the profile (None leaves torch's default)."""
        if self.torch_threads is not None:
            import torch  # lazily: configs are read by the CLI, which never needs torch

            torch.set_num_threads(self.torch_threads)

    def check_head_split(self, width_key: str, n_heads: int) -> None:
        """The model width ``width_key`` splits into ``n_heads`` heads of even size (RoPE rotates pairs of dims)."""
        width = getattr(self, width_key)
        self.check(width % n_heads == 0, width_key, f"must be divisible by n_heads={n_heads}")
        self.check((width // n_heads) % 2 == 0, width_key, f"{width_key} / n_heads must be even (RoPE pairs dims)")


def check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` (ints widened to float where a float is wanted) or raise ParameterError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value in args:
            return value
        raise ParameterError(f"parameter {key}={value!r}: allowed values are {list(args)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_type(key, value, arg)
            except ParameterError as error:
                errors.append(str(error))
        if len(errors) == 1:
            raise ParameterError(errors[0])
        raise ParameterError(f"parameter {key}={value!r}: expected {_type_name(annotation)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"parameter {key}={value!r}: expected {_type_name(annotation)}")
        item_type = args[0] if args else Any
        items = [check_type(key, item, item_type) for item in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ParameterError(f"parameter {key}={value!r}: expected {_type_name(annotation)}, got a bool")
    if not isinstance(value, annotation):
        raise ParameterError(
            f"parameter {key}={value!r}: expected {_type_name(annotation)}, got {type(value).__name__}"
        )
    return value


def _wants_str(annotation: Any) -> bool:
    args = typing.get_args(annotation)
    literal_str = typing.get_origin(annotation) is Literal and any(isinstance(a, str) for a in args)
    return annotation is str or str in args or literal_str


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
