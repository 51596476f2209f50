"""Checkpoints that resume a run exactly: safetensors for tensors, JSON for everything else (no pickle).

A directory holds::

    model.safetensors       model weights (tied tensors stored once)
    optimizer.safetensors   optimizer state tensors ("state.<param index>.<name>")
    rng.safetensors         torch RNG states (CPU and each CUDA device)
    trainer_state.json      step, optimizer param groups and scalar state, data-loader position,
                            loss-scaler state, numpy and python RNG states, user extras

A DeepSpeed ZeRO run shards the model and optimizer states over the ranks, so the engine writes
those itself (``shards/``, files per rank in DeepSpeed's own format, next to its ``latest`` and
``zero_to_fp32.py``) and the model and optimizer files are left out: ``model=None, optimizer=None``
below.

Exact resumption needs *all* of: weights, optimizer moments and step counts, the LR schedule's
position (here a pure function of the step), the loader's position, and every RNG that the
rest of the run will draw from (dropout uses torch's; numpy's and python's are saved in case
user code draws from them). On CPU a resumed run is then bit-identical to an uninterrupted one
(tests/test_training_checkpoint.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

MODEL_FILE, OPTIM_FILE = "model.safetensors", "optimizer.safetensors"
RNG_FILE, STATE_FILE = "rng.safetensors", "trainer_state.json"


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Current RNG states: tensors (torch CPU, each CUDA device) and JSON-able (numpy legacy, python)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def _json_safe(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return x


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors keyed ``state.<i>.<name>``, JSON part)."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: _json_safe(v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state` (tuples such as ``betas`` restored)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, per_param in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(per_param)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    loader: Any = None,
    scaler: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint directory ``path`` (created if needed); returns it.

    ``model`` / ``optimizer`` None: their states are saved elsewhere (by a ZeRO engine).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    opt_meta = None
    if model is not None:
        save_model(model, str(path / MODEL_FILE))
    if optimizer is not None:
        opt_tensors, opt_meta = split_optimizer_state(optimizer.state_dict())
        save_file(opt_tensors, str(path / OPTIM_FILE))
    rng_tensors, rng_json = rng_state()
    save_file(rng_tensors, str(path / RNG_FILE))
    state = {
        "step": int(step),
        "optimizer": opt_meta,
        "loader": loader.state_dict() if loader is not None and hasattr(loader, "state_dict") else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_json,
        "extra": extra or {},
    }
    (path / STATE_FILE).write_text(json.dumps(state))
    return path


def read_state(path: str | Path) -> dict[str, Any]:
    """The JSON part of the checkpoint at ``path`` (step, loader, RNG, extras), nothing loaded."""
    path = Path(path)
    if not (path / STATE_FILE).exists():
        raise ValueError(f"path must be a checkpoint directory containing {STATE_FILE}, got {path}")
    return json.loads((path / STATE_FILE).read_text())


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    loader: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote into the given objects; returns the JSON state."""
    path = Path(path)
    state = read_state(path)
    for obj, name in ((model, MODEL_FILE), (optimizer, OPTIM_FILE)):
        if obj is not None and not (path / name).exists():
            raise ValueError(f"{path} has no {name}: it was saved by a DeepSpeed ZeRO run, load it with a ZeRO engine")
    if model is not None:
        missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=True)
        if missing or unexpected:
            raise RuntimeError(f"model mismatch: missing {missing}, unexpected {unexpected}")
    if optimizer is not None:
        optimizer.load_state_dict(join_optimizer_state(load_file(str(path / OPTIM_FILE)), state["optimizer"]))
    if loader is not None and state["loader"] is not None:
        loader.load_state_dict(state["loader"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_state(load_file(str(path / RNG_FILE)), state["rng"])
    return state
