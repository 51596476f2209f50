"""Training-step throughput: the book's DecoderLM + from-scratch AdamW vs transformers' LlamaForCausalLM + torch AdamW.

Usage: python benchmarks/training.py [--out benchmarks/results/training.json] [--quick] [--compile]

Same config, same weights (converted with ``llmbook.model.to_hf``), same batches. One "step" =
forward + loss + backward + global-norm clip + AdamW step + zero_grad. The machine may be shared
and noisy, so the loops are interleaved in rounds (ours, theirs, ours, ...) and the median tokens/s
over rounds is reported. MFU uses ``6N + 12 L T C`` FLOPs per token.

- CPU (no GPU visible): fp32, the book's AdamW vs ``torch.optim.AdamW``, MFU against a measured fp32
  matmul peak (``measure_matmul_flops``). Goal: ours / transformers >= 1.0 eager.
- GPU: the pretraining chapter's ``gpu`` profile shape (d_model 768, 12 layers, T 1024) in bf16
  autocast with SDPA (flash) attention, fused ``torch.optim.AdamW`` for both (what the chapter's
  GPU run uses), compiled; MFU against the datasheet bf16 peak. Goal: >= 40 % on an H100.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from llmbook.hardware import peak_flops
from llmbook.model import DecoderLM, ModelConfig, to_hf
from llmbook.training import AdamW, param_groups, train_step
from llmbook.training.throughput import measure_matmul_flops, mfu, model_flops_per_token


def make_batches(n: int, b: int, t: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (b, t), generator=g)
        out.append({"input_ids": x, "labels": x.clone()})
    return out


def time_steps(step, model, opt, batches) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        step(model, opt, batch)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/training.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd versions of both models")
    args = ap.parse_args()

    gpu = torch.cuda.is_available()
    if gpu:
        from llmbook.book import profiles

        shape = profiles.resolve("pretraining", "gpu")
        cfg = ModelConfig(vocab_size=32768, d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads,
                          max_seq_len=shape.seq_len)
        b, t, rounds, steps = (4, shape.seq_len, 3, 5) if args.quick else (16, shape.seq_len, 5, 10)
        args.compile = True
    elif args.quick:
        cfg = ModelConfig(vocab_size=1024, d_model=128, n_layers=2, n_heads=4, max_seq_len=128)
        b, t, rounds, steps = 4, 128, 5, 3
    else:
        cfg = ModelConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256)
        b, t, rounds, steps = 8, 256, 7, 5
    device, precision = ("cuda", "bf16") if gpu else ("cpu", "fp32")
    torch.manual_seed(0)
    ours = DecoderLM(cfg).to(device).train()
    hf = to_hf(ours).to(device).train()
    lr, wd = 3e-4, 0.1

    def adamw(model, from_scratch: bool):  # on a GPU both use torch's fused kernel, as the chapter's GPU run does
        if from_scratch and not gpu:
            return AdamW(param_groups(model, wd), lr=lr, betas=(0.9, 0.95))
        return torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=(0.9, 0.95), fused=gpu)

    def ours_step(model, opt, batch):
        train_step(model, opt, [batch], grad_clip=1.0, precision=precision)

    def hf_step(model, opt, batch):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=gpu):
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    systems = {
        "llmbook": (ours_step, ours, adamw(ours, True)),
        "transformers": (hf_step, hf, adamw(hf, False)),
    }
    if args.compile:
        systems["llmbook_compiled"] = (ours_step, torch.compile(ours), systems["llmbook"][2])
        systems["transformers_compiled"] = (hf_step, torch.compile(hf), systems["transformers"][2])
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in make_batches(steps, b, t, cfg.vocab_size)]
    compile_s = {}
    for name, (step, model, opt) in systems.items():  # warm-up (and compile)
        compile_s[name] = time_steps(step, model, opt, batches[:2])
    times: dict[str, list[float]] = {k: [] for k in systems}
    for _ in range(rounds):
        for name, (step, model, opt) in systems.items():
            times[name].append(b * t * steps / time_steps(step, model, opt, batches))
    if gpu:
        device_name = torch.cuda.get_device_name()
        peak, peak_source = peak_flops(device_name, "bf16"), f"datasheet bf16, {device_name}"
        if peak is None:  # throughput is still worth reporting; MFU needs a peak
            peak_source = f"{device_name} is not in llmbook.hardware.PEAK_FLOPS: no MFU"
    else:
        peak, peak_source = measure_matmul_flops(1024 if args.quick else 2048), "measured fp32 matmul"
    fpt = model_flops_per_token(ours, t)
    result = {
        "config": {"model": {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, type(None)))},
                   "batch": b, "seq_len": t, "steps_per_round": steps, "rounds": rounds, "precision": precision},
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "flops_per_token": fpt,
        "flop_convention": "6N + 12 L T C (PaLM arXiv:2204.02311 app. B); N excludes the input embedding",
        "peak_flops": peak,
        "peak_source": peak_source,
        "tokens_per_s_median": {k: statistics.median(v) for k, v in times.items()},
        "tokens_per_s_all": times,
        "warmup_s": compile_s,
        "mfu": {k: mfu(statistics.median(v), fpt, peak) for k, v in times.items()} if peak is not None else None,
    }
    med = result["tokens_per_s_median"]
    result["speedup_llmbook_over_transformers"] = med["llmbook"] / med["transformers"]
    if gpu and result["mfu"] is not None:
        best = max(v for k, v in result["mfu"].items() if k.startswith("llmbook"))
        result["goal_mfu_40pct_on_h100"] = {"mfu": best, "met": best >= 0.40 if "H100" in peak_source else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"tokens_per_s_median": med, "speedup": result["speedup_llmbook_over_transformers"],
                      "mfu": result["mfu"]}, indent=2))


if __name__ == "__main__":
    main()
