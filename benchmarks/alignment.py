"""Alignment benchmarks: llmbook.alignment's DPO and GRPO loops vs trl 1.16's DPOTrainer and GRPOTrainer.

Usage: python benchmarks/alignment.py [--out benchmarks/results/alignment.json] [--quick] [--layers N] [--threads N]

Everything is measured in one run on one machine (CPU, fp32), on SmolLM2-135M-Instruct (all 30 decoder blocks;
``--layers N`` keeps the first N: a quick smoke run). Ratios are ours / trl's speed: > 1 means ours is faster.
Timings are reported, never asserted on: a shared machine makes them noisy (the load average is recorded).

1. DPO training throughput. ``--pairs`` preference pairs built from the addition task (prompt: the chat-rendered
   question; chosen: the sum; rejected: a longer, wrong sentence; both end with the end-of-turn token), trained
   full-batch (batch = all pairs, so both loops see the same batch at every step) for ``--dpo-steps`` AdamW
   steps, lr 1e-6, beta 0.1, sigmoid loss, no gradient clipping, reference log-probabilities precomputed (not
   timed). Ours: ``llmbook.alignment.preference.train_preference(method="dpo")``; trl:
   ``llmbook.alignment.trl_runs.trl_dpo_train`` (``trl.DPOTrainer`` fed the same token ids). Both start from a
   copy of the same model. ``tokens_per_s`` is each loop's own in-step measure: input tokens (padding included,
   the same padded batch on both sides) over forward + backward + optimiser step, collation excluded, first step
   excluded. ``whole_step_tokens_per_s`` divides by the time between consecutive step ends instead (collation,
   trl's per-step logging and metrics included). Runs alternate (ours, trl, trl, ours, ...) ``--repeats``
   times; the best run of each side is reported. The per-step losses of the two are compared (max |diff|): the
   two loops did the same arithmetic.
2. GRPO seconds per step, no vLLM. ``--prompts`` prompts per step x ``--group`` completions each, sampled at
   temperature 1 (no top-k / top-p), at most ``--new-tokens`` new tokens, reward = the exact-answer check
   (``llmbook.evaluation.rewards.exact_answer_reward``), beta 0 (no reference model), DAPO loss, group-scaled
   advantages, one gradient update per generation batch, lr 1e-6, ``--grpo-steps`` steps. Ours:
   ``llmbook.alignment.grpo.train_grpo`` (KV-cached sampling loop, then one forward/backward); trl:
   ``trl.GRPOTrainer`` (``model.generate``, then its loss). A step is rollouts + rewards + update; the median
   over steps after the first is reported for both. Completion lengths are sampled, so they differ between the
   two runs; the mean generated tokens per completion of each is recorded next to the times, and the ratio is
   also given per generated token. The prompts trl renders with the chat template are checked equal to ours.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from typing import Any

import torch

from _results import write_results
from llmbook.alignment.grpo import checker, train_grpo
from llmbook.alignment.preference import (
    EncodedPair,
    PreferenceRun,
    encode_pair,
    frozen_copy,
    pair_batch,
    reference_logps,
    train_preference,
)
from llmbook.alignment.rollouts import render_prompts
from llmbook.alignment.trl_runs import quiet_trl, step_timer, trl_dpo_train
from llmbook.chain.pretrained import load_pretrained
from llmbook.evaluation.rewards import exact_answer_reward
from llmbook.evaluation.tasks import TaskExample, addition_task

DPO_LR, DPO_BETA, GRPO_LR, SEED = 1e-6, 0.1, 1e-6, 0


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]  # train_preference's and train_grpo's rule


def _intervals(ends: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends, ends[1:])]


# ---------------------------------------------------------------------------------------------------------------
# 1. DPO training throughput


def make_pairs(tokenizer: Any, n: int) -> list[EncodedPair]:
    examples = addition_task(n, 1, 1, digits=2, seed=SEED).train
    prompts = render_prompts(tokenizer, [e.prompt for e in examples])
    eos = tokenizer.eos_token_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]

    return [encode_pair(p, ids(e.answer), ids(f"I think the sum is {int(e.answer) + 1}."), max_len=512)
            for p, e in zip(prompts, examples)]


def _ours_dpo(base: torch.nn.Module, pairs: list[EncodedPair], ref: torch.Tensor, pad_id: int, steps: int
              ) -> tuple[PreferenceRun, list[float]]:
    ends: list[float] = []
    run = train_preference(copy.deepcopy(base), pairs, method="dpo", ref=ref, pad_id=pad_id, steps=steps,
                           batch_size=len(pairs), lr=DPO_LR, beta=DPO_BETA, seed=SEED,
                           on_step=lambda step, run: ends.append(time.perf_counter()))
    return run, ends


def dpo_training(base: torch.nn.Module, tokenizer: Any, n_pairs: int, steps: int, repeats: int) -> dict:
    pairs = make_pairs(tokenizer, n_pairs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens_per_step = pair_batch(pairs, pad_id)["input_ids"].numel()
    t0 = time.perf_counter()
    ref = reference_logps(frozen_copy(base), pairs, pad_id=pad_id, batch_size=len(pairs))
    ref_s = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    losses: dict[str, list[float]] = {}
    for r in range(repeats):
        for side in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
            if side == "ours":
                run, ends = _ours_dpo(base, pairs, ref, pad_id, steps)
                entry = {"tokens_per_s": run.tokens_per_second, "seconds_per_step": run.seconds_per_step,
                         "step_intervals_s": _intervals(ends)}
            else:
                with tempfile.TemporaryDirectory() as out:
                    run = trl_dpo_train(base, tokenizer, pairs, steps=steps, batch_size=len(pairs), lr=DPO_LR,
                                        beta=DPO_BETA, seed=SEED, output_dir=out)
                fed = {tuple(b["input_ids"].shape) for b in run.batches}
                entry = {"tokens_per_s": run.tokens_per_second, "seconds_per_step": run.seconds_per_step,
                         "step_intervals_s": _intervals(run.step_ends), "setup_s": run.setup_seconds,
                         "batch_shapes": sorted(fed)}
            entry["whole_step_tokens_per_s"] = tokens_per_step / _median(entry["step_intervals_s"])
            entry["losses"] = run.losses
            runs[side].append(entry)
            losses[side] = run.losses
    best = {side: max(rs, key=lambda e: e["tokens_per_s"]) for side, rs in runs.items()}
    whole = {side: max(e["whole_step_tokens_per_s"] for e in rs) for side, rs in runs.items()}
    ratio = best["ours"]["tokens_per_s"] / best["trl"]["tokens_per_s"]
    return {
        "pairs": n_pairs, "batch": n_pairs, "steps": steps, "repeats": repeats,
        "tokens_per_step": tokens_per_step, "padded_batch_shape": list(pair_batch(pairs, pad_id)["input_ids"].shape),
        "reference_logps_s": ref_s,
        "tokens_per_s": {side: e["tokens_per_s"] for side, e in best.items()},
        "whole_step_tokens_per_s": whole,
        "ours_over_trl": ratio,
        "ours_over_trl_whole_step": whole["ours"] / whole["trl"],
        "loss_max_abs_diff": max(abs(a - b) for a, b in zip(losses["ours"], losses["trl"])),
        "runs": runs,
        "goal": "ours_over_trl >= 1.0",
        "goal_met": ratio >= 1.0,
    }


# ---------------------------------------------------------------------------------------------------------------
# 2. GRPO seconds per step


def _trl_grpo(base: torch.nn.Module, tokenizer: Any, examples: list[TaskExample], *, steps: int, prompts: int,
              group: int, new_tokens: int) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    def reward(prompts: list, completions: list, answer: list[str], **kwargs: Any) -> list[float]:
        return [exact_answer_reward(c[0]["content"], TaskExample(prompt="", answer=a))
                for c, a in zip(completions, answer)]

    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": e.prompt}] for e in examples],
                                 "answer": [e.answer for e in examples]})
    timer = step_timer()
    with tempfile.TemporaryDirectory() as out, quiet_trl():
        config = GRPOConfig(
            output_dir=out, max_steps=steps, per_device_train_batch_size=prompts * group, num_generations=group,
            gradient_accumulation_steps=1, num_iterations=1, max_completion_length=new_tokens, temperature=1.0,
            top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=0.2,
            learning_rate=GRPO_LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            optim="adamw_torch", max_grad_norm=0.0, gradient_checkpointing=False, bf16=False, fp16=False,
            use_vllm=False, use_cpu=True, logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
            disable_tqdm=True, seed=SEED, log_completions=False,
        )
        trainer = GRPOTrainer(model=copy.deepcopy(base), reward_funcs=[reward], args=config, train_dataset=dataset,
                              processing_class=copy.deepcopy(tokenizer), callbacks=[timer])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    return {"seconds_per_step": _median(timer.times[1:] if steps > 1 else timer.times),
            "step_s_all": timer.times,
            "mean_completion_tokens": sum(e["completions/mean_length"] for e in logs) / len(logs),
            "mean_reward": sum(e["reward"] for e in logs) / len(logs)}


def grpo_step_time(base: torch.nn.Module, tokenizer: Any, *, steps: int, prompts: int, group: int,
                   new_tokens: int) -> dict:
    examples = addition_task(16, 1, 1, digits=1, seed=SEED).train
    prompt_ids = render_prompts(tokenizer, [e.prompt for e in examples])
    trl_ids = [tokenizer.apply_chat_template([{"role": "user", "content": e.prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for e in examples]
    t0 = time.perf_counter()
    run = train_grpo(copy.deepcopy(base), tokenizer, prompt_ids, examples, checker(exact_answer_reward), steps=steps,
                     prompts_per_step=prompts, group_size=group, max_new_tokens=new_tokens, lr=GRPO_LR, seed=SEED,
                     beta=0.0, loss_type="dapo")
    ours_total = time.perf_counter() - t0
    ours = {"seconds_per_step": run.seconds_per_step, "wall_s": ours_total,
            "mean_completion_tokens": sum(run.lengths) / len(run.lengths),
            "mean_reward": sum(run.rewards) / len(run.rewards)}
    t0 = time.perf_counter()
    ref = _trl_grpo(base, tokenizer, examples, steps=steps, prompts=prompts, group=group, new_tokens=new_tokens)
    ref["wall_s"] = time.perf_counter() - t0  # trainer construction included
    ratio = ref["seconds_per_step"] / ours["seconds_per_step"]
    per_token = {side: r["seconds_per_step"] / max(r["mean_completion_tokens"], 1.0)
                 for side, r in (("ours", ours), ("trl", ref))}
    return {
        "prompts_per_step": prompts, "group_size": group, "max_new_tokens": new_tokens, "steps": steps,
        "prompt_ids_equal": trl_ids == prompt_ids,
        "ours": ours, "trl": ref,
        "ours_over_trl": ratio,  # speed ratio: trl's seconds / ours
        "ours_over_trl_per_generated_token": per_token["trl"] / per_token["ours"],
        "goal": "ours_over_trl >= 1.0",
        "goal_met": ratio >= 1.0,
    }


# ---------------------------------------------------------------------------------------------------------------


def _versions() -> dict:
    import datasets
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "datasets": datasets.__version__, "python": platform.python_version()}


def summary(results: dict) -> str:
    lines = [f"alignment benchmark ({results['model']}, {results['torch_threads']} threads, load "
             f"{results['load_average_1_5_15_at_start'][0]:.1f} at start, {results['runtime_s']:.0f} s)",
             f"  {'':34}{'ours':>12}{'trl':>12}{'ours/trl':>10}  goal met"]
    d = results["dpo"]
    lines.append(f"  {'DPO tokens/s (in-step)':34}{d['tokens_per_s']['ours']:12.0f}{d['tokens_per_s']['trl']:12.0f}"
                 f"{d['ours_over_trl']:10.2f}  {d['goal_met']}")
    w = d["whole_step_tokens_per_s"]
    lines.append(f"  {'DPO tokens/s (step to step)':34}{w['ours']:12.0f}{w['trl']:12.0f}"
                 f"{d['ours_over_trl_whole_step']:10.2f}")
    g = results["grpo"]
    lines.append(f"  {'GRPO s/step':34}{g['ours']['seconds_per_step']:12.2f}{g['trl']['seconds_per_step']:12.2f}"
                 f"{g['ours_over_trl']:10.2f}  {g['goal_met']}")
    lines.append(f"  {'GRPO mean completion tokens':34}{g['ours']['mean_completion_tokens']:12.1f}"
                 f"{g['trl']['mean_completion_tokens']:12.1f}{g['ours_over_trl_per_generated_token']:10.2f}"
                 "  (ratio per generated token)")
    lines.append(f"  DPO loss max |ours - trl| {d['loss_max_abs_diff']:.1e} over {d['steps']} steps, batch "
                 f"{d['padded_batch_shape']}; GRPO prompt ids equal: {g['prompt_ids_equal']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/alignment.json")
    p.add_argument("--quick", action="store_true", help="fewer steps, one repeat, shorter completions")
    p.add_argument("--layers", type=int, help="keep the first N decoder blocks (default: all 30)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads")
    p.add_argument("--pairs", type=int, default=8, help="DPO pairs = the (full) batch")
    p.add_argument("--dpo-steps", type=int, help="default 6 (3 with --quick)")
    p.add_argument("--repeats", type=int, help="DPO runs per side, alternating; default 2 (1 with --quick)")
    p.add_argument("--prompts", type=int, default=2, help="GRPO prompts per step")
    p.add_argument("--group", type=int, default=4, help="GRPO completions per prompt")
    p.add_argument("--new-tokens", type=int, help="GRPO max new tokens; default 32 (16 with --quick)")
    p.add_argument("--grpo-steps", type=int, help="default 5 (3 with --quick)")
    args = p.parse_args(argv)
    dpo_steps = args.dpo_steps or (3 if args.quick else 6)
    repeats = args.repeats or (1 if args.quick else 2)
    new_tokens = args.new_tokens or (16 if args.quick else 32)
    grpo_steps = args.grpo_steps or (3 if args.quick else 5)

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    base, tokenizer = load_pretrained(None, layers=args.layers)
    blocks = base.config.num_hidden_layers
    results: dict = {
        "load_average_1_5_15_at_start": list(os.getloadavg()),
        "machine": {"cpu_threads_available": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    **_versions()},
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "model": f"SmolLM2-135M-Instruct, {'all' if args.layers is None else 'first'} {blocks} decoder blocks, "
                 "fp32, CPU",
    }
    results["section_s"] = {}
    t0 = time.perf_counter()
    results["dpo"] = dpo_training(base, tokenizer, args.pairs, dpo_steps, repeats)
    results["section_s"]["dpo"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results["grpo"] = grpo_step_time(base, tokenizer, steps=grpo_steps, prompts=args.prompts, group=args.group,
                                     new_tokens=new_tokens)
    results["section_s"]["grpo"] = time.perf_counter() - t0
    return write_results(results, args.out, summary, t_start)


if __name__ == "__main__":
    main()
