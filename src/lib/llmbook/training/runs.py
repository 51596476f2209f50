"""Comparing training runs step by step, and the engines a launched run can use here.

A run's history is the list of per-step rows that :meth:`llmbook.training.Trainer.run` and
:func:`llmbook.training.launch.launch` return: dicts with at least ``step`` and ``loss``. Two runs
are "the same run" when their losses agree at every step; :func:`max_loss_diff` is that test and
:func:`loss_table` puts the curves side by side.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

History = Sequence[Mapping[str, float]]

ENGINE_PACKAGES = {"single": None, "ddp": "accelerate", "zero1": "deepspeed", "zero2": "deepspeed",
                   "zero3": "deepspeed"}


def max_loss_diff(a: History, b: History) -> float:
    """The largest ``|loss_a - loss_b|`` over the steps both histories hold, paired in order."""
    return float(max((abs(ra["loss"] - rb["loss"]) for ra, rb in zip(a, b)), default=0.0))


def loss_table(runs: Mapping[str, History]) -> Any:
    """A pandas DataFrame: one column of losses per run, indexed by the first run's steps (equal lengths)."""
    import pandas as pd  # lazily: pandas comes with the book extra, not with the library

    histories = list(runs.values())
    if not histories:
        raise ValueError("loss_table needs at least one run")
    lengths = {name: len(h) for name, h in runs.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"runs of different lengths: {lengths}")
    steps = pd.Index([int(r["step"]) for r in histories[0]], name="step")
    return pd.DataFrame({name: [float(r["loss"]) for r in h] for name, h in runs.items()}, index=steps)


def installed_engines(engines: Iterable[str]) -> list[str]:
    """The engines whose package is installed (``ddp``: accelerate; ``zero1..3``: deepspeed), in order."""
    found = []
    for engine in engines:
        if engine not in ENGINE_PACKAGES:
            raise ValueError(f"unknown engine {engine!r}; one of {tuple(ENGINE_PACKAGES)}")
        package = ENGINE_PACKAGES[engine]
        if package is None or importlib.util.find_spec(package) is not None:
            found.append(engine)
    return found
