"""Whole-model recipes on a tiny seeded LLaMA: every method leaves the original alone, sizes add up, and the
calibrated methods record their per-layer errors."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmbook.compression import QuantSpec, fake_quantize, recipes
from llmbook.compression.pruning import check_n_m


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=96, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return list(torch.randint(0, 96, (8, 32), generator=generator).split(4))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sizes_count_a_tied_embedding_once(model: LlamaForCausalLM) -> None:
    linear, other = recipes.parameter_counts(model)
    assert linear == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)  # q, o; k, v (2 kv heads of 16); gate, up, down
    assert other == 96 * 64 + 2 * 2 * 64 + 64  # embedding (= head), two norms per block, final norm
    assert recipes.model_bytes(model, 4, 16) == (linear * 4 + other * 16) / 8


def test_every_recipe_returns_a_copy(model: LlamaForCausalLM, batches: list[torch.Tensor]) -> None:
    before = _state(model)
    spec = QuantSpec(bits=4, symmetric=False, group_size=32)
    ids = batches[0]
    made = [
        recipes.half_precision(model), recipes.rtn(model, spec), recipes.normal_float(model),
        recipes.llama_cpp(model, "Q4_0"), recipes.int8_outliers(model), recipes.w8a8(model),
        recipes.smoothquant_w8a8(model, batches, 0.5), recipes.gptq_model(model, batches, spec),
        recipes.awq_model(model, batches, spec, grid=4), recipes.pruned(model, batches, "wanda", n=2, m=4),
        recipes.factorized(model, batches, 0.5),
    ]
    for compressed in made:
        out = compressed.model(ids).logits
        assert torch.isfinite(out).all(), compressed.name
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a recipe changed the original model"


def test_rtn_rounds_every_decoder_linear_and_nothing_else(model: LlamaForCausalLM) -> None:
    spec = QuantSpec(bits=3, group_size=32)
    compressed = recipes.rtn(model, spec)
    for name, layer in recipes.decoder_linears(compressed.model).items():
        original = recipes.decoder_linears(model)[name].weight
        assert torch.equal(layer.weight, fake_quantize(original, spec)), name
    assert torch.equal(compressed.model.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert compressed.linear_bits == spec.bits_per_weight()


def test_gptq_records_its_errors_beside_round_to_nearest(model: LlamaForCausalLM, batches: list[torch.Tensor]) -> None:
    compressed = recipes.gptq_model(model, batches, QuantSpec(bits=3, symmetric=False, group_size=32))
    assert set(compressed.layer_errors) == set(compressed.baseline_errors) == set(recipes.decoder_linears(model))
    for name, error in compressed.layer_errors.items():
        assert error < compressed.baseline_errors[name], name  # GPTQ minimises exactly this error


def test_pruning_and_factorisation_sizes(model: LlamaForCausalLM, batches: list[torch.Tensor]) -> None:
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = recipes.pruned(model, batches, method, n=2, m=4)
        assert all(check_n_m(layer.weight) for layer in recipes.decoder_linears(pruned.model).values()), method
        assert pruned.linear_bits == 9  # 16-bit values of half the weights + a 2-bit index per kept value
    dense = recipes.model_bytes(model, 16)
    factored = recipes.factorized(model, None, 0.5, "svd")
    linear, _ = recipes.parameter_counts(factored.model)
    assert linear <= recipes.parameter_counts(model)[0] / 2  # the factors of each layer: at most half its weights
    assert factored.linear_bits <= 8  # 16-bit factors holding at most half the weights
    assert recipes.model_bytes(model, factored.linear_bits) < dense
