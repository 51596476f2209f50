"""llmbook.compression.pruning: masks by hand and against torch.nn.utils.prune, Wanda against a per-row sort,
SparseGPT against a float64 Optimal Brain Surgeon reference, and the three methods on a real model's layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from llmbook.compression.calibration import (
    LinearStats,
    compress_sequentially,
    decoder_blocks,
    iterate_blocks,
    linear_layers,
)
from llmbook.compression.gptq import inverse_hessian_factor, layer_output_error
from llmbook.compression.pruning import (
    PruneResult,
    check_n_m,
    magnitude_mask,
    prune_linear,
    sparsegpt_prune,
    sparsity,
    wanda_mask,
)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def correlated_inputs(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    """(rows, width) float64 inputs with correlated channels of unequal scale, like real activations."""
    mix = randn(width, width, seed=seed + 1, dtype=torch.float64) / width**0.5
    scale = torch.linspace(0.2, 3.0, width, dtype=torch.float64)
    return (randn(rows, width, seed=seed, dtype=torch.float64) @ mix) * scale


def output_error(weight: torch.Tensor, weight_hat: torch.Tensor, xtx: torch.Tensor, rows: int) -> float:
    """``trace((W - W_hat) X^T X (W - W_hat)^T) / N``: the mean squared output error summed over outputs."""
    delta = (weight - weight_hat).double()  # (out, in)
    return float((delta @ xtx * delta).sum()) / rows


def sample_error(weight: torch.Tensor, weight_hat: torch.Tensor, stats: LinearStats) -> float:
    """The same ``||(W - W_hat) X^T||_F^2 / N`` from the stored rows X (N, in): cheaper than X^T X when N < in."""
    assert stats.sample.shape[0] == stats.rows, "every calibration row must be in stats.sample"
    return float((((weight - weight_hat) @ stats.sample.T).double() ** 2).sum()) / stats.rows  # float32 matmul


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# --- hand-made masks ----------------------------------------------------------------------------------------------

W_2X8 = torch.tensor(
    [
        [0.1, -0.9, 0.5, 0.2, -0.3, 0.05, 0.8, -0.7],
        [2.0, 1.0, -3.0, 0.5, 0.0, 0.4, -0.2, 0.1],
    ]
)


def test_two_four_mask_by_hand():
    expected = torch.tensor(
        [
            [0, 1, 1, 0, 0, 0, 1, 1],
            [1, 0, 1, 0, 0, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    mask = magnitude_mask(W_2X8, n=2, m=4)
    assert mask.dtype == torch.bool and torch.equal(mask, expected), mask.int()
    assert check_n_m(mask, 2, 4) and check_n_m(W_2X8 * mask, 2, 4)
    assert sparsity(mask) == 0.5 and sparsity(W_2X8 * mask) == 0.5
    # 1:4 keeps the single largest of each group
    one = magnitude_mask(W_2X8, n=1, m=4)
    assert torch.equal(one.nonzero()[:, 1], torch.tensor([1, 6, 2, 5])) and sparsity(one) == 0.75
    # Wanda: a loud input channel 0 saves the small weight 0.1 of row 0 (|0.1| * 20 beats |0.5|, |0.2|)
    norms = torch.tensor([20.0, 1, 1, 1, 1, 1, 1, 1])
    wanda = wanda_mask(W_2X8, norms, n=2, m=4)
    assert torch.equal(wanda[0, :4], torch.tensor([True, True, False, False])), wanda.int()
    assert torch.equal(wanda[:, 4:], expected[:, 4:]) and torch.equal(wanda[1], expected[1])


def test_check_n_m_detects_a_violation():
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 1::2] = False
    assert check_n_m(mask, 2, 4)
    mask[1, 5] = True  # row 1, second group: three kept
    assert not check_n_m(mask, 2, 4)
    assert check_n_m(mask, 3, 4) and not check_n_m(mask, 1, 2)
    weight = W_2X8.clone()
    assert not check_n_m(weight, 2, 4)  # dense
    weight[0, 0] = weight[0, 3] = 0.0
    assert not check_n_m(weight, 2, 4)  # row 1 still dense
    with pytest.raises(ValueError, match="divisible"):
        check_n_m(torch.ones(2, 6, dtype=torch.bool), 2, 4)


def test_sparsity_exact_per_row_and_per_layer():
    weight = randn(6, 10)
    per_row = magnitude_mask(weight, 0.5, per_row=True)
    assert torch.equal(per_row.sum(dim=1), torch.full((6,), 5)), per_row.sum(dim=1)
    # the kept weights of each row are exactly the 5 largest in magnitude
    top = weight.abs().topk(5, dim=1).indices
    assert torch.equal(per_row, torch.zeros_like(per_row).scatter_(1, top, True))
    layer = magnitude_mask(weight, 0.3)
    assert int((~layer).sum()) == 18 and sparsity(layer) == 0.3
    assert weight.abs()[layer].min() > weight.abs()[~layer].max()
    assert sparsity(magnitude_mask(weight, 0.0)) == 0.0
    assert sparsity(torch.tensor([[0.0, 1.0, 0.0, 2.0]])) == 0.5


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
def test_magnitude_matches_torch_l1_unstructured(amount):
    linear = nn.Linear(24, 16)
    with torch.no_grad():
        linear.weight.copy_(randn(16, 24, seed=3))
    ours = magnitude_mask(linear.weight, amount)
    torch_prune.l1_unstructured(linear, "weight", amount=amount)
    theirs = linear.weight_mask.bool()
    assert torch.equal(ours, theirs), f"{int((ours != theirs).sum())} entries differ"


# --- Wanda --------------------------------------------------------------------------------------------------------


def wanda_reference(weight: torch.Tensor, norms: torch.Tensor, frac: float) -> torch.Tensor:
    """Straightforward Wanda: per row, sort |W| * ||X|| and drop the lowest int(frac * in) entries."""
    out, width = weight.shape
    keep = torch.ones(out, width, dtype=torch.bool)
    for r in range(out):
        scores = [(abs(float(weight[r, j])) * float(norms[j]), j) for j in range(width)]
        for _, j in sorted(scores)[: int(frac * width)]:
            keep[r, j] = False
    return keep


def wanda_n_m_reference(weight: torch.Tensor, norms: torch.Tensor, n: int, m: int) -> torch.Tensor:
    out, width = weight.shape
    keep = torch.zeros(out, width, dtype=torch.bool)
    for r in range(out):
        for g in range(0, width, m):
            scores = sorted(((abs(float(weight[r, j])) * float(norms[j]), j) for j in range(g, g + m)), reverse=True)
            for _, j in scores[:n]:
                keep[r, j] = True
    return keep


def test_wanda_with_equal_norms_is_per_row_magnitude():
    weight = randn(8, 32, seed=4)
    norms = torch.full((32,), 3.7)
    assert torch.equal(wanda_mask(weight, norms, 0.5), magnitude_mask(weight, 0.5, per_row=True))
    assert torch.equal(wanda_mask(weight, norms, n=2, m=4), magnitude_mask(weight, n=2, m=4))
    # and not the whole-layer magnitude mask, whose rows are not balanced
    assert not torch.equal(wanda_mask(weight, norms, 0.5), magnitude_mask(weight, 0.5))


def test_wanda_matches_a_per_row_sort():
    weight = randn(8, 32, seed=5)
    x = correlated_inputs(64, 32, seed=6)
    stats = LinearStats(in_features=32)
    stats.update(x)
    norms = stats.l2_norm
    assert max_abs_diff(norms, x.norm(dim=0)) < 1e-5
    for frac in (0.25, 0.5, 0.75):
        mask = wanda_mask(weight, norms, frac)
        ref = wanda_reference(weight, norms, frac)
        assert torch.equal(mask, ref), f"sparsity {frac}: {int((mask != ref).sum())} entries differ"
    assert torch.equal(wanda_mask(weight, norms, n=2, m=4), wanda_n_m_reference(weight, norms, 2, 4))
    assert torch.equal(wanda_mask(weight, norms, n=1, m=8), wanda_n_m_reference(weight, norms, 1, 8))
    # the activations change the choice: not the magnitude mask
    assert not torch.equal(wanda_mask(weight, norms, 0.5), magnitude_mask(weight, 0.5, per_row=True))


# --- SparseGPT ----------------------------------------------------------------------------------------------------


def obs_reference(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, damp: float) -> torch.Tensor:
    """Float64 Optimal Brain Surgeon with a fixed mask, row by row, columns left to right: prune column p with
    ``w -= w_p / Hinv_pp * Hinv[:, p]``, then freeze it by removing it from ``Hinv`` (Schur complement)."""
    width = weight.shape[1]
    H = hessian.double() + damp * hessian.double().diagonal().mean() * torch.eye(width, dtype=torch.float64)
    out = weight.double().clone()
    for r in range(out.shape[0]):
        w, hinv = out[r], torch.linalg.inv(H)
        for p in range(width):
            if not keep[r, p]:
                w -= w[p] / hinv[p, p] * hinv[:, p]
            hinv = hinv - torch.outer(hinv[:, p], hinv[p, :]) / hinv[p, p]
    return out


@pytest.mark.parametrize("block_size", [8, 128])
def test_sparsegpt_fixed_mask_matches_obs_reference(block_size):
    out, width, rows, damp = 6, 32, 64, 0.01
    x = correlated_inputs(rows, width, seed=7)
    hessian = 2 * x.T @ x / rows
    weight = randn(out, width, seed=8)
    keep = torch.rand(out, width, generator=torch.Generator().manual_seed(9)) > 0.5
    result = sparsegpt_prune(weight, hessian, mask=keep, block_size=block_size, damp=damp)
    assert isinstance(result, PruneResult) and result.weight.dtype == torch.float32
    ref = obs_reference(weight, hessian, keep, damp)
    assert max_abs_diff(result.weight, ref) < 1e-5, f"max_abs_diff={max_abs_diff(result.weight, ref):.3g}"
    assert torch.equal(result.mask, keep) and torch.all(result.weight[~keep] == 0)
    # the OBS loss it reports is exactly 1/2 sum_rows dW H_damped dW^T
    h_damped = hessian + damp * hessian.diagonal().mean() * torch.eye(width, dtype=torch.float64)
    delta = (result.weight - weight).double()
    exact = 0.5 * float((delta @ h_damped * delta).sum())
    assert abs(result.loss - exact) < 1e-6 * exact, (result.loss, exact)
    # the updates of the kept weights lower the output error below zeroing the same weights (ratio 0.91 here)
    zeroed = output_error(weight, weight * keep, x.T @ x, rows)
    rebuilt = output_error(weight, result.weight, x.T @ x, rows)
    assert rebuilt < zeroed, (rebuilt, zeroed)


def test_sparsegpt_masks_and_dead_inputs():
    out, width, rows = 8, 64, 128
    x = correlated_inputs(rows, width, seed=10)
    x[:, 5] = 0.0  # a dead input channel
    hessian = 2 * x.T @ x / rows
    weight = randn(out, width, seed=11)
    unstructured = sparsegpt_prune(weight, hessian, 0.5, block_size=16)
    assert sparsity(unstructured.mask) == 0.5 and torch.all(unstructured.weight[~unstructured.mask] == 0)
    assert torch.all(unstructured.weight[:, 5] == 0)
    # each block of 16 columns holds exactly half the block's weights (chosen jointly over its rows)
    assert torch.equal(unstructured.mask.reshape(out, 4, 16).sum(dim=(0, 2)), torch.full((4,), 64))
    semi = sparsegpt_prune(weight, hessian, n=2, m=4, block_size=16)
    assert check_n_m(semi.mask, 2, 4) and check_n_m(semi.weight, 2, 4) and sparsity(semi.mask) == 0.5
    assert torch.equal(semi.mask.reshape(out, -1, 4).sum(dim=-1), torch.full((out, 16), 2))
    # the first selections see the weights before any update: saliency w^2 / U_jj^2 (dead input: H_jj set to 1)
    fixed = hessian.clone()
    fixed[5, 5] = 1.0
    u_diag = inverse_hessian_factor(fixed, 0.01).diagonal()
    saliency = (weight.double() * (torch.arange(width) != 5)) ** 2 / u_diag**2  # (out, in)
    first = saliency[:, :16].flatten()
    assert torch.equal(unstructured.mask[:, :16].flatten(), first > first.kthvalue(64).values), "first block mask"
    assert torch.equal(semi.mask[:, :4], magnitude_mask(saliency[:, :4], n=2, m=4)), "first 2:4 group"
    assert not torch.equal(semi.mask, magnitude_mask(saliency, n=2, m=4))  # later groups see updated weights
    # the ordering the methods are known for (a block of 16 columns x 8 rows would be too small a pool to pick from:
    # here the channels' scales ramp from 0.2 to 3, and each block must still drop exactly half)
    xtx = x.T @ x
    errors = {
        "sparsegpt": output_error(weight, sparsegpt_prune(weight, hessian, 0.5).weight, xtx, rows),
        "wanda": output_error(weight, weight * wanda_mask(weight, x.norm(dim=0).float(), 0.5), xtx, rows),
        "magnitude": output_error(weight, weight * magnitude_mask(weight, 0.5), xtx, rows),
    }
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_prune_linear_edits_the_layer_in_place():
    linear = nn.Linear(32, 8)
    with torch.no_grad():
        linear.weight.copy_(randn(8, 32, seed=12))
    stats = LinearStats(in_features=32)
    stats.update(correlated_inputs(64, 32, seed=13).float())
    dense = linear.weight.detach().clone()
    for method in ("magnitude", "wanda", "sparsegpt"):
        with torch.no_grad():
            linear.weight.copy_(dense)
        mask = prune_linear(linear, stats, method, n=2, m=4)
        assert check_n_m(linear.weight, 2, 4) and torch.all(linear.weight[~mask] == 0), method
        with torch.no_grad():
            linear.weight.copy_(dense)
        mask = prune_linear(linear, stats, method)
        assert sparsity(mask) == 0.5 and torch.all(linear.weight[~mask] == 0), method
        kept_changed = not torch.equal(linear.weight[mask], dense[mask])
        assert kept_changed == (method == "sparsegpt"), method


def test_prune_linear_as_a_compress_sequentially_step():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))  # (B, T)
    masks: dict[str, torch.Tensor] = {}
    compress_sequentially(
        model,
        [ids],
        lambda name, layer, stats: masks.setdefault(name, prune_linear(layer, stats, "sparsegpt", n=2, m=4)),
    )
    assert len(masks) == 14 and set(masks) >= {"0.self_attn.q_proj", "1.mlp.down_proj"}
    for name, layer in linear_layers(decoder_blocks(model)).items():
        assert check_n_m(layer.weight, 2, 4) and sparsity(layer.weight) >= 0.5, name
    assert sparsity(model.lm_head.weight) == 0.0  # the head is left alone


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: magnitude_mask(W_2X8, 1.0), r"\[0, 1\)"),
        (lambda: magnitude_mask(W_2X8, -0.1), r"\[0, 1\)"),
        (lambda: magnitude_mask(W_2X8), "give a sparsity"),
        (lambda: magnitude_mask(W_2X8, n=4, m=4), "1 <= n < m"),
        (lambda: magnitude_mask(W_2X8, n=2), "both n and m"),
        (lambda: magnitude_mask(W_2X8, n=1, m=3), "not divisible by m=3"),
        (lambda: magnitude_mask(W_2X8, 0.3, n=2, m=4), "contradicts 2:4"),
        (lambda: magnitude_mask(W_2X8[0], 0.5), "2-D"),
        (lambda: wanda_mask(W_2X8, torch.ones(7), 0.5), r"shape \(8,\)"),
        (lambda: sparsegpt_prune(W_2X8, torch.eye(8), mask=torch.ones(2, 4, dtype=torch.bool)), "shape"),
        (lambda: sparsegpt_prune(W_2X8, torch.eye(8), 0.5, mask=torch.ones(2, 8, dtype=torch.bool)), "not both"),
        (lambda: sparsegpt_prune(W_2X8, torch.eye(4), 0.5), r"\(8, 8\)"),
        (lambda: sparsegpt_prune(W_2X8, torch.eye(8), n=2, m=4, block_size=6), "multiple of m"),
        (lambda: sparsegpt_prune(W_2X8, -torch.eye(8), 0.5, damp=0.0), "positive definite"),
        (lambda: prune_linear(nn.Linear(8, 2), LinearStats(in_features=8), "wanda"), "no rows"),
        (lambda: prune_linear(nn.Linear(8, 2), LinearStats(in_features=8), "obd"), "choose one of"),
        (lambda: prune_linear(nn.Linear(8, 2), LinearStats(in_features=4)), "4 inputs"),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_mask_type_raises():
    with pytest.raises(TypeError, match="bool"):
        sparsegpt_prune(W_2X8, torch.eye(8), mask=torch.ones(2, 8))


# --- a real model: SmolLM2-135M, first 2 blocks -------------------------------------------------------------------

PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"n": 2, "m": 4}}


@pytest.fixture(scope="module")
def real_model_errors() -> dict[str, dict[str, dict[str, float]]]:
    """errors[pattern][layer][method] on every linear of the first 2 blocks, ~256 calibration tokens."""
    from llmbook.chain.pretrained import load_pretrained
    from llmbook.data.corpora import corpus_text

    model, tok = load_pretrained(layers=2)
    ids = tok(corpus_text("en", max_bytes=4000), return_tensors="pt").input_ids[:, :256]  # (1, T)
    assert ids.shape[1] == 256
    errors: dict[str, dict[str, dict[str, float]]] = {p: {} for p in PATTERNS}
    for index, block, stats, _refresh in iterate_blocks(model, [ids[:, :128], ids[:, 128:]]):
        for name, layer in linear_layers(block).items():
            s, w = stats[name], layer.weight.detach()
            for pattern, kwargs in PATTERNS.items():
                masks = {
                    "magnitude": magnitude_mask(w, **kwargs),
                    "wanda": wanda_mask(w, s.l2_norm, **kwargs),
                }
                pruned = {method: w * mask for method, mask in masks.items()}
                result = sparsegpt_prune(w, s.hessian, **kwargs)
                masks["sparsegpt"], pruned["sparsegpt"] = result.mask, result.weight
                if pattern == "2:4":
                    assert all(check_n_m(mk, 2, 4) for mk in masks.values()), name
                    assert all(check_n_m(wh, 2, 4) for wh in pruned.values()), name
                assert all(sparsity(mk) == 0.5 for mk in masks.values()), name
                errors[pattern][f"{index}.{name}"] = {method: sample_error(w, wh, s) for method, wh in pruned.items()}
                if name == "self_attn.k_proj":  # the cheap error is gptq's X^T X one (too slow on the MLP)
                    for method, wh in pruned.items():
                        exact = layer_output_error(w, wh, s)
                        assert abs(sample_error(w, wh, s) - exact) < 1e-6 * exact, (name, method)
    return errors


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_real_model_sparsegpt_beats_wanda_beats_magnitude(real_model_errors, pattern):
    errors = real_model_errors[pattern]
    assert len(errors) == 14  # 7 linears x 2 blocks
    table = "\n".join(f"{layer}: " + ", ".join(f"{k}={v:.4g}" for k, v in e.items()) for layer, e in errors.items())
    for layer, e in errors.items():
        assert e["sparsegpt"] < e["wanda"] < e["magnitude"], f"{pattern} {layer}\n{table}"
