"""The chapters' typed configs, by chapter name, and the checks a profile makes of the host.

``resolve("attention", "smoke", steps=20)`` is what the CLI and a notebook's first cell call: the
config of that profile with the overrides type-checked and validated (see :mod:`.base`).
"""

from __future__ import annotations

from typing import Any

from llmbook.book.profiles.attention import AttentionChapterConfig
from llmbook.book.profiles.base import (
    PROFILES,
    REQUIRED_GPUS,
    ChapterConfig,
    ParameterError,
    Profile,
    TorchChapterConfig,
    per_profile,
)
from llmbook.book.profiles.compression import CompressionChapterConfig
from llmbook.book.profiles.lora import LoraChapterConfig
from llmbook.book.profiles.post_training import PostTrainingConfig
from llmbook.book.profiles.pretraining import PretrainingConfig
from llmbook.book.profiles.pretraining_data import PretrainingDataConfig
from llmbook.book.profiles.rag import RagChapterConfig
from llmbook.book.profiles.serving import ServingChapterConfig
from llmbook.book.profiles.tokenization import TokenizationConfig

__all__ = [
    "CHAPTER_CONFIGS",
    "PROFILES",
    "ChapterConfig",
    "HardwareError",
    "ParameterError",
    "Profile",
    "TorchChapterConfig",
    "config_class",
    "per_profile",
    "require_hardware",
    "resolve",
]

# chapter name (the notebook's file name without its number) -> its config
CHAPTER_CONFIGS: dict[str, type[ChapterConfig]] = {
    "tokenization": TokenizationConfig,
    "attention": AttentionChapterConfig,
    "pretraining_data": PretrainingDataConfig,
    "pretraining": PretrainingConfig,
    "post_training": PostTrainingConfig,
    "lora": LoraChapterConfig,
    "compression": CompressionChapterConfig,
    "serving": ServingChapterConfig,
    "rag": RagChapterConfig,
}


class HardwareError(RuntimeError):
    """The profile needs GPUs this host does not have."""


def config_class(chapter: str) -> type[ChapterConfig]:
    """The chapter's config class; a chapter without one has only ``profile`` and ``seed``."""
    return CHAPTER_CONFIGS.get(chapter, ChapterConfig)


def resolve(chapter: str, profile: str, /, **overrides: Any) -> ChapterConfig:
    """The config of ``chapter`` for ``profile`` with the non-None overrides applied and validated."""
    try:
        return config_class(chapter).for_profile(profile, **overrides)
    except ParameterError as error:
        raise ParameterError(f"chapter {chapter!r}: {error}") from None


def cuda_device_count() -> int:
    """CUDA devices torch can use here (0 on a CPU-only build or host)."""
    import torch  # lazily: only GPU profiles ask, and the CLI should not load torch for the others

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_hardware(profile: str, *, cuda_devices: int | None = None) -> None:
    """Raise HardwareError unless this host has the CUDA devices ``profile`` needs (default: counted now)."""
    needed = REQUIRED_GPUS[profile]
    if needed == 0:
        return
    if cuda_devices is None:
        cuda_devices = cuda_device_count()
    if cuda_devices < needed:
        fallback = "gpu" if cuda_devices == 1 else "cpu"
        raise HardwareError(
            f"profile {profile!r} needs {needed} CUDA GPU{'s' if needed > 1 else ''} and this host has "
            f"{cuda_devices}; use --profile {fallback} (or smoke for a one-minute check)"
        )
