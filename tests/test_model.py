"""The book's LLaMA-style model vs transformers.LlamaForCausalLM, caches, variants and MoE."""

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from llmbook.attention import KVCache
from llmbook.decoding import greedy
from llmbook.model import (
    DecoderBlock,
    DecoderLM,
    ModelConfig,
    MoEConfig,
    MoEFeedForward,
    eval_mode,
    from_hf,
    from_pretrained,
    load_balancing_loss,
    route,
    save_pretrained,
    to_hf,
    to_hf_config,
)
from llmbook.positional import RopeConfig, permute_qk_weight

TINY = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def tiny(seed: int = 0, **overrides) -> DecoderLM:
    """Tiny seeded model with non-trivial weights (std 0.2 and random norm gains) so logits are O(1)."""
    torch.manual_seed(seed)
    model = DecoderLM(ModelConfig(**{**TINY, "init_std": 0.2, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def ids(b: int = 2, t: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (b, t), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- equivalence with transformers


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager", "tiled"])
def test_logits_and_loss_match_llama(attn_impl):
    model = tiny(attn_impl=attn_impl)
    hf = to_hf(model)
    x = ids()
    with torch.no_grad():
        ours, theirs = model(x, labels=x), hf(x, labels=x)
    assert ours.logits.abs().max() > 0.5  # not a near-zero tautology
    assert mad(ours.logits, theirs.logits) < 1e-5, f"max_abs_diff={mad(ours.logits, theirs.logits)}"
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5, f"loss {ours.loss.item()} vs {theirs.loss.item()}"


def test_padding_mask_matches_llama():
    model, x = tiny(), ids()
    am = torch.ones_like(x)
    am[0, :5] = 0  # left padding
    with torch.no_grad():
        ours, theirs = model(x, attention_mask=am).logits, to_hf(model)(x, attention_mask=am).logits
    real = am.bool()
    assert mad(ours[real], theirs[real]) < 1e-5, f"max_abs_diff={mad(ours[real], theirs[real])}"
    with torch.no_grad():
        unmasked = model(x).logits
    assert mad(unmasked[0, 5:], ours[0, 5:]) > 1e-3  # the mask matters


@pytest.mark.parametrize(
    "overrides",
    [
        dict(tie_embeddings=True),
        dict(activation="geglu"),
        dict(n_kv_heads=1, head_dim=8),
        dict(rope=RopeConfig(theta=500000.0, scaling="llama3", factor=8.0, original_max_position_embeddings=8)),
        dict(rope=RopeConfig(scaling="yarn", factor=4.0, original_max_position_embeddings=8)),
        dict(attention_bias=True),
    ],
    ids=["tied", "geglu", "mqa-headdim", "llama3-rope", "yarn-rope", "attn-bias"],
)
def test_variants_convert_to_llama(overrides):
    model, x = tiny(**overrides), ids()
    with torch.no_grad():
        diff = mad(model(x).logits, to_hf(model)(x).logits)
    assert diff < 1e-5, f"max_abs_diff={diff}"


def test_interleaved_rope_model_converts_via_row_permutation():
    model, x = tiny(rope=RopeConfig(layout="interleaved")), ids()
    hf = to_hf(model)
    with torch.no_grad():
        diff = mad(model(x).logits, hf(x).logits)
    assert diff < 1e-5, f"max_abs_diff={diff}"
    q = model.layers[0].attn.q_proj.weight
    assert torch.equal(hf.model.layers[0].self_attn.q_proj.weight, permute_qk_weight(q, 4, to="half"))


def test_from_hf_matches_random_llama():
    torch.manual_seed(3)
    hf = LlamaForCausalLM(to_hf_config(ModelConfig(**TINY))).eval()
    model, x = from_hf(hf), ids()
    with torch.no_grad():
        diff = mad(model(x).logits, hf(x).logits)
    assert diff < 1e-5, f"max_abs_diff={diff}"


def test_save_pretrained_loads_in_transformers_and_generates_same(tmp_path):
    model = tiny()
    save_pretrained(model, tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    hf = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = ids(1, 5)
    ours = greedy(model, prompt, 12)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                         pad_token_id=0)
    assert ours.tolist() == theirs.tolist()
    back = from_pretrained(tmp_path)
    with torch.no_grad():
        diff = mad(back(prompt).logits, model(prompt).logits)
    assert diff < 1e-6, f"max_abs_diff={diff}"
    assert not hasattr(DecoderLM, "save_pretrained") and not hasattr(DecoderLM, "from_pretrained")  # one API


def test_non_llama_configs_refuse_conversion():
    for bad in (dict(pos_encoding="alibi"), dict(norm_position="post"), dict(moe=MoEConfig()), dict(activation="gelu")):
        with pytest.raises(ValueError, match="LlamaConfig"):
            to_hf_config(ModelConfig(**TINY, **bad))


# ----------------------------------------------------------------- cache, generation, variants


@pytest.mark.parametrize("pos", ["rope", "sinusoidal", "learned", "alibi", "none"])
def test_cached_decode_equals_full_forward(pos):
    model, x = tiny(pos_encoding=pos, max_seq_len=32), ids(t=12)
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache()
        parts = [model(x[:, :8], kv_cache=cache).logits]
        parts += [model(x[:, t : t + 1], kv_cache=cache).logits for t in range(8, 12)]
    got = torch.cat(parts, dim=1)  # logits are O(5): fp32 summation-order noise is ~1e-5
    assert mad(got, full) < 5e-5, f"max_abs_diff={mad(got, full)}"
    assert greedy(model, x[:, :4], 6).tolist() == greedy(model, x[:, :4], 6, use_cache=False).tolist()


def block_by_hand(block: DecoderBlock, h: torch.Tensor, placement: str) -> torch.Tensor:
    """One block from its own submodules, as written in ``DecoderBlock.forward`` (llmbook/model/llama.py).

    pre (LLaMA):            h = h + Attn(N_a(h));            h = h + MLP(N_m(h))
    post (Vaswani et al. 2017, arXiv:1706.03762):
                            h = N_a(h + Attn(h));            h = N_m(h + MLP(h))
    sandwich (CogView arXiv:2105.13290, Gemma 2 arXiv:2408.00118):
                            h = h + N_ao(Attn(N_a(h)));      h = h + N_mo(MLP(N_m(h)))
    """
    attn = lambda x: block.attn(x, layer_idx=block.layer_idx)  # noqa: E731
    if placement == "pre":
        h = h + attn(block.attn_norm(h))
        return h + block.mlp(block.mlp_norm(h))
    if placement == "post":
        h = block.attn_norm(h + attn(h))
        return block.mlp_norm(h + block.mlp(h))
    h = h + block.attn_out_norm(attn(block.attn_norm(h)))
    return h + block.mlp_out_norm(block.mlp(block.mlp_norm(h)))


@pytest.mark.parametrize("norm_position", ["pre", "post", "sandwich"])
def test_norm_position_follows_its_formula(norm_position):
    model = tiny(norm_position=norm_position, pos_encoding="none")  # random norm gains: every norm counts
    x = ids(t=10)
    with torch.no_grad():
        h = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(2))  # (B, T, C)
        block = model.layers[0]
        got, _ = block(h)
        expected = block_by_hand(block, h, norm_position)
        assert mad(got, expected) < 1e-6, f"{norm_position}: max_abs_diff={mad(got, expected)}"
        for other in {"pre", "post"} - {norm_position}:  # far apart, so a wrong placement cannot pass
            # (only a sandwich block has the output norms the sandwich formula needs)
            assert mad(got, block_by_hand(block, h, other)) > 1e-2, f"{norm_position} block also fits {other}"
        # whole model: embed, blocks, final norm (post-norm has none: its last block ends in a norm), head
        h = model.embed_tokens(x)  # (B, T, C)
        for layer in model.layers:
            h = block_by_hand(layer, h, norm_position)
        final = h if norm_position == "post" else model.norm(h)
        assert (norm_position == "post") == isinstance(model.norm, torch.nn.Identity)
        logits = model.lm_head(final)  # (B, T, V)
        assert mad(model(x).logits, logits) < 1e-5, f"max_abs_diff={mad(model(x).logits, logits)}"


@pytest.mark.parametrize("norm_position", ["pre", "post", "sandwich"])
@pytest.mark.parametrize("activation", ["swiglu", "geglu", "gelu"])
def test_variants_train(norm_position, activation):
    model, x = tiny(norm_position=norm_position, activation=activation, sliding_window=4), ids(t=10)
    model.train()
    out = model(x, labels=x)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_is_shifted_cross_entropy_and_ignores_minus_100():
    model, x = tiny(), ids(1, 6)
    labels = x.clone()
    labels[0, 3] = -100
    with torch.no_grad():
        out = model(x, labels=labels)
    logp = out.logits.log_softmax(-1)
    manual = -torch.stack([logp[0, t - 1, labels[0, t]] for t in (1, 2, 4, 5)]).mean()
    assert abs(out.loss.item() - manual.item()) < 1e-5, f"loss {out.loss.item()} vs {manual.item()}"


def test_stated_initialisation():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=512, d_model=256, n_layers=8, n_heads=4, d_ff=512))
    assert model.layers[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.norm.weight, torch.ones(256))
    tied = DecoderLM(ModelConfig(**TINY, tie_embeddings=True))
    assert tied.lm_head.weight.data_ptr() == tied.embed_tokens.weight.data_ptr()


def test_config_validation():
    with pytest.raises(ValueError, match="pos_encoding"):
        ModelConfig(**TINY, pos_encoding="xpos")
    with pytest.raises(ValueError, match="attn_impl"):
        ModelConfig(**TINY, attn_impl="flash")
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(**{**TINY, "n_kv_heads": 3})


def test_eval_mode_restores_the_mode_even_when_the_body_raises():
    model = tiny().train()
    with eval_mode(model) as m:
        assert m is model and not model.training and not any(mod.training for mod in model.modules())
    assert model.training and all(mod.training for mod in model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training and all(mod.training for mod in model.modules())
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # an eval model stays in eval
    with pytest.raises(ValueError):
        with eval_mode(model):
            model.train()  # even a body that flips the mode gets the caller's mode back
            raise ValueError
    assert not model.training


# ----------------------------------------------------------------- MoE


def test_moe_routing_and_aux_loss_hand_case():
    # 4 tokens, 3 experts, top-1 (Switch). Router logits chosen by hand through an identity router.
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]))
    gates, idx, probs = route(logits, 1, normalize=False)
    assert idx[:, 0].tolist() == [0, 0, 1, 2]
    assert gates[:, 0].tolist() == pytest.approx([0.7, 0.6, 0.8, 0.6])
    # f = (2/4, 1/4, 1/4); P = mean probs = (0.4, 0.375, 0.225); aux = 3 * (0.5*0.4 + 0.25*0.375 + 0.25*0.225)
    aux = load_balancing_loss(probs, idx, 3)
    assert aux.item() == pytest.approx(3 * (0.2 + 0.09375 + 0.05625), rel=1e-6)
    # top-2 with renormalised gates: token 0 -> experts (0, 1), gates (0.7, 0.2) / 0.9
    g2, i2, _ = route(logits, 2, normalize=True)
    assert i2[0].tolist() == [0, 1] and g2[0].tolist() == pytest.approx([0.7 / 0.9, 0.2 / 0.9])


def test_moe_layer_combines_chosen_experts():
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 16, MoEConfig(n_experts=3, top_k=2))
    x = torch.randn(2, 5, 8)
    y, aux = moe(x)
    flat = x.reshape(-1, 8)
    gates, idx, _ = route(moe.router(flat), 2)
    manual = torch.stack(
        [sum(gates[n, s] * moe.experts[int(idx[n, s])](flat[n]) for s in range(2)) for n in range(flat.shape[0])]
    )
    assert mad(y.reshape(-1, 8), manual) < 1e-6, f"max_abs_diff={mad(y.reshape(-1, 8), manual)}"
    aux.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0  # P_e carries the gradient
    model = tiny(moe=MoEConfig(n_experts=4, top_k=2, aux_loss_coef=0.1))
    out = model(ids(t=8), labels=ids(t=8))
    assert out.aux_loss is not None and torch.isfinite(out.loss)
