"""LoRA / QLoRA benchmarks: llmbook.lora vs peft training speed, NF4 (de)quantisation vs bitsandbytes, peak memory.

Usage: python benchmarks/lora.py [--out benchmarks/results/lora.json] [--quick] [--full] [--threads N]
       python benchmarks/lora.py --device cuda   # NF4 throughput on a GPU (exits with a message without one)

Everything is measured in one run on one machine; ratios are ours / reference, > 1 means ours is faster
(or, for memory, the first named mode needs more).

1. Training speed. SmolLM2-135M-Instruct truncated to its first 4 decoder blocks (all 30 with ``--full``),
   LoRA r=8, alpha=16 on q,k,v,o,gate,up,down; ``torch.optim.AdamW`` (lr 1e-3) over the trainable tensors;
   batch 8 x 128 random token ids with labels = ids; one step = ``model(ids, labels=ids).loss``, backward,
   optimizer step, zero_grad. Ours: ``llmbook.lora.add_adapter`` on ``load_pretrained``; peft:
   ``peft.get_peft_model`` on a deep copy of the same model, both created right after ``torch.manual_seed(0)``
   so the adapters start equal (checked, and the first-step losses are recorded). QLoRA: ours is
   ``llmbook.lora.qlora.quantize_base`` + ``add_adapter``; peft's is ``get_peft_model`` on
   ``load_pretrained_nf4`` (transformers + bitsandbytes NF4, double quant, fp32 compute), in train mode and
   without ``prepare_model_for_kbit_training`` (which would add gradient checkpointing to one side only).
   Steps of the two models are interleaved round-robin (order alternating each round) after warm-up steps;
   the fastest step of each gives tokens/s (the minimum is the least-disturbed run on a shared machine), and
   the median of the per-round time ratios is reported as a paired estimate.
2. NF4 throughput. ``llmbook.compression.nf4.quantize_4bit`` / ``dequantize_4bit`` vs
   ``bitsandbytes.functional.quantize_4bit(..., quant_type="nf4", compress_statistics=True)`` /
   ``dequantize_4bit``, blocks of 64, on (a) all projection weights of the same truncated model and (b) one
   random 2048 x 8192 matrix; interleaved repeats, min time, parameters/s. Outputs are compared bit for bit.
   On CPU bitsandbytes 0.50 has no native 4-bit quantiser (its ``quantize_4bit`` is the torch "default"
   backend; the 8-bit double quantisation of the block scales and ``dequantize_4bit`` go to
   ``libbitsandbytes_cpu``): which ops have a native CPU kernel is recorded in the JSON. The production
   comparison is on a GPU: ``--device cuda`` runs this section (only) there with CUDA synchronisation.
3. Peak memory of one training step, full fine-tuning vs LoRA vs QLoRA (ours, same model and batch), each in
   a fresh child process: load the model, copy its tensors out of the memory-mapped checkpoint into ordinary
   memory (``load_pretrained``'s weights are file pages of the cached safetensors file, which stay mapped, and
   resident once read, while any tensor of the file is alive: without the copy, the fp32 weights QLoRA drops
   would still count), set up the mode, one warm-up step (allocates the gradients and the AdamW state),
   ``malloc_trim(0)``, reset the resident-set high-water mark (``echo 5 > /proc/self/clear_refs``), one step,
   read ``VmHWM``. ``step_peak_mib`` is that absolute peak RSS: the
   Python interpreter and the loaded libraries (torch, transformers: several hundred MiB on their own, see
   ``rss_after_imports_mib``), the model (including the tied 49152 x 576 fp32 embedding, which LoRA and
   QLoRA leave unquantised and which dominates a 4-block model), trainable-parameter gradients, the AdamW
   state, activations and the logits, plus whatever freed memory the allocators (glibc malloc, torch's CPU
   allocator) still hold. ``step_extra_mib`` = peak - RSS just before the step: what the step itself adds.
   ``resident_after_load_mib`` is the RSS right after loading (fp32, memory-mapped), ``resident_ready_mib``
   after the copy and the adapters / quantisation (and ``malloc_trim``). The ratios full/LoRA and LoRA/QLoRA
   use ``step_peak_mib``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from _results import write_results
from llmbook.chain.pretrained import load_pretrained, load_pretrained_nf4
from llmbook.compression.nf4 import Nf4Linear, dequantize_4bit, quantize_4bit
from llmbook.lora import LoraConfig, add_adapter, count_parameters
from llmbook.lora.qlora import quantize_base

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA, LR = 8, 16, 1e-3
BATCH, SEQ = 8, 128
TRUNCATED_LAYERS = 4
LARGE_SHAPE = (2048, 8192)


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers


def _read_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _mib(n_bytes: int) -> float:
    return n_bytes / 2**20


def _malloc_trim() -> None:
    """Give glibc's freed heap pages back to the OS, so RSS counts live memory rather than malloc's cache."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to trim
        pass


