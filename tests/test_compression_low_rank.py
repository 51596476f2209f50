"""llmbook.compression.low_rank: truncated SVD against numpy, whitened SVD against the least-squares optimum of
the output error, the layer, the rank budget, and the three methods on a real model's first block."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from llmbook.compression.calibration import iterate_blocks, linear_layers
from llmbook.compression.low_rank import (
    LowRankConfig,
    LowRankLinear,
    asvd_factorize,
    factorize_model,
    low_rank_linear,
    output_error,
    rank_for_budget,
    svd_factorize,
    whitened_svd_factorize,
)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def correlated_inputs(n: int, width: int, seed: int = 1) -> torch.Tensor:
    """(N, in) rows with correlated channels and a few high-variance ones, like LLM activations."""
    mix = torch.eye(width, dtype=torch.float64) + 0.3 * randn(width, width, seed=seed)
    x = randn(n, width, seed=seed + 1) @ mix  # (N, in)
    x[:, [2, 7, 11]] *= torch.tensor([25.0, 10.0, 40.0], dtype=torch.float64)  # outlier channels
    return x


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# --- plain SVD --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_svd_factorize_is_numpy_truncated_svd(shape):
    w = randn(*shape, seed=3)
    u, s, vt = np.linalg.svd(w.numpy(), full_matrices=False)
    for rank in (1, 5, 17, min(shape)):
        a, b = svd_factorize(w, rank)
        assert a.shape == (shape[0], rank) and b.shape == (rank, shape[1]) and a.dtype == w.dtype
        err = torch.linalg.matrix_norm(w - a @ b).item()
        dropped = float(np.sqrt((s[rank:] ** 2).sum()))
        if rank == min(shape):
            assert err <= 1e-5 * torch.linalg.matrix_norm(w).item(), f"exact rank: max_abs_diff={err}"
        else:
            assert rel(err, dropped) < 1e-5, f"rank {rank}: error {err} vs sqrt(sum dropped s^2) {dropped}"
        ref = (u[:, :rank] * s[:rank]) @ vt[:rank]
        diff = np.abs((a @ b).numpy() - ref).max()
        assert diff < 1e-8, f"rank {rank}: max_abs_diff vs numpy truncation {diff}"
        # the singular values are split evenly: A^T A = B B^T = diag(s_r)
        for gram in (a.T @ a, b @ b.T):
            diff = (gram - torch.diag(torch.from_numpy(s[:rank]))).abs().max().item()
            assert diff < 1e-8 * s[0], f"balanced split: max_abs_diff={diff}"


def test_svd_factorize_keeps_dtype_and_rejects_bad_rank():
    w = randn(8, 6, seed=0, dtype=torch.float32)
    a, b = svd_factorize(w, 3)
    assert a.dtype == b.dtype == torch.float32
    for bad in (0, 7, 2.0):
        with pytest.raises(ValueError, match=r"rank must be an int in \[1, min\(out, in\)\] = \[1, 6\]"):
            svd_factorize(w, bad)
    with pytest.raises(ValueError, match="2-D"):
        svd_factorize(w[0], 1)


# --- whitened SVD and ASVD --------------------------------------------------------------------------------------


def optimal_output_error(w: torch.Tensor, x: torch.Tensor, rank: int) -> tuple[float, np.ndarray]:
    """Independent optimum of min_{rank W' <= r} ||(W - W') X^T||_F: the best rank-r approximation Y_r of
    Y = W X^T (its rows lie in the row space of X^T, so it is reachable), then W' from least squares
    W' X^T = Y_r. Returns (error, W')."""
    wn, xn = w.numpy(), x.numpy()
    y = wn @ xn.T  # (out, N)
    u, s, vt = np.linalg.svd(y, full_matrices=False)
    y_r = (u[:, :rank] * s[:rank]) @ vt[:rank]
    w_opt = np.linalg.lstsq(xn, y_r.T, rcond=None)[0].T  # (out, in)
    return float(np.linalg.norm(y - w_opt @ xn.T)), w_opt


def test_whitened_svd_reaches_the_output_error_optimum_and_beats_svd():
    w, x = randn(24, 32, seed=5), correlated_inputs(300, 32)
    xtx = x.T @ x
    for rank in (1, 2, 4, 8, 16, 23):
        a, b = whitened_svd_factorize(w, xtx, rank)
        err_white = torch.linalg.matrix_norm((w - a @ b) @ x.T).item()
        a_svd, b_svd = svd_factorize(w, rank)
        err_svd = torch.linalg.matrix_norm((w - a_svd @ b_svd) @ x.T).item()
        best, w_opt = optimal_output_error(w, x, rank)
        assert err_white <= err_svd * (1 + 1e-9), f"rank {rank}: whitened {err_white} > svd {err_svd}"
        assert rel(err_white, best) < 1e-4, f"rank {rank}: whitened {err_white} vs optimum {best}"
        diff = np.abs((a @ b).numpy() - w_opt).max()
        assert diff < 1e-3 * np.abs(w_opt).max(), f"rank {rank}: W' vs least-squares optimum max_abs_diff={diff}"
        assert rel(output_error(w, a @ b, xtx), err_white) < 1e-9  # the X^T X shortcut is the same number
        assert err_white < 0.9 * err_svd, f"rank {rank}: outliers should make whitening pay ({err_white=})"
    a, b = whitened_svd_factorize(w, xtx, 24)  # full rank: exact
    diff = (a @ b - w).abs().max().item()
    assert diff < 1e-8, f"full rank: max_abs_diff={diff}"


def test_whitened_and_asvd_reduce_to_svd_on_white_inputs():
    w = randn(12, 10, seed=7)
    a, b = svd_factorize(w, 4)
    for a2, b2 in (
        whitened_svd_factorize(w, 3.0 * torch.eye(10, dtype=torch.float64), 4, damp=0.0),
        asvd_factorize(w, torch.full((10,), 0.7, dtype=torch.float64), 4),
        asvd_factorize(w, torch.rand(10, dtype=torch.float64), 4, alpha=0.0),
    ):
        diff = (a2 @ b2 - a @ b).abs().max().item()
        assert diff < 1e-10, f"max_abs_diff={diff}"


def test_asvd_sits_between_svd_and_whitened_on_outlier_channels():
    w, x = randn(24, 32, seed=5), correlated_inputs(300, 32)
    xtx, abs_mean = x.T @ x, x.abs().mean(dim=0)
    errors = {
        name: output_error(w, a @ b, xtx)
        for name, (a, b) in {
            "svd": svd_factorize(w, 8),
            "asvd": asvd_factorize(w, abs_mean, 8),
            "whitened": whitened_svd_factorize(w, xtx, 8),
        }.items()
    }
    assert errors["whitened"] < errors["asvd"] < errors["svd"], errors


def test_factorizations_reject_bad_calibration():
    w = randn(6, 5, seed=0)
    with pytest.raises(ValueError, match=r"xtx must be \(in, in\) = \(5, 5\)"):
        whitened_svd_factorize(w, torch.eye(4), 2)
    with pytest.raises(ValueError, match="xtx is zero"):
        whitened_svd_factorize(w, torch.zeros(5, 5), 2)
    with pytest.raises(ValueError, match="not positive definite.*raise damp"):
        whitened_svd_factorize(w, torch.ones(5, 5), 2, damp=0.0)
    with pytest.raises(ValueError, match=r"abs_mean must be \(in,\) = \(5,\)"):
        asvd_factorize(w, torch.ones(4), 2)
    with pytest.raises(ValueError, match="abs_mean is zero"):
        asvd_factorize(w, torch.zeros(5), 2)


# --- the layer and the budget -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_low_rank_linear_forward_and_params(bias):
    torch.manual_seed(0)
    layer = nn.Linear(20, 12, bias=bias)
    a, b = svd_factorize(layer.weight.detach(), 5)
    low = LowRankLinear.from_linear(layer, a, b)
    x = torch.randn(3, 4, 20)  # (B, T, in)
    ref = x @ (a @ b).T + (layer.bias.detach() if bias else 0)
    diff = (low(x) - ref).abs().max().item()
    assert diff < 1e-6, f"max_abs_diff={diff}"
    assert low.params == 5 * (12 + 20) + (12 if bias else 0)
    assert torch.allclose(low.weight, a @ b)
    with pytest.raises(ValueError, match=r"A \(out, r\) and B \(r, in\)"):
        LowRankLinear.from_linear(layer, a, b.T)


def test_rank_for_budget_arithmetic_and_error():
    assert rank_for_budget(576, 576, 0.5) == 144  # 144 * 1152 = 165888 = 0.5 * 576^2 exactly
    assert rank_for_budget(1536, 576, 0.5) == 209  # 0.5 * 1536 * 576 / 2112 = 209.45
    assert rank_for_budget(192, 576, 0.25) == 36  # exactly 36 * 768 = 27648 = 0.25 * 192 * 576
    for out_f, in_f, keep in [(576, 576, 0.5), (1536, 576, 0.3), (7, 13, 0.9), (64, 3, 1.0)]:
        r = rank_for_budget(out_f, in_f, keep)
        assert r * (out_f + in_f) <= keep * out_f * in_f < (r + 1) * (out_f + in_f)
    with pytest.raises(ValueError, match=r"affords rank 0 for a \(4, 4\) weight: rank 1 needs keep_fraction >= .* 0.5"):
        rank_for_budget(4, 4, 0.4)
    for keep in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"keep_fraction must be in \(0, 1\]"):
            rank_for_budget(8, 8, keep)


def test_low_rank_linear_helper_checks_method_and_stats():
    layer = nn.Linear(16, 16)
    assert low_rank_linear(layer, None, 0.5, "svd").rank == 4
    with pytest.raises(ValueError, match="method must be one of"):
        low_rank_linear(layer, None, 0.5, "qr")
    with pytest.raises(ValueError, match="needs the layer's calibration LinearStats"):
        low_rank_linear(layer, None, 0.5, "whitened")


# --- a real model -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_batches():
    from llmbook.chain.pretrained import load_pretrained
    from llmbook.data.corpora import corpus_text

    model, tok = load_pretrained(layers=2)
    ids = tok(corpus_text("en", max_bytes=4000), return_tensors="pt").input_ids
    assert ids.shape[1] >= 512, ids.shape
    return model, [ids[:, :128], ids[:, 128:256]], [ids[:, 256:384], ids[:, 384:512]]  # calibration, held out


def test_real_block_whitened_beats_asvd_beats_svd(model_and_batches):
    """Output errors ||(W - A B) X^T||_F at keep_fraction 0.5 on the first block of SmolLM2, summed over its seven
    linears, on the 256 calibration tokens and on 256 held-out tokens."""
    model, calibration, held_out = model_and_batches
    _index, block, stats, _refresh = next(iterate_blocks(model, calibration))
    _index, _block, held_stats, _refresh = next(iterate_blocks(model, held_out))
    totals = {m: [0.0, 0.0] for m in ("svd", "asvd", "whitened")}  # [calibration, held out]
    rows = []
    for name, layer in linear_layers(block).items():
        row = []
        for m, total in totals.items():
            approx = low_rank_linear(layer, stats[name], 0.5, m).weight
            errs = (
                output_error(layer.weight, approx, stats[name].xtx),
                output_error(layer.weight, approx, held_stats[name].xtx),
            )
            total[0] += errs[0]
            total[1] += errs[1]
            row.append(f"{m}={errs[0]:.4g}/{errs[1]:.4g}")
        rows.append(f"{name}: " + " ".join(row))
    report = "calibration/held-out\n" + "\n".join(rows) + f"\ntotal: {totals}"
    print(report)
    cal, held = {m: t[0] for m, t in totals.items()}, {m: t[1] for m, t in totals.items()}
    assert cal["whitened"] < cal["asvd"] < cal["svd"], report
    assert held["whitened"] < held["svd"], report  # calibrated on 256 tokens, whitening still generalises


# --- the whole-model helper, on a tiny random LLaMA ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    return model, [ids[:2], ids[2:]]


def test_factorize_model_is_sequential(tiny_llama):
    model, batches = tiny_llama
    factorised = copy.deepcopy(model)
    done = factorize_model(factorised, batches, LowRankConfig(keep_fraction=0.5, method="whitened"))
    assert len(done) == 14 and {m.rank for m in done.values()} == {5, 8, 9}  # q, o: 8; k, v (16x32): 5; mlp: 9
    assert all(not isinstance(m, nn.Linear) for b in factorised.model.layers for m in linear_parents(b))
    # block 1 must be calibrated on the outputs of the *factorised* block 0, not of the original one
    mixed = copy.deepcopy(model)
    mixed.model.layers[0] = copy.deepcopy(factorised.model.layers[0])
    seq_stats = [stats for _i, _b, stats, _r in iterate_blocks(mixed, batches)][1]
    orig_stats = [stats for _i, _b, stats, _r in iterate_blocks(model, batches)][1]
    for name, layer in linear_layers(model.model.layers[1]).items():
        got = done[f"1.{name}"].weight.detach()
        want = low_rank_linear(layer, seq_stats[name], 0.5, "whitened").weight.detach()
        naive = low_rank_linear(layer, orig_stats[name], 0.5, "whitened").weight.detach()
        diff = (got - want).abs().max().item()
        assert diff < 1e-6, f"{name}: max_abs_diff vs sequential calibration {diff}"
        assert (got - naive).abs().max().item() > 1e-4, f"{name}: block 1 was calibrated on uncompressed inputs"


def linear_parents(block: nn.Module) -> list[nn.Module]:
    """The modules sitting where the block's seven projections are."""
    return [getattr(block.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
        getattr(block.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")
    ]


def test_factorize_model_svd_needs_no_batches(tiny_llama):
    model, batches = tiny_llama
    factorised = copy.deepcopy(model)
    done = factorize_model(factorised, None, LowRankConfig(keep_fraction=0.5, method="svd"))
    q = model.model.layers[1].self_attn.q_proj.weight.detach()
    a, b = svd_factorize(q, 8)
    diff = (done["1.self_attn.q_proj"].weight.detach() - a @ b).abs().max().item()
    assert diff < 1e-6, f"max_abs_diff={diff}"
    with pytest.raises(ValueError, match="needs calibration batches"):
        factorize_model(copy.deepcopy(model), None, LowRankConfig(method="asvd"))
