"""Compression benchmarks: int8 CPU kernels vs float32, llama.cpp quantisers vs the ``gguf`` package, and
GPTQ / SparseGPT / Wanda from llmbook.compression vs llmcompressor (wall time and perplexity).

Usage: python benchmarks/compression.py [--out benchmarks/results/compression.json] [--quick] [--threads N]
       [--calibration-threads N] [--layers N] [--no-reference] [--sections ...] [--methods ...]

Threads: sections 1 and 2 run with ``--threads`` torch threads (default: all available; section 1 also at 1);
section 3 with ``--calibration-threads`` (default 1, on both sides). On an oversubscribed machine MKL's
multi-threaded ``torch.cholesky_inverse`` (GPTQ and SparseGPT, both sides) was 50x slower with 2 threads than
with 1 (2 s instead of 0.04 s for 576 x 576, 23 s instead of 0.5 s for 1536 x 1536, measured on the shared
2-core development machine), and the int8 / fp32 kernels stall in multiples of ~8 ms there.
Run time on that machine (load 1-7): ``--quick`` ~2-5 min; ``--layers 4`` ~7 min; GPTQ alone on all 30 blocks
with llmcompressor 11.5 min, so the default (all three methods on 30 blocks) ~25-30 min, plus ~5 min the
first time to create the llmcompressor environment.

Everything is measured in one run on one machine; speed ratios are reference / ours for times (> 1 means ours,
or int8, is faster). Timed calls of the two sides are interleaved round-robin (order alternating) and the
fastest repeat counts (the least disturbed on a shared machine).

1. int8 linear latency. SmolLM2's MLP projections of block 3 (``up_proj`` 576 -> 1536, ``down_proj``
   1536 -> 576, from ``load_pretrained(layers=4)``), float32 vs ``llmbook.compression.int8_cpu.dynamic_int8``
   (PyTorch's dynamically quantised linear: per-channel int8 weights, activations quantised per call, fbgemm /
   oneDNN int8 GEMM), on 1, 16 and 256 rows (batch x tokens) of the layers' real inputs (hidden states of
   held-out text). Each timing is ``int8_cpu.linear_latency`` (median of ``LATENCY_REPEATS`` calls), fp32
   and int8 interleaved over 20 rounds (``--quick``: 6), min taken; ``fp32_over_int8`` > 1 means int8 is
   faster. ``rel_error`` is ``||y_int8 - y_fp32|| / ||y_fp32||`` on the same rows.
2. Quantise / dequantise throughput (values/s), ``llmbook.compression.ggml.quantize_ggml`` /
   ``dequantize_ggml`` vs ``gguf.quants.quantize`` / ``dequantize`` (the numpy port of ggml's reference
   quantisers) for Q8_0, Q4_0 and Q4_1, on (a) the 28 linear weights of the decoder blocks of
   ``load_pretrained(layers=4)`` (the output head, tied to the embedding, is not a decoder linear and is left
   out, as the recipes leave it) and (b) one random 2048 x 8192 matrix; same float32 numpy arrays to both;
   one warm-up call each, interleaved repeats, min time. Records whether the bytes and the dequantised values
   are identical (they should be: ``ggml`` is bit-exact).
3. Calibrated compression, ours vs llmcompressor 0.14.0.1, on SmolLM2-135M-Instruct (all 30 blocks; ``--quick``:
   the first 2; ``--layers``: the first N), float32 on CPU. Calibration: ``CAL_WINDOWS`` random windows of
   ``CAL_LENGTH`` tokens (``calibration.sample_windows``, seed 0) from the calibration split of
   ``evaluation.likelihood.heldout_text_split(wikipedia_documents())``; perplexity
   (``evaluation.likelihood.perplexity``, context 512, non-overlapping windows) on the first ``PPL_TOKENS``
   tokens of the test split. Methods, at matched settings:
   - GPTQ 4-bit asymmetric, groups of 64: ours ``gptq.gptq_linear`` with ``QuantSpec(bits=4, symmetric=False,
     group_size=64)``, ``act_order=True, static_groups=True`` (llmcompressor's default ``actorder="static"``:
     columns by decreasing H_ii, group scales from the original weights), block 128, damp 0.01; theirs
     ``GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
     num_bits=4, type="int", symmetric=False, strategy="group", group_size=64))}, ignore=["lm_head"])`` (the
     "W4A16" preset has groups of 128, which do not divide SmolLM2's 576 columns);
   - SparseGPT 2:4: ours ``pruning.prune_linear(method="sparsegpt", n=2, m=4)``; theirs
     ``SparseGPTModifier(sparsity=0.5, mask_structure="2:4", ignore=["re:.*lm_head"])``;
   - Wanda 50 % unstructured (per output row): ours ``prune_linear(method="wanda", sparsity=0.5)``; theirs
     ``WandaPruningModifier(sparsity=0.5, ignore=["re:.*lm_head"])``. (Their pruning modifiers name a target
     Linear ``"lm_head."``, so ``ignore=["lm_head"]`` misses it and the output head, tied to the embedding, is
     pruned too; ``lm_head_zero_fraction`` checks it is not: it should equal ``fp32_lm_head_zero_fraction``,
     about 1 % here because the cached SmolLM2 is dequantised from a Q4_1 GGUF file.)
   Ours runs through ``calibration.compress_sequentially`` (block by block, each block calibrated on the outputs
   of the compressed blocks before it); llmcompressor's ``oneshot`` runs its sequential pipeline, which does the
   same. llmcompressor pins transformers 5.17, so it runs in its own virtual environment
   (``.venv-llmcompressor``, created with the pinned torch and llmcompressor when missing; the section is
   skipped with the reason recorded when that fails, with ``--quick`` or with ``--no-reference``), in a child
   process, on the same model directory (``chain.pretrained.smollm2_dir()``) and the same calibration windows
   (a ``.pt`` file of token ids, batches of 4 as ours). The child saves the compressed decoder weights (fake-
   quantised float32: after ``oneshot`` without an ``output_dir`` the modules hold the dequantised weights) to
   a safetensors file; this process loads them into a copy of the float32 model and evaluates it with the same
   ``perplexity`` call as ours, so both numbers come from the same code and transformers version. Times:
   ``compress_s`` is the wall time of the whole calibrated compression (ours: ``compress_sequentially``;
   theirs: ``oneshot``, model already loaded, imports excluded), ``per_block_s`` that over the number of
   blocks, ``algorithm_s_per_linear`` the mean time inside the per-layer algorithm (ours: ``gptq_linear`` /
   ``prune_linear`` calls; theirs: the "time" METRIC lines llmcompressor logs per module). One run each (they
   take minutes), ours first. Also recorded: float32 and RTN (same grid, no calibration) perplexity; in
   ``agreement``, the fraction of block 0's weights that are equal on both sides and of its zero pattern (block 0
   sees identical inputs; SparseGPT's kept weights are updated in float64 by ours, float32 by theirs, so they
   agree to ~1e-3, not bit for bit) and the relative weight difference of each block; for GPTQ the most
   distinct values any group of 64 holds (<= 16 for a 4-bit grid) on each side.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from _results import write_results
from llmbook.chain.pretrained import load_pretrained, smollm2_dir
from llmbook.compression import ggml
from llmbook.compression.calibration import LinearStats, compress_sequentially, sample_windows
from llmbook.compression.gptq import gptq_linear
from llmbook.compression.int8_cpu import dynamic_int8, linear_latency
from llmbook.compression.pruning import prune_linear
from llmbook.compression.quantize import QuantSpec, fake_quantize
from llmbook.evaluation.likelihood import document_token_ids, heldout_text_split, perplexity, wikipedia_documents

REPO = Path(__file__).resolve().parent.parent
TRUNCATED_LAYERS = 4  # sections 1 and 2
MLP_BLOCK = 3  # block whose MLP projections section 1 times
ROWS = (1, 16, 256)
LATENCY_REPEATS = 5  # calls per linear_latency median; many interleaved rounds, min
QTYPES = ("Q8_0", "Q4_0", "Q4_1")
LARGE_SHAPE = (2048, 8192)
GPTQ_SPEC = QuantSpec(bits=4, symmetric=False, group_size=64)
CAL_WINDOWS, CAL_LENGTH, CAL_BATCH = 16, 256, 4  # 4096 calibration tokens
PPL_TOKENS, PPL_CONTEXT = 4096, 512
QUICK_LAYERS, QUICK_PPL_TOKENS, QUICK_CAL_WINDOWS = 2, 1024, 8
SECTIONS = ("int8_latency", "ggml_throughput", "calibrated")
LLMC_VENV = REPO / ".venv-llmcompressor"
LLMC_INSTALL = (
    f"python3 -m venv {LLMC_VENV} && {LLMC_VENV}/bin/pip install -q torch==2.13.0 && "
    f"{LLMC_VENV}/bin/pip install -q llmcompressor==0.14.0.1"
)


def interleaved_min(fns: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, float], dict]:
    """Run the fns round-robin (order alternating) ``rounds`` times; (min seconds, all seconds). A fn may return
    its own time (a float, e.g. a median of calls); otherwise its wall time counts."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds):
        for name, fn in list(fns.items()) if i % 2 == 0 else list(reversed(fns.items())):
            t0 = time.perf_counter()
            out = fn()
            times[name].append(out if isinstance(out, float) else time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}, times


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, the previous count restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def decoder_linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: weight}`` of every linear inside the decoder blocks (not the tied output head)."""
    return {
        f"{name}.weight": m.weight
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in name
    }


# ---------------------------------------------------------------------------------------------------------------
# 1. int8 dynamic-quantised linear vs float32


def mlp_inputs(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The real inputs (T, in) of block ``MLP_BLOCK``'s up_proj and down_proj for one text of token ids."""
    mlp = model.model.layers[MLP_BLOCK].mlp
    seen: dict[str, torch.Tensor] = {}
    handles = [
        getattr(mlp, name).register_forward_pre_hook(
            lambda _m, args, name=name: seen.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]).clone())
        )
        for name in ("up_proj", "down_proj")
    ]  # (1, T, in) -> (T, in)
    try:
        with torch.no_grad():
            model(ids[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def int8_latency(model: nn.Module, ids: torch.Tensor, rounds: int, repeats: int, threads: int) -> dict:
    """The cases at 1 torch thread and at ``threads``."""
    by_threads = {}
    for n in sorted({1, threads}):
        with torch_threads(n):
            by_threads[str(n)] = int8_cases(model, ids, rounds, repeats)
    kind = type(dynamic_int8(nn.Sequential(nn.Linear(8, 8)))[0])
    return {
        "int8_module": f"{kind.__module__}.{kind.__name__}",
        "quantized_engine": torch.backends.quantized.engine,
        "inputs": f"block {MLP_BLOCK}'s MLP inputs on {len(ids)} held-out tokens, first `rows` rows",
        "timing": f"linear_latency (median of {repeats} calls) per round, {rounds} interleaved rounds, min",
        "cases_by_torch_threads": by_threads,
    }


def int8_cases(model: nn.Module, ids: torch.Tensor, rounds: int, repeats: int) -> list[dict]:
    inputs = mlp_inputs(model, ids)
    mlp = model.model.layers[MLP_BLOCK].mlp
    res = []
    for name in ("up_proj", "down_proj"):
        fp32 = nn.Sequential(copy.deepcopy(getattr(mlp, name)))  # quantize_dynamic swaps children, not the root
        int8 = dynamic_int8(fp32)
        for rows in ROWS:
            x = inputs[name][:rows].contiguous()  # (rows, in)
            best, _ = interleaved_min(
                {
                    "fp32": partial(linear_latency, fp32, x, repeats=repeats),
                    "int8": partial(linear_latency, int8, x, repeats=repeats),
                },
                rounds,
            )
            with torch.inference_mode():
                y32, y8 = fp32(x), int8(x)
            res.append(
                {
                    "layer": f"{MLP_BLOCK}.mlp.{name}",
                    "in_out": [fp32[0].in_features, fp32[0].out_features],
                    "rows": rows,
                    "fp32_s": best["fp32"],
                    "int8_s": best["int8"],
                    "fp32_over_int8": best["fp32"] / best["int8"],
                    "rel_error": float((y8 - y32).norm() / y32.norm()),
                }
            )
    return res


# ---------------------------------------------------------------------------------------------------------------
# 2. llama.cpp quantisers, ours vs the gguf package


def ggml_qtype(qtype: str, weights: list[np.ndarray], n: int, repeats: int) -> dict:
    gtype = gguf.GGMLQuantizationType[qtype]
    tiny = np.random.default_rng(1).standard_normal((64, 256), dtype=np.float32)
    ggml.dequantize_ggml(ggml.quantize_ggml(tiny, qtype), qtype)  # warm-up
    gguf.quants.dequantize(gguf.quants.quantize(tiny, gtype), gtype)
    out: dict[str, list[np.ndarray]] = {}
    q_best, _ = interleaved_min(
        {
            "ours": lambda: out.__setitem__("ours", [ggml.quantize_ggml(w, qtype) for w in weights]),
            "gguf": lambda: out.__setitem__("gguf", [gguf.quants.quantize(w, gtype) for w in weights]),
        },
        repeats,
    )
    d_best, _ = interleaved_min(
        {
            "ours": lambda: out.__setitem__("ours_w", [ggml.dequantize_ggml(b, qtype) for b in out["ours"]]),
            "gguf": lambda: out.__setitem__("gguf_w", [gguf.quants.dequantize(b, gtype) for b in out["gguf"]]),
        },
        repeats,
    )
    return {
        "qtype": qtype,
        "quantize_values_per_s": {k: n / t for k, t in q_best.items()},
        "dequantize_values_per_s": {k: n / t for k, t in d_best.items()},
        "quantize_ours_over_gguf": q_best["gguf"] / q_best["ours"],
        "dequantize_ours_over_gguf": d_best["gguf"] / d_best["ours"],
        "bytes_identical": all(np.array_equal(a, b) for a, b in zip(out["ours"], out["gguf"], strict=True)),
        "dequantized_identical": all(np.array_equal(a, b) for a, b in zip(out["ours_w"], out["gguf_w"], strict=True)),
    }


def ggml_set(name: str, weights: list[np.ndarray], repeats: int) -> dict:
    n = sum(w.size for w in weights)
    rows = [ggml_qtype(qtype, weights, n, repeats) for qtype in QTYPES]
    return {"set": name, "tensors": len(weights), "values": n, "qtypes": rows}


def ggml_throughput(model: nn.Module, repeats: int) -> dict:
    weights = [w.detach().numpy().copy() for w in decoder_linear_weights(model).values()]
    large = np.random.default_rng(0).standard_normal(LARGE_SHAPE, dtype=np.float32)
    return {
        "repeats": repeats,
        "gguf_version": _dist_version("gguf"),
        "sets": [
            ggml_set(f"smollm2_{TRUNCATED_LAYERS}_blocks_decoder_linears", weights, repeats),
            ggml_set(f"random_{LARGE_SHAPE[0]}x{LARGE_SHAPE[1]}", [large], repeats),
        ],
    }


# ---------------------------------------------------------------------------------------------------------------
# 3. GPTQ / SparseGPT / Wanda, ours vs llmcompressor


METHODS = {
    "gptq_w4_asym_g64": lambda layer, stats: gptq_linear(
        layer, stats, GPTQ_SPEC, act_order=True, static_groups=True, block_size=128, damp=0.01
    ),
    "sparsegpt_2of4": lambda layer, stats: prune_linear(layer, stats, "sparsegpt", n=2, m=4),
    "wanda_50pct": lambda layer, stats: prune_linear(layer, stats, "wanda", sparsity=0.5),
}

CHILD = r"""
import json, sys, time
import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from datasets import Dataset
from loguru import logger
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
ids = torch.load(a["calibration"], weights_only=True)  # (n, T) int64
kwargs = {} if a["layers"] is None else {"num_hidden_layers": a["layers"]}
model = AutoModelForCausalLM.from_pretrained(a["model_dir"], dtype=torch.float32, **kwargs).eval()
if a["method"] == "gptq_w4_asym_g64":
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=64)
    recipe = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                          ignore=["lm_head"], block_size=128, dampening_frac=0.01)
elif a["method"] == "sparsegpt_2of4":
    recipe = SparseGPTModifier(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["re:.*lm_head"])
else:
    recipe = WandaPruningModifier(sparsity=0.5, targets=["Linear"], ignore=["re:.*lm_head"])
times = []
logger.add(lambda m: times.append(float(m.record["message"].split()[1].rstrip("s"))),
           filter=lambda r: r["level"].name == "METRIC" and r["message"].startswith("time "))
data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
t0 = time.perf_counter()
oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False, batch_size=a["batch_size"])
seconds = time.perf_counter() - t0
out = {n + ".weight": m.weight.detach().float().contiguous() for n, m in model.named_modules()
       if isinstance(m, torch.nn.Linear) and ".layers." in n}
save_file(out, a["out"])
import llmcompressor, transformers
print("RESULT " + json.dumps({"oneshot_s": seconds, "module_times_s": times, "linears": len(out),
      "lm_head_zero_fraction": float((model.lm_head.weight == 0).float().mean()),
      "versions": {"llmcompressor": llmcompressor.__version__, "transformers": transformers.__version__,
                   "torch": torch.__version__}}))
"""


def llmcompressor_python() -> tuple[Path | None, dict]:
    """The reference venv's python (created when missing), or None and why not."""
    python, info = LLMC_VENV / "bin" / "python", {"venv": str(LLMC_VENV)}
    if not LLMC_VENV.exists():
        t0 = time.perf_counter()
        proc = subprocess.run(LLMC_INSTALL, shell=True, capture_output=True, text=True)
        info.update(installed_now=True, install_s=time.perf_counter() - t0)
        if proc.returncode:
            info["skipped"] = f"install failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
            return None, info
    check = subprocess.run([str(python), "-c", "import llmcompressor"], capture_output=True, text=True)
    if check.returncode:
        info["skipped"] = f"{python} cannot import llmcompressor: {check.stderr.strip()[-800:]}"
        return None, info
    return python, info


def run_llmcompressor(
    python: Path, method: str, layers: int | None, calibration: Path, out: Path, threads: int
) -> dict:
    args = {
        "method": method,
        "layers": layers,
        "calibration": str(calibration),
        "out": str(out),
        "threads": threads,
        "model_dir": str(smollm2_dir()),
        "batch_size": CAL_BATCH,
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(python), "-c", CHILD, json.dumps(args)], capture_output=True, text=True, cwd=out.parent, env=env
    )
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"llmcompressor child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "child_wall_s": wall}


def compress_ours(model: nn.Module, batches: list[torch.Tensor], method: str) -> tuple[nn.Module, dict]:
    copied = copy.deepcopy(model)
    algo: list[float] = []

    def each(_name: str, layer: nn.Linear, stats: LinearStats) -> None:
        t0 = time.perf_counter()
        METHODS[method](layer, stats)
        algo.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    compress_sequentially(copied, batches, each)
    return copied, {"compress_s": time.perf_counter() - t0, "algorithm_s": algo}


def max_distinct_per_group(weights: dict[str, torch.Tensor], group: int = 64) -> int:
    worst = 0
    for w in weights.values():
        v = w.reshape(w.shape[0], -1, group).sort(dim=-1).values  # (out, G, group)
        worst = max(worst, int(((v[..., 1:] != v[..., :-1]).sum(-1) + 1).max()))
    return worst


def agreement(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict:
    """How close the two results are in block 0, whose inputs are the same on both sides, and the relative
    difference of every block (later blocks see the outputs of slightly different compressed blocks)."""

    def flat(weights: dict[str, torch.Tensor], block: int) -> torch.Tensor:  # in ours' order (load_file sorts)
        return torch.cat([weights[k].reshape(-1) for k in ours if f".layers.{block}." in k])

    blocks = sorted({int(k.split(".layers.")[1].split(".")[0]) for k in ours})
    a, b = flat(ours, 0), flat(theirs, 0)
    return {
        "block0_weights_equal_fraction": float((a == b).double().mean()),
        "block0_zero_pattern_agreement": float(((a == 0) == (b == 0)).double().mean()),
        "block0_max_abs_diff": float((a - b).abs().max()),
        "relative_diff_per_block": [
            float((flat(ours, i) - flat(theirs, i)).norm() / flat(ours, i).norm()) for i in blocks
        ],
    }


def side_summary(raw: dict, blocks: int, algo: list[float], ppl: float) -> dict:
    return {
        "compress_s": raw["compress_s"],
        "per_block_s": raw["compress_s"] / blocks,
        "algorithm_s_total": sum(algo),
        "algorithm_s_per_linear": sum(algo) / max(len(algo), 1),
        "ppl": ppl,
    }


def calibrated_compression(
    layers: int | None,
    quick: bool,
    reference: bool,
    threads: int,
    methods: list[str] | tuple[str, ...] = tuple(METHODS),
) -> dict:
    model, tok = load_pretrained(layers=layers)
    blocks = len(model.model.layers)
    cal_docs, _, test_docs = heldout_text_split(wikipedia_documents())
    n_windows = QUICK_CAL_WINDOWS if quick else CAL_WINDOWS
    batches = sample_windows(document_token_ids(tok, cal_docs), n_windows, CAL_LENGTH, batch_size=CAL_BATCH)
    test_ids = document_token_ids(tok, test_docs, max_tokens=QUICK_PPL_TOKENS if quick else PPL_TOKENS)

    def ppl(m: nn.Module) -> float:
        return perplexity(m, test_ids, context=PPL_CONTEXT).ppl

    rtn = copy.deepcopy(model)
    with torch.no_grad():
        for w in decoder_linear_weights(rtn).values():
            w.copy_(fake_quantize(w, GPTQ_SPEC))
    res: dict = {
        "model": f"SmolLM2-135M-Instruct, {blocks} decoder blocks, fp32",
        "calibration": f"{n_windows} windows x {CAL_LENGTH} tokens (batches of {CAL_BATCH}) from the calibration "
        "split, sample_windows seed 0",
        "perplexity": f"{len(test_ids)} tokens of the test split, context {PPL_CONTEXT}, non-overlapping windows",
        "fp32_lm_head_zero_fraction": float((model.lm_head.weight == 0).float().mean()),
        "fp32_ppl": ppl(model),
        "rtn_w4_asym_g64_ppl": ppl(rtn),
    }
    del rtn
    python, info = (None, {"skipped": "--quick" if quick else "--no-reference"})
    if reference and not quick:
        python, info = llmcompressor_python()
    res["llmcompressor"] = info
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "calibration_ids.pt"
        torch.save(torch.cat(batches), calibration)  # (n_windows, CAL_LENGTH)
        for method in methods:
            ours, raw = compress_ours(model, batches, method)
            ours_w = {k: v.detach() for k, v in decoder_linear_weights(ours).items()}
            row: dict = {"ours": side_summary(raw, blocks, raw["algorithm_s"], ppl(ours))}
            if method.startswith("gptq"):
                row["ours"]["max_distinct_values_per_group"] = max_distinct_per_group(ours_w)
            del ours
            if python is not None:
                out = Path(tmp) / f"{method}.safetensors"
                child = run_llmcompressor(python, method, layers, calibration, out, threads)
                theirs_w = load_file(out)
                ref = copy.deepcopy(model)
                missing = set(decoder_linear_weights(ref)) ^ set(theirs_w)
                if missing:
                    raise RuntimeError(f"llmcompressor weights do not match the model's linears: {sorted(missing)[:4]}")
                with torch.no_grad():
                    for name, w in decoder_linear_weights(ref).items():
                        w.copy_(theirs_w[name])
                row["llmcompressor"] = side_summary(
                    {"compress_s": child["oneshot_s"]}, blocks, child["module_times_s"], ppl(ref)
                )
                row["llmcompressor"].update(
                    child_wall_s=child["child_wall_s"],
                    lm_head_zero_fraction=child["lm_head_zero_fraction"],
                    versions=child["versions"],
                    metric_lines=len(child["module_times_s"]),
                )
                if method.startswith("gptq"):
                    row["llmcompressor"]["max_distinct_values_per_group"] = max_distinct_per_group(theirs_w)
                row["agreement"] = agreement(ours_w, theirs_w)
                row["compress_s_llmcompressor_over_ours"] = child["oneshot_s"] / raw["compress_s"]
                del ref
            res[method] = row
    return res


# ---------------------------------------------------------------------------------------------------------------


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def summary(results: dict) -> str:
    lines = [f"compression benchmark ({results['torch_threads']} threads, {results['runtime_s']:.0f} s)"]
    for n, cases in results.get("int8_latency", {}).get("cases_by_torch_threads", {}).items():
        lines.append(f"  int8 vs fp32 linear, {n} torch thread(s):")
        lines.extend(
            f"    {c['layer']} {c['in_out'][0]}->{c['in_out'][1]} x {c['rows']:>3} rows: fp32 "
            f"{c['fp32_s'] * 1e6:.0f} us, int8 {c['int8_s'] * 1e6:.0f} us, fp32/int8 "
            f"{c['fp32_over_int8']:.2f}, rel error {c['rel_error']:.4f}"
            for c in cases
        )
    for s in results.get("ggml_throughput", {}).get("sets", []):
        for q in s["qtypes"]:
            qs, ds = q["quantize_values_per_s"], q["dequantize_values_per_s"]
            lines.append(
                f"  {q['qtype']} {s['set']} ({s['values'] / 1e6:.1f} M): quantise ours {qs['ours'] / 1e6:.0f} "
                f"vs gguf {qs['gguf'] / 1e6:.0f} M/s (x{q['quantize_ours_over_gguf']:.2f}), dequantise "
                f"ours {ds['ours'] / 1e6:.0f} vs gguf {ds['gguf'] / 1e6:.0f} M/s "
                f"(x{q['dequantize_ours_over_gguf']:.2f}); bytes identical {q['bytes_identical']}"
            )
    cal = results.get("calibrated")
    if cal:
        lines.append(
            f"  {cal['model']}: fp32 ppl {cal['fp32_ppl']:.3f}, RTN w4 g64 {cal['rtn_w4_asym_g64_ppl']:.3f}"
            + (
                f"; llmcompressor skipped: {cal['llmcompressor']['skipped'][:200]}"
                if "skipped" in cal["llmcompressor"]
                else ""
            )
        )
        for method in (m for m in METHODS if m in cal):
            row = cal[method]
            for side in ("ours", "llmcompressor"):
                if side in row:
                    r = row[side]
                    lines.append(
                        f"    {method:<17} {side:<13} {r['compress_s']:6.1f} s "
                        f"({r['per_block_s']:.2f} s/block, {r['algorithm_s_per_linear'] * 1e3:.0f} ms/linear "
                        f"in the algorithm), ppl {r['ppl']:.3f}"
                    )
            if "agreement" in row:
                agree = row["agreement"]
                diffs = agree["relative_diff_per_block"]
                lines.append(
                    f"    {'':<17} llmcompressor/ours time {row['compress_s_llmcompressor_over_ours']:.2f}; block 0: "
                    f"weights equal {agree['block0_weights_equal_fraction']:.4f}, zeros agree "
                    f"{agree['block0_zero_pattern_agreement']:.4f}; relative weight diff block 0 {diffs[0]:.1e}, "
                    f"last block {diffs[-1]:.1e}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/compression.json")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"fewer repeats; section 3 on {QUICK_LAYERS} blocks, ours only, {QUICK_PPL_TOKENS} ppl tokens",
    )
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads")
    p.add_argument(
        "--calibration-threads",
        type=int,
        default=1,
        help="torch threads for section 3, both sides (default 1: see the module docstring on cholesky_inverse)",
    )
    p.add_argument("--layers", type=int, help="decoder blocks for section 3 (default: all 30; --quick: 2)")
    p.add_argument("--no-reference", action="store_true", help="section 3 without llmcompressor")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="section 3 methods")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    t_start = time.perf_counter()
    results: dict = {
        "load_average_1_5_15_at_start": list(os.getloadavg()),
        "machine": {
            "cpu_threads_available": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "torch_threads": torch.get_num_threads(),
        "calibration_threads": args.calibration_threads,
        "quick": args.quick,
    }
    model, tok = load_pretrained(layers=TRUNCATED_LAYERS)
    _, _, test_docs = heldout_text_split(wikipedia_documents())
    ids = document_token_ids(tok, test_docs, max_tokens=max(ROWS))
    layers = args.layers or (QUICK_LAYERS if args.quick else None)
    sections = {
        "int8_latency": lambda: int8_latency(model, ids, 6 if args.quick else 20, LATENCY_REPEATS, args.threads),
        "ggml_throughput": lambda: ggml_throughput(model, repeats),
        "calibrated": lambda: calibrated_compression(
            layers, args.quick, not args.no_reference, args.calibration_threads, args.methods
        ),
    }
    results["section_s"] = {}
    for name in args.sections:
        run = sections[name]
        t0 = time.perf_counter()
        with torch_threads(args.calibration_threads if name == "calibrated" else args.threads):
            results[name] = run()
        results["section_s"][name] = time.perf_counter() - t0
    return write_results(results, args.out, summary, t_start)


if __name__ == "__main__":
    main()