def make_batch(vocab: int, device: str = "cpu") -> torch.Tensor:
    return torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0)).to(device)


def make_step(model: nn.Module, ids: torch.Tensor):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)

    def step() -> float:
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def _ours_key(name: str) -> str:
    """``...q_proj.adapters.default.lora_A`` -> ``...q_proj.lora_A``."""
    return re.sub(r"\.adapters\.[^.]+\.", ".", name)


def _peft_key(name: str) -> str:
    """``base_model.model.<path>.lora_A.default.weight`` -> ``<path>.lora_A``."""
    return re.sub(r"\.(\w+)\.default(\.weight)?$", r".\1", name.removeprefix("base_model.model."))


def adapters_equal(ours: nn.Module, ref: nn.Module) -> bool:
    a = {_ours_key(n): p for n, p in ours.named_parameters() if p.requires_grad}
    b = {_peft_key(n): p for n, p in ref.named_parameters() if p.requires_grad}
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def interleaved_min(fns: dict, rounds: int, warmup: int, sync=lambda: None) -> tuple[dict, dict]:
    """Warm each fn up, then run them round-robin (order alternating) ``rounds`` times; (min s, all times)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds):
        order = list(fns.items()) if i % 2 == 0 else list(reversed(fns.items()))
        for name, fn in order:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}, times


def _paired_median(num: list[float], den: list[float]) -> float:
    ratios = sorted(n / d for n, d in zip(num, den))
    return ratios[len(ratios) // 2]


# ---------------------------------------------------------------------------------------------------------------
# 1. Training speed, ours vs peft


def _compare_steps(ours: nn.Module, ref: nn.Module, ids: torch.Tensor, rounds: int, warmup: int) -> dict:
    steps = {"ours": make_step(ours, ids), "peft": make_step(ref, ids)}
    first_loss = {name: step() for name, step in steps.items()}  # also the first warm-up step
    best, times = interleaved_min(steps, rounds, max(warmup - 1, 0))
    tokens = BATCH * SEQ
    tps = {name: tokens / t for name, t in best.items()}
    ratio = tps["ours"] / tps["peft"]
    return {
        "trainable_params": {"ours": count_parameters(ours).trainable,
                             "peft": sum(p.numel() for p in ref.parameters() if p.requires_grad)},
        "first_step_loss": first_loss,
        "tokens_per_s": tps,
        "step_s_all": times,
        "ours_over_peft": ratio,
        "ours_over_peft_paired_median": _paired_median(times["peft"], times["ours"]),
        "goal": "ours_over_peft >= 1.0",
        "goal_met": ratio >= 1.0,
    }


def lora_training(layers: int | None, rounds: int, warmup: int) -> dict:
    import peft

    base, _ = load_pretrained(layers=layers)
    # two copies in ordinary memory (load_pretrained's weights are pages of the memory-mapped checkpoint)
    ours, ref = copy.deepcopy(base).train(), copy.deepcopy(base).train()
    del base
    torch.manual_seed(0)
    add_adapter(ours, LoraConfig(r=RANK, alpha=ALPHA, targets=TARGETS))
    torch.manual_seed(0)
    ref = peft.get_peft_model(ref, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                   target_modules=list(TARGETS))).train()
    res = {"adapters_equal_at_start": adapters_equal(ours, ref)}
    res.update(_compare_steps(ours, ref, make_batch(ours.config.vocab_size), rounds, warmup))
    return res


def _peft_nf4_base(layers: int | None) -> nn.Module:
    """``load_pretrained_nf4(layers=...)``, except that a truncated model is built with only ``layers`` blocks
    (``num_hidden_layers``) instead of quantising all 30 and dropping 26: the same model and codes (checked
    against ours, ``base_codes_bit_equal``) in ~5 s instead of ~26 s on this machine."""
    if layers is None:
        return load_pretrained_nf4()[0]
    import transformers
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the skipped blocks 4..29 are reported as unexpected keys
    try:
        model, _ = load_pretrained(quantization_config=config, device_map="cpu", num_hidden_layers=layers)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model


def qlora_training(layers: int | None, rounds: int, warmup: int) -> dict:
    import bitsandbytes as bnb
    import peft

    ours, _ = load_pretrained(layers=layers)
    quantize_base(ours, TARGETS)
    torch.manual_seed(0)
    add_adapter(ours, LoraConfig(r=RANK, alpha=ALPHA, targets=TARGETS))
    ours.train()
    t0 = time.perf_counter()
    ref = _peft_nf4_base(layers)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    ref = peft.get_peft_model(ref, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                                   target_modules=list(TARGETS))).train()
    peft_base = type(ref.get_submodule("base_model.model.model.layers.0.self_attn.q_proj").base_layer)
    ours_base = type(ours.get_submodule("model.layers.0.self_attn.q_proj").base_layer)
    ours_codes = {n.removesuffix(".base_layer"): m.packed for n, m in ours.named_modules() if isinstance(m, Nf4Linear)}
    bnb_codes = {n.removeprefix("base_model.model.").removesuffix(".base_layer"): m.weight.data.reshape(-1)
                 for n, m in ref.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    res = {"adapters_equal_at_start": adapters_equal(ours, ref), "peft_nf4_load_s": load_s,
           "base_codes_bit_equal": sorted(ours_codes) == sorted(bnb_codes)
           and all(torch.equal(ours_codes[k], bnb_codes[k]) for k in ours_codes),
           "base_layer_types": {"ours": f"{ours_base.__module__}.{ours_base.__name__}",
                                "peft": f"{peft_base.__module__}.{peft_base.__name__}"}}
    res.update(_compare_steps(ours, ref, make_batch(ours.config.vocab_size), rounds, warmup))
    return res


# ---------------------------------------------------------------------------------------------------------------
# 2. NF4 quantise / dequantise throughput, ours vs bitsandbytes


def bnb_kernel_info() -> dict:
    import bitsandbytes.cextension as cext

    ops = ("quantize_4bit", "dequantize_4bit", "quantize_blockwise", "dequantize_blockwise")
    return {
        "native_library": type(cext.lib).__name__,
        "ops_with_native_cpu_kernel": {
            op: bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"bitsandbytes::{op}", "CPU")) for op in ops
        },
        "note": "ops without a CPU kernel run bitsandbytes' torch 'default' backend (Python + torch ops); on this "
                "CPU its 4-bit quantiser is that fallback, its NF4 dequantiser and the 8-bit quantiser of the "
                "double-quantised scales are C++ in libbitsandbytes_cpu. The production comparison is on a GPU: "
                "run with --device cuda on a CUDA host (not available here).",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def nf4_set(name: str, weights: list[torch.Tensor], repeats: int, device: str) -> dict:
    import bitsandbytes.functional as bnbf

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    weights = [w.detach().to(device).contiguous() for w in weights]
    n = sum(w.numel() for w in weights)
    state: dict = {}

    def ours_q():
        state["ours"] = [quantize_4bit(w, code="nf4", blocksize=64, double_quant=True) for w in weights]

    def bnb_q():
        state["bnb"] = [bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
                        for w in weights]

    # warm-up (code tables, lazy kernels) on a small matrix; a full-size warm-up would double the run time
    tiny = torch.randn(64, 256, device=device)
    bnbf.dequantize_4bit(*bnbf.quantize_4bit(tiny, blocksize=64, quant_type="nf4", compress_statistics=True))
    dequantize_4bit(quantize_4bit(tiny, code="nf4", blocksize=64, double_quant=True))
    q_best, _ = interleaved_min({"ours": ours_q, "bnb": bnb_q}, repeats, 0, sync)
    ours_qs, bnb_qs = state["ours"], state["bnb"]

    def ours_dq():
        state["ours_w"] = [dequantize_4bit(q) for q in ours_qs]

    def bnb_dq():
        state["bnb_w"] = [bnbf.dequantize_4bit(p, quant_state=s) for p, s in bnb_qs]

    dq_best, _ = interleaved_min({"ours": ours_dq, "bnb": bnb_dq}, repeats, 0, sync)
    codes_equal = all(torch.equal(q.packed, p.reshape(-1)) for q, (p, _) in zip(ours_qs, bnb_qs))
    deq_equal = all(torch.equal(a, b) for a, b in zip(state["ours_w"], state["bnb_w"]))
    qps = {k: n / t for k, t in q_best.items()}
    dqps = {k: n / t for k, t in dq_best.items()}
    return {
        "set": name,
        "tensors": len(weights),
        "parameters": n,
        "quantize_params_per_s": qps,
        "dequantize_params_per_s": dqps,
        "quantize_ours_over_bnb": qps["ours"] / qps["bnb"],
        "dequantize_ours_over_bnb": dqps["ours"] / dqps["bnb"],
        "packed_codes_bit_equal": codes_equal,
        "dequantized_bit_equal": deq_equal,
    }


def nf4_throughput(layers: int | None, repeats: int, device: str) -> dict:
    model, _ = load_pretrained(layers=layers)
    proj = [m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS]
    large = torch.randn(*LARGE_SHAPE, generator=torch.Generator().manual_seed(0))
    return {
        "device": device,
        "settings": "NF4, blocksize 64, double quantisation (bnb compress_statistics=True), fp32 weights",
        "repeats": repeats,
        "bitsandbytes": bnb_kernel_info(),
        "sets": [nf4_set(f"smollm2_{len(proj) // len(TARGETS)}_blocks_projections", proj, repeats, device),
                 nf4_set(f"random_{LARGE_SHAPE[0]}x{LARGE_SHAPE[1]}", [large], repeats, device)],
    }


# ---------------------------------------------------------------------------------------------------------------
# 3. Peak memory of one training step (child processes)


def child_memory(mode: str, layers: int | None, threads: int) -> dict:
    """Runs inside a fresh process: resident sizes and the peak RSS of one training step in ``mode``."""
    torch.set_num_threads(threads)
    # Every mode pays the same import cost: fault in what quantize_base touches (scipy's normal quantiles for
    # the NF4 table: ~60 MiB of file-backed library pages) before the first reading.
    dequantize_4bit(quantize_4bit(torch.randn(64, 256)))
    after_imports = _read_status("VmRSS")
    model, _ = load_pretrained(layers=layers)
    model.train()
    loaded = _read_status("VmRSS")
    with torch.no_grad():  # out of the memory-mapped checkpoint, so that a tensor dropped is memory freed
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif mode in ("lora", "qlora"):
        if mode == "qlora":
            quantize_base(model, TARGETS)
        torch.manual_seed(0)
        add_adapter(model, LoraConfig(r=RANK, alpha=ALPHA, targets=TARGETS))
    else:
        raise ValueError(mode)
    _malloc_trim()
    ready = _read_status("VmRSS")
    step = make_step(model, make_batch(model.config.vocab_size))
    step()  # warm-up: gradients and AdamW state now exist, lazy kernel set-up done
    _malloc_trim()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _read_status("VmRSS")
    anon_before, file_before = _read_status("RssAnon"), _read_status("RssFile")
    step()
    peak = _read_status("VmHWM")
    counts = count_parameters(model)
    return {"rss_after_imports_mib": _mib(after_imports), "resident_after_load_mib": _mib(loaded),
            "resident_ready_mib": _mib(ready), "resident_before_step_mib": _mib(before),
            "resident_before_step_anon_mib": _mib(anon_before), "resident_before_step_file_mib": _mib(file_before),
            "step_peak_mib": _mib(peak), "step_extra_mib": _mib(peak - before),
            "trainable_params": counts.trainable, "total_params": counts.total, "vocab": model.config.vocab_size}


def measure_memory(layers: int | None, threads: int) -> dict:
    res: dict = {}
    for mode in ("full", "lora", "qlora"):
        cmd = [sys.executable, __file__, "--_child", mode, str(layers or 0), str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    peak = {m: res[m]["step_peak_mib"] for m in res}
    extra = {m: res[m]["step_extra_mib"] for m in res}
    return {
        "method": "fresh child process per mode; load, set up, warm-up step, malloc_trim, reset VmHWM via "
                  "/proc/self/clear_refs, one step, read VmHWM (absolute peak RSS, see the module docstring)",
        "logits_fp32_mib": BATCH * SEQ * res["full"]["vocab"] * 4 / 2**20,  # one copy; the loss makes several
        "modes": res,
        "full_over_lora_step_peak": peak["full"] / peak["lora"],
        "lora_over_qlora_step_peak": peak["lora"] / peak["qlora"],
        "full_over_lora_step_extra": extra["full"] / extra["lora"],
        "lora_over_qlora_step_extra": extra["lora"] / extra["qlora"],
    }


# ---------------------------------------------------------------------------------------------------------------


def _versions() -> dict:
    import bitsandbytes
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "python": platform.python_version()}


def summary(results: dict) -> str:
    lines = [f"lora benchmark ({results['model']}, {results['torch_threads']} threads, "
             f"{results['runtime_s']:.0f} s)"]
    for key in ("lora_training", "qlora_training"):
        r = results.get(key)
        if r:
            t = r["tokens_per_s"]
            lines.append(f"  {key}: ours {t['ours']:.0f} tok/s, peft {t['peft']:.0f} tok/s, ours/peft "
                         f"{r['ours_over_peft']:.2f} (paired median {r['ours_over_peft_paired_median']:.2f}; "
                         f"goal met: {r['goal_met']}; adapters equal at start: {r['adapters_equal_at_start']})")
    for s in results.get("nf4_throughput", {}).get("sets", []):
        q, d = s["quantize_params_per_s"], s["dequantize_params_per_s"]
        lines.append(f"  nf4 {s['set']} ({s['parameters'] / 1e6:.1f} M params): quantise ours {q['ours'] / 1e6:.0f} "
                     f"vs bnb {q['bnb'] / 1e6:.0f} M/s (x{s['quantize_ours_over_bnb']:.2f}), dequantise ours "
                     f"{d['ours'] / 1e6:.0f} vs bnb {d['bnb'] / 1e6:.0f} M/s (x{s['dequantize_ours_over_bnb']:.2f}); "
                     f"bit-equal codes {s['packed_codes_bit_equal']}, dequantised {s['dequantized_bit_equal']}")
    mem = results.get("memory")
    if mem:
        m = mem["modes"]
        lines.append("  step peak RSS MiB: " + ", ".join(
            f"{k} {v['step_peak_mib']:.0f} (+{v['step_extra_mib']:.0f} in step)" for k, v in m.items())
            + f"; full/LoRA {mem['full_over_lora_step_peak']:.2f}, LoRA/QLoRA {mem['lora_over_qlora_step_peak']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="default benchmarks/results/lora.json (lora_cuda.json with --device cuda)")
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (< 2 min on 2 cores)")
    p.add_argument("--full", action="store_true", help="all 30 decoder blocks instead of the first 4")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: run the NF4 throughput comparison on the GPU (needs a CUDA host)")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        mode, layers, threads = args._child
        print(json.dumps(child_memory(mode, int(layers) or None, int(threads))))
        return {}
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False). The GPU "
                 "comparison of NF4 quantisation with bitsandbytes needs a CUDA host; run without --device on CPU.")

    torch.set_num_threads(args.threads)
    layers = None if args.full else TRUNCATED_LAYERS
    rounds, warmup, repeats = (2, 1, 1) if args.quick else (6, 2, 3)
    t_start = time.perf_counter()
    results: dict = {
        "load_average_1_5_15_at_start": list(os.getloadavg()),
        "machine": {"cpu_threads_available": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    **_versions()},
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "model": f"SmolLM2-135M-Instruct, {'all 30' if layers is None else f'first {layers}'} decoder blocks, fp32",
        "setup": {"lora": f"r={RANK}, alpha={ALPHA}, dropout 0, targets {list(TARGETS)}",
                  "optimizer": f"torch.optim.AdamW lr {LR} over trainable tensors", "batch": BATCH, "seq": SEQ,
                  "timed_rounds": rounds, "warmup_steps": warmup,
                  "timing": "steps interleaved round-robin (order alternating), fastest step each"},
    }
    if args.device == "cuda":
        results["nf4_throughput"] = nf4_throughput(layers, repeats, "cuda")
        results["note"] = "--device cuda runs only the NF4 throughput section"
    else:
        sections = {"lora_training": lambda: lora_training(layers, rounds, warmup),
                    "qlora_training": lambda: qlora_training(layers, rounds, warmup),
                    "nf4_throughput": lambda: nf4_throughput(layers, repeats, "cpu"),
                    "memory": lambda: measure_memory(layers, args.threads)}
        results["section_s"] = {}
        for name, run in sections.items():
            t0 = time.perf_counter()
            results[name] = run()
            results["section_s"][name] = time.perf_counter() - t0
    out = args.out or f"benchmarks/results/lora{'_cuda' if args.device == 'cuda' else ''}.json"
    return write_results(results, out, summary, t_start)


if __name__ == "__main__":
    main()
