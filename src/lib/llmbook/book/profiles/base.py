"""Typed chapter profiles: every size a chapter uses comes from one validated dataclass.

A chapter registers a config dataclass and one preset per profile (`smoke`, `cpu`, `gpu`, ...).
`resolve(chapter, profile, **overrides)` returns the preset with the overrides applied, after
checking each key, type and value, so a bad parameter fails with one clear message before any
notebook kernel starts (papermill on its own only warns about unknown parameters).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

PROFILES = ("smoke", "cpu", "gpu", "multi-gpu")


class ParameterError(ValueError):
    """A chapter parameter is unknown, of the wrong type, or impossible."""


@dataclass(kw_only=True)
class ChapterConfig:
    """Base of every chapter config: the fields shared by all chapters."""

    profile: str = "cpu"  # which preset the other fields came from
    seed: int = 0  # one seed drives every random choice in the chapter

    def check(self, condition: bool, key: str, message: str) -> None:
        """Raise a ParameterError naming `key` unless `condition` holds."""
        if not condition:
            raise ParameterError(f"parameter {key}={getattr(self, key)!r}: {message}")

    def validate(self) -> None:
        """Chapter configs override this to reject impossible combinations."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class TorchChapterConfig(ChapterConfig):
    """Base of chapters that run torch: the intra-op thread count belongs to the profile."""

    torch_threads: int | None = None  # intra-op threads; None = torch's default (1: tiny models, no oversubscription)

    def validate(self) -> None:
        self.check(self.torch_threads is None or self.torch_threads >= 1, "torch_threads", "must be None or >= 1")

    def check_head_split(self, width_key: str, n_heads: int) -> None:
        """The model width ``width_key`` splits into ``n_heads`` heads of even size (RoPE rotates pairs of dims)."""
        width = getattr(self, width_key)
        self.check(width % n_heads == 0, width_key, f"must be divisible by n_heads={n_heads}")
        self.check((width // n_heads) % 2 == 0, width_key, f"{width_key} / n_heads must be even (RoPE pairs dims)")

    def apply_threads(self) -> None:
        """Set torch's intra-op thread count from the profile (None leaves torch's default)."""
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)


@dataclass(kw_only=True)
class ChapterSpec:
    name: str  # the chapter's name without its number, e.g. "tokenization"
    config_cls: type[ChapterConfig]
    presets: dict[str, dict[str, Any]]  # profile -> field values that differ from the defaults


_REGISTRY: dict[str, ChapterSpec] = {}
C = TypeVar("C", bound=type[ChapterConfig])


def register(name: str, presets: dict[str, dict[str, Any]]) -> Callable[[C], C]:
    """Class decorator: make `cls` the config of chapter `name` with one preset per profile."""

    def wrap(cls: C) -> C:
        unknown = set(presets) - set(PROFILES)
        if unknown:
            raise ValueError(f"unknown profile(s) {sorted(unknown)}; allowed: {PROFILES}")
        _REGISTRY[name] = ChapterSpec(name=name, config_cls=cls, presets=presets)
        return cls

    return wrap


def spec(chapter: str) -> ChapterSpec:
    """The registered spec, or a bare one (only `profile` and `seed`) for unregistered chapters."""
    if chapter in _REGISTRY:
        return _REGISTRY[chapter]
    return ChapterSpec(name=chapter, config_cls=ChapterConfig, presets={p: {} for p in PROFILES})


def registered() -> list[str]:
    return sorted(_REGISTRY)


def parameter_types(chapter: str) -> dict[str, Any]:
    """Field name -> type annotation for a chapter's config (the keys `-p` may set)."""
    cls = spec(chapter).config_cls
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "profile"}


def resolve(chapter: str, profile: str, /, **overrides: Any) -> ChapterConfig:
    """The chapter's config for `profile`, with every non-None override applied and validated."""
    chapter_spec = spec(chapter)
    if profile not in chapter_spec.presets:
        raise ParameterError(
            f"chapter {chapter!r} has no profile {profile!r}; allowed: {sorted(chapter_spec.presets)}"
        )
    types_ = parameter_types(chapter)
    values = dict(chapter_spec.presets[profile])
    for key, value in overrides.items():
        if key not in types_:
            raise ParameterError(
                f"chapter {chapter!r} has no parameter {key!r}; allowed: {sorted(types_)}"
            )
        if value is not None:
            values[key] = check_type(key, value, types_[key])
    config = chapter_spec.config_cls(profile=profile, **values)
    config.validate()
    return config


def check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` (ints widened to float where a float is wanted) or raise ParameterError."""
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
        raise ParameterError(errors[0] if len(errors) == 1 else f"parameter {key}={value!r}: expected {_type_name(annotation)}")
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


def parse_value(chapter: str, key: str, text: str) -> Any:
    """Turn a command-line string into a typed value for `key` (JSON literals, else a plain string)."""
    types_ = parameter_types(chapter)
    if key not in types_:
        raise ParameterError(f"chapter {chapter!r} has no parameter {key!r}; allowed: {sorted(types_)}")
    if text in ("None", "null"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = {"True": True, "False": False}.get(text, text)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _wants_str(types_[key]):
        value = text  # "-p name 123" where a string is expected stays a string
    return check_type(key, value, types_[key])


def _wants_str(annotation: Any) -> bool:
    args = typing.get_args(annotation)
    return annotation is str or str in args or (typing.get_origin(annotation) is Literal and any(isinstance(a, str) for a in args))


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# Chapter configs register themselves on import.
from llmbook.profiles import tokenization as _tokenization  # noqa: E402,F401
from llmbook.profiles import attention as _attention  # noqa: E402,F401
from llmbook.profiles import pretraining_data as _pretraining_data  # noqa: E402,F401
from llmbook.profiles import pretraining as _pretraining  # noqa: E402,F401
