"""llmbook.lora against peft: LoRA, rsLoRA, DoRA, PiSSA, VeRA, merging, PEFT's format, LoRA+, arithmetic, memory.

Every equality with peft is checked on a tiny seeded Llama (fp32, CPU) whose adapters were perturbed
identically in both libraries first: at initialisation B = 0 (VeRA: b = 0), so an untouched adapter
adds nothing and a comparison of outputs would pass whatever the adapter computed.

Tolerances: 1e-6 (absolute) where both libraries run the same fp32 operations (they come out
bit-identical on CPU today; 1e-6 leaves room for a reordered kernel); 1e-5 where a merged weight
replaces two matmuls by one (W x + s B A x vs (W + s B A) x rounds differently; here ~1e-7 on logits ~1).
"""

from __future__ import annotations

import contextlib
import copy
import re

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer
from peft.utils.merge_utils import ties as peft_ties
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from llmbook import lora
from llmbook.lora.arithmetic import combine_adapters, ties
from llmbook.lora.loraplus import loraplus_param_groups
from llmbook.lora.memory import LLAMA2, measure_step, paper_memory, training_state_bytes
from llmbook.model import DecoderLM, ModelConfig

EXACT = 1e-6  # same fp32 operations in both libraries
MERGED = 1e-5  # one merged matmul vs the base + adapter path
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = ["q_proj", "v_proj", "down_proj"]  # square, 32 -> 16 and 48 -> 32 layers


def tiny_llama(hidden_size: int = 32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden_size, intermediate_size=48,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))


@pytest.fixture(scope="module")
def base() -> LlamaForCausalLM:
    """Never modified: tests work on deep copies."""
    return tiny_llama()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def ours_key(name: str) -> str:
    """``model.layers.0.self_attn.q_proj.adapters.default.lora_A`` -> ``model.layers.0.self_attn.q_proj.lora_A``."""
    return re.sub(r"\.adapters\.[^.]+\.", ".", name)


def peft_key(name: str) -> str:
    """``base_model.model.<path>.lora_A.default.weight`` (or ``.vera_lambda_b.default``) -> ``<path>.lora_A``."""
    return re.sub(r"\.(\w+)\.default(\.weight)?$", r".\1", name.removeprefix("base_model.model."))


def trainable_pairs(ours: nn.Module, ref: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Our and peft's trainable tensors, paired by module path and kind; the two sets must be the same."""
    a = {ours_key(n): p for n, p in ours.named_parameters() if p.requires_grad}
    b = {peft_key(n): p for n, p in ref.named_parameters() if p.requires_grad}
    assert a and sorted(a) == sorted(b)
    return {k: (a[k], b[k]) for k in sorted(a)}


def perturb(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], seed: int = 2, scale: float = 0.1) -> None:
    """Add the same noise to both sides, so B (VeRA: b) is no longer zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t1, t2 in pairs.values():
            noise = scale * torch.randn(t1.shape, generator=g)
            t1 += noise
            t2 += noise


def perturb_model(model: nn.Module, seed: int = 2, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p += scale * torch.randn(p.shape, generator=g)


def peft_pair(base: nn.Module, ours_cfg, peft_cfg, seed: int = 1) -> tuple[nn.Module, nn.Module]:
    """Our and peft's adapter on two copies of ``base``, both created right after ``torch.manual_seed(seed)``."""
    ours, ref = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(seed)
    lora.add_adapter(ours, ours_cfg)
    torch.manual_seed(seed)
    return ours, peft.get_peft_model(ref, peft_cfg)


LORA_VARIANTS = {
    "lora": ({}, {}),
    "rslora": ({"rslora": True}, {"use_rslora": True}),
    "dora": ({"dora": True}, {"use_dora": True}),
    "pissa": ({"init": "pissa"}, {"init_lora_weights": "pissa"}),
}


def lora_configs(variant: str, dropout: float = 0.0) -> tuple[lora.LoraConfig, peft.LoraConfig]:
    ours, theirs = LORA_VARIANTS[variant]
    return (lora.LoraConfig(r=4, alpha=8, targets=TARGETS, dropout=dropout, **ours),
            peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=dropout, **theirs))


def vera_configs() -> tuple[lora.VeraConfig, peft.VeraConfig]:
    return lora.VeraConfig(r=8, targets=TARGETS), peft.VeraConfig(r=8, target_modules=TARGETS)


# 1. Equal to peft -----------------------------------------------------------------------------------


def assert_forward_backward_equal(ours: nn.Module, ref: nn.Module, ids: torch.Tensor) -> None:
    pairs = trainable_pairs(ours, ref)
    lo, lp = ours(ids, labels=ids), ref(input_ids=ids, labels=ids)
    assert max_diff(lo.logits, lp.logits) <= EXACT
    lo.loss.backward()
    lp.loss.backward()
    for key, (t1, t2) in pairs.items():
        assert t1.grad is not None and t1.grad.abs().sum() > 0, key  # every adapter tensor gets a gradient
        assert max_diff(t1.grad, t2.grad) <= EXACT, key


@pytest.mark.parametrize("variant", list(LORA_VARIANTS))
def test_lora_variants_equal_peft(base, ids, variant):
    ours, ref = peft_pair(base, *lora_configs(variant))
    pairs = trainable_pairs(ours, ref)
    assert len(pairs) == 2 * len(TARGETS) * 2 + (2 * len(TARGETS) if variant == "dora" else 0)
    for key, (t1, t2) in pairs.items():  # same seed, same draws: A (and the rest) bit for bit
        assert torch.equal(t1, t2), key
    for path, layer in lora.adapted_layers(ours).items():  # PiSSA: both rewrote W to the residual W - s B A
        theirs = ref.base_model.model.get_submodule(path).base_layer.weight
        assert max_diff(layer.base_layer.weight, theirs) <= EXACT, path
    perturb(pairs)
    assert_forward_backward_equal(ours, ref, ids)


def test_vera_equals_peft(base, ids):
    ours, ref = peft_pair(base, *vera_configs())
    pairs = trainable_pairs(ours, ref)
    assert len(pairs) == 2 * 2 * len(TARGETS)  # b and d per layer
    for key, (t1, t2) in pairs.items():
        assert torch.equal(t1, t2), key
    # the shared frozen projections: one tensor for every layer, equal to peft's
    adapters = [layer.adapters["default"] for layer in lora.adapted_layers(ours).values()]
    assert all(a.vera_A is adapters[0].vera_A and a.vera_B is adapters[0].vera_B for a in adapters)
    assert torch.equal(adapters[0].vera_A, ref.base_model.vera_A["default"])
    assert torch.equal(adapters[0].vera_B, ref.base_model.vera_B["default"])
    perturb(pairs)
    assert_forward_backward_equal(ours, ref, ids)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_dropout_equals_peft_in_train_and_eval_mode(base, ids, variant):
    """Both libraries draw the dropout mask at the same point (base layer first, then the adapter's input),
    so with the same seed in train mode they drop the same entries; DoRA then feeds the dropped x to W too."""
    ours, ref = peft_pair(base, *lora_configs(variant, dropout=0.3))
    perturb(trainable_pairs(ours, ref))
    ours.train()
    ref.train()
    torch.manual_seed(5)
    train_ours = ours(ids).logits
    torch.manual_seed(5)
    assert max_diff(train_ours, ref(input_ids=ids).logits) <= EXACT
    ours.eval()
    ref.eval()
    eval_ours = ours(ids).logits
    assert max_diff(eval_ours, ref(input_ids=ids).logits) <= EXACT
    assert max_diff(train_ours, eval_ours) > 1e-3  # dropout did act in train mode


# 2. Injection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["self_attn.o_proj", "mlp.up_proj"], ALL_PROJ,
                                     r".*\.(q|v)_proj", r"model\.layers\.1\..*_proj", r".*mlp\.(gate|up)_proj"])
def test_targets_match_peft(base, targets):
    ours = copy.deepcopy(base)
    paths = lora.add_adapter(ours, lora.LoraConfig(r=2, targets=targets))
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules=targets))
    assert sorted(paths) == sorted(ref.base_model.targeted_module_names)
    assert sorted(lora.adapted_layers(ours)) == sorted(paths)


def test_regex_must_match_the_whole_path(base):
    """peft's rule: a string target is re.fullmatch'ed, so "q_proj" (a suffix, not the whole path) matches nothing."""
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="match no linear layer") as error:
        lora.add_adapter(model, lora.LoraConfig(r=2, targets="q_proj"))
    for name in ALL_PROJ + ["lm_head"]:  # the message lists the model's linear layer names
        assert name in str(error.value)
    with pytest.raises(ValueError, match="o_proj"):
        lora.target_layers(model, ["not_a_layer"])
    assert not lora.adapted_layers(model)
    assert lora.target_layers(model, r".*q_proj").keys() == {"model.layers.0.self_attn.q_proj",
                                                              "model.layers.1.self_attn.q_proj"}


@pytest.mark.parametrize("r", [0, 17])
def test_rank_outside_one_to_min_in_out_raises(base, r):
    with pytest.raises(ValueError, match="min\\(in, out\\) = 16"):  # k_proj is 32 -> 16
        lora.add_adapter(copy.deepcopy(base), lora.LoraConfig(r=r, targets=["k_proj"]))
    lora.add_adapter(copy.deepcopy(base), lora.LoraConfig(r=16, targets=["k_proj"]))  # the largest rank is fine


def test_failed_add_adapter_leaves_model_unchanged(base):
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="rank"):
        lora.add_adapter(model, lora.LoraConfig(r=20, targets=["q_proj", "k_proj"]))  # q: 32x32 fine, k: 32->16 not
    assert not lora.adapted_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    lora.add_adapter(model, lora.LoraConfig(r=4, targets=["q_proj", "k_proj"]))


def test_only_adapter_parameters_train_and_count_equals_peft(base):
    ours = copy.deepcopy(base)
    lora.add_adapter(ours, lora.LoraConfig(r=8, targets=ALL_PROJ))
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable and all(".adapters.default.lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * len(ALL_PROJ)
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=8, target_modules=ALL_PROJ))
    count = lora.count_parameters(ours)
    assert (count.trainable, count.total) == ref.get_nb_trainable_parameters()
    # by hand: r (in + out) per layer: q, o 32+32; k, v 32+16; gate, up 32+48; down 48+32; two layers
    assert count.trainable == 2 * 8 * (2 * 64 + 2 * 48 + 3 * 80)
    assert count.total == sum(p.numel() for p in base.parameters()) + count.trainable
    assert count.percent == pytest.approx(100 * count.trainable / count.total)


def test_decoder_lm_gets_adapters_and_trains_with_base_frozen():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                                  max_seq_len=16))
    originals = [(p, p.detach().clone()) for p in model.parameters()]
    paths = lora.add_adapter(model, lora.LoraConfig(r=4, alpha=8, targets=ALL_PROJ))
    assert sorted(paths) == sorted(f"layers.{i}.{part}.{name}" for i in range(2) for name in ALL_PROJ
                                   for part in ["attn" if name[0] in "qkvo" else "mlp"])
    assert isinstance(model.layers[0].attn.q_proj, lora.AdaptedLinear)
    assert type(model.lm_head) is nn.Linear  # not a target
    assert lora.target_layers(model, r"layers\.\d+\.attn\.(q|v)_proj").keys() == {
        "layers.0.attn.q_proj", "layers.0.attn.v_proj", "layers.1.attn.q_proj", "layers.1.attn.v_proj"}
    batch = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(4))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    for parameter, before in originals:  # every base parameter, bit for bit
        assert not parameter.requires_grad and torch.equal(parameter, before)


# 3. Merge / unmerge ---------------------------------------------------------------------------------


MERGE_CASES = {"lora": lora_configs("lora"), "dora": lora_configs("dora"), "vera": vera_configs()}


@pytest.mark.parametrize("kind", list(MERGE_CASES))
def test_merge_unmerge_and_unload(base, ids, kind):
    ours, ref = peft_pair(base, *MERGE_CASES[kind])
    perturb(trainable_pairs(ours, ref))
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.no_grad():
        adapted = ours(ids).logits
        assert max_diff(adapted, base(ids).logits) > 1e-3  # the adapter changes the output
        assert lora.merge_adapter(ours) == 0.0  # a float base merges without rounding the update away
        assert all(layer.merged == "default" for layer in lora.adapted_layers(ours).values())
        assert max_diff(ours(ids).logits, adapted) <= MERGED
        with pytest.raises(ValueError, match="cannot merge"):
            lora.merge_adapter(ours)  # already merged
        lora.unmerge_adapter(ours)
        for path, layer in lora.adapted_layers(ours).items():
            assert max_diff(layer.base_layer.weight, base_weights[f"{path}.weight"]) <= EXACT
        assert max_diff(ours(ids).logits, adapted) <= EXACT
        plain = lora.merge_and_unload(ours)
        assert not lora.adapted_layers(plain)
        assert all(type(plain.get_submodule(p)) is nn.Linear for p in lora.target_layers(plain, TARGETS))
        assert max_diff(plain(ids).logits, adapted) <= MERGED
        reference = ref.merge_and_unload()
        ours_state, ref_state = plain.state_dict(), reference.state_dict()
        assert list(ours_state) == list(ref_state)  # the same plain Llama, key for key
        assert max(max_diff(ours_state[k], ref_state[k]) for k in ours_state) <= EXACT


def test_pissa_unload_gives_back_the_original_weights(base, ids):
    """PiSSA moves the top-r part of W into B A and leaves the residual: the model is unchanged at init."""
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    lora.add_adapter(model, lora.LoraConfig(r=4, alpha=8, targets=TARGETS, init="pissa"))
    with torch.no_grad():
        assert max_diff(model(ids).logits, base(ids).logits) <= MERGED
        layer = model.model.layers[0].self_attn.q_proj
        assert max_diff(layer.base_layer.weight, base.model.layers[0].self_attn.q_proj.weight) > 1e-2  # residual
        lora.merge_and_unload(model)
        assert max_diff(model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
                        ) <= MERGED


# 4. PEFT format -------------------------------------------------------------------------------------


SAVE_CASES = {
    "lora": lora.LoraConfig(r=4, alpha=8, targets=TARGETS),
    "rslora": lora.LoraConfig(r=4, alpha=8, targets=r".*\.(q|k)_proj", rslora=True),
    "dora": lora.LoraConfig(r=4, alpha=8, targets=TARGETS, dora=True),
    "vera": lora.VeraConfig(r=8, targets=TARGETS, projection_seed=7),
}


@pytest.mark.parametrize("kind", list(SAVE_CASES))
def test_ours_saved_loads_in_peft(base, ids, tmp_path, kind):
    config = SAVE_CASES[kind]
    ours = copy.deepcopy(base)
    torch.manual_seed(1)
    lora.add_adapter(ours, config)
    perturb_model(ours)
    lora.save_adapter(ours, tmp_path, config, base_model="tiny-llama")
    parsed = peft.PeftConfig.from_pretrained(str(tmp_path))
    assert parsed.peft_type == (peft.PeftType.VERA if kind == "vera" else peft.PeftType.LORA)
    assert parsed.r == config.r and parsed.base_model_name_or_path == "tiny-llama"
    assert parsed.target_modules == (config.targets if isinstance(config.targets, str) else set(config.targets))
    if kind != "vera":
        assert (parsed.lora_alpha, parsed.use_rslora, parsed.use_dora) == (config.alpha, config.rslora, config.dora)
    ref = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    with torch.no_grad():
        expected = ours(ids).logits
        assert max_diff(expected, base(ids).logits) > 1e-3
        assert max_diff(ref(input_ids=ids).logits, expected) <= EXACT
    # and back: our loader reads what we wrote
    again = copy.deepcopy(base)
    loaded = lora.load_adapter(again, tmp_path, base_model="tiny-llama")
    assert type(loaded) is type(config) and loaded.r == config.r
    assert (set(loaded.targets) == set(config.targets)) if isinstance(config.targets, list) else (
        loaded.targets == config.targets)
    with torch.no_grad():
        assert max_diff(again(ids).logits, expected) <= EXACT


PEFT_SAVED = {
    "lora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS),
    "rslora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_rslora=True),
    "dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True),
    "vera": lambda: peft.VeraConfig(r=8, target_modules=TARGETS, projection_prng_key=3),
    # without the projections in the file our loader must rebuild peft's from the seed alone
    "vera-seed-only": lambda: peft.VeraConfig(r=8, target_modules=TARGETS, projection_prng_key=3,
                                              save_projection=False),
}


@pytest.mark.filterwarnings("ignore:Specified to not save vera_A:UserWarning")
@pytest.mark.parametrize("kind", list(PEFT_SAVED))
def test_peft_saved_loads_in_ours(base, ids, tmp_path, kind):
    peft_config = PEFT_SAVED[kind]()
    ref = peft.get_peft_model(copy.deepcopy(base), peft_config)
    perturb_model(ref)
    ref.save_pretrained(tmp_path)
    ours = copy.deepcopy(base)
    config = lora.load_adapter(ours, tmp_path)
    assert sorted(lora.adapted_layers(ours)) == sorted(ref.base_model.targeted_module_names)
    assert lora.count_parameters(ours).trainable == ref.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        assert max_diff(expected, base(ids).logits) > 1e-3
        assert max_diff(ours(ids).logits, expected) <= EXACT
    assert config.r == peft_config.r


def test_load_into_a_model_of_other_shapes_raises_before_changing_it(base, tmp_path):
    model = copy.deepcopy(base)
    lora.add_adapter(model, SAVE_CASES["lora"])
    lora.save_adapter(model, tmp_path, SAVE_CASES["lora"])
    wider = tiny_llama(hidden_size=48)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        lora.load_adapter(wider, tmp_path)
    assert not lora.adapted_layers(wider)
    assert not any(isinstance(m, lora.AdaptedLinear) for m in wider.modules())
    assert all(p.requires_grad for p in wider.parameters())  # not frozen either
    assert all(torch.equal(v, before[k]) for k, v in wider.state_dict().items())


def test_base_model_name_mismatch_raises(base, tmp_path):
    model = copy.deepcopy(base)
    lora.add_adapter(model, SAVE_CASES["lora"])
    lora.save_adapter(model, tmp_path, SAVE_CASES["lora"], base_model="org/tiny-a")
    other = copy.deepcopy(base)
    with pytest.raises(ValueError, match="org/tiny-a"):
        lora.load_adapter(other, tmp_path, base_model="org/tiny-b")
    assert not lora.adapted_layers(other)
    lora.load_adapter(other, tmp_path, base_model="org/tiny-a")


def test_saving_a_pissa_adapter_raises(base, tmp_path):
    model = copy.deepcopy(base)
    config = lora.LoraConfig(r=4, targets=TARGETS, init="pissa")
    lora.add_adapter(model, config)
    with pytest.raises(ValueError, match="PiSSA"):
        lora.save_adapter(model, tmp_path, config)


# 5. Several adapters --------------------------------------------------------------------------------


def test_switching_between_two_adapters(base, ids):
    config_a = lora.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"])
    config_b = lora.LoraConfig(r=2, alpha=4, targets=["q_proj", "k_proj", "down_proj"], dora=True)
    both = copy.deepcopy(base)
    lora.add_adapter(both, config_a, "a")
    lora.add_adapter(both, config_b, "b")
    assert lora.adapter_names(both) == ["a", "b"]
    perturb_model(both)  # only b is trainable now
    lora.set_active_adapter(both, "a")
    perturb_model(both, seed=3)
    singles = {}
    for name, config in [("a", config_a), ("b", config_b)]:
        single = copy.deepcopy(base)
        lora.add_adapter(single, config, name)
        missing, unexpected = single.load_state_dict(both.state_dict(), strict=False)
        # keys of layers only the other adapter wraps differ (`.base_layer.weight`): equal base weights either way
        assert all(".adapters." not in k for k in missing)
        assert any(f".adapters.{name}." in k for k in single.state_dict())
        singles[name] = single
    with torch.no_grad():
        outputs = {}
        for name in ["a", "b", None, "a"]:
            lora.set_active_adapter(both, name)
            trainable = {n for n, p in both.named_parameters() if p.requires_grad}
            assert all(f".adapters.{name}." in n for n in trainable) and (name is None) == (not trainable)
            outputs[name] = both(ids).logits
            expected = singles[name](ids).logits if name else base(ids).logits
            assert torch.equal(outputs[name], expected), name
        assert min(max_diff(outputs["a"], outputs["b"]), max_diff(outputs["a"], outputs[None])) > 1e-3
        with pytest.raises(ValueError, match="no adapter named"):
            lora.set_active_adapter(both, "c")
        with pytest.raises(ValueError, match="already in this model"):
            lora.add_adapter(both, config_a, "a")
        lora.set_active_adapter(both, "b")
        lora.merge_adapter(both)
        with pytest.raises(ValueError, match="unmerge"):
            lora.set_active_adapter(both, "a")
        lora.unmerge_adapter(both)
        lora.set_active_adapter(both, "a")
        assert max_diff(both(ids).logits, outputs["a"]) <= EXACT


# 6. LoRA+ -------------------------------------------------------------------------------------------


def group_signature(model: nn.Module, groups: list[dict], key) -> list[tuple]:
    names = {id(p): key(n) for n, p in model.named_parameters()}
    return sorted((tuple(sorted((names[id(p)], tuple(p.shape)) for p in g["params"])), g["lr"], g["weight_decay"])
                  for g in groups if g["params"])


@pytest.mark.parametrize("variant", ["lora", "dora"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_loraplus_groups_equal_peft(base, variant, weight_decay):
    ours, ref = peft_pair(base, *lora_configs(variant))
    groups = loraplus_param_groups(ours, lr=1e-3, ratio=16, weight_decay=weight_decay)
    optimizer = create_loraplus_optimizer(model=ref, optimizer_cls=torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16,
                                          loraplus_weight_decay=weight_decay)
    mine = group_signature(ours, groups, ours_key)
    assert mine == group_signature(ref, optimizer.param_groups, peft_key)
    fast = next(params for params, lr, _ in mine if lr == pytest.approx(16e-3))
    assert {name.rsplit(".", 1)[1] for name, _ in fast} == (
        {"lora_B", "lora_magnitude_vector"} if variant == "dora" else {"lora_B"})
    torch.optim.AdamW(groups)  # usable as they are


def test_loraplus_ratio_below_one_raises(base):
    model = copy.deepcopy(base)
    lora.add_adapter(model, lora.LoraConfig(r=2, targets=["q_proj"]))
    with pytest.raises(ValueError, match="ratio"):
        loraplus_param_groups(model, lr=1e-3, ratio=0.5)


# 7. Arithmetic --------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_peft(density):
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(6, 10, generator=g) for _ in range(3)]
    weights = [1.0, 0.5, -0.7]
    ours = ties(deltas, weights, density)
    with pytest.warns(UserWarning, match="density") if density >= 1 else contextlib.nullcontext():
        theirs = peft_ties(task_tensors=deltas, weights=torch.tensor(weights), density=density)
    assert torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="density"):
        ties(deltas, weights, 0.0)


def test_ties_on_one_dimensional_task_vectors_equals_peft():
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(10, generator=g) for _ in range(2)]
    ours = ties(deltas, [1.0, 0.5], 0.5)
    assert torch.equal(ours, peft_ties(task_tensors=deltas, weights=torch.tensor([1.0, 0.5]), density=0.5))


def two_adapters(base: nn.Module, same: bool = False, targets: list[str] = TARGETS) -> nn.Module:
    """Adapters "a" and "b" (r=4, alpha=8) on ``targets``, both perturbed; with ``same`` b is a copy of a."""
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    lora.add_adapter(model, lora.LoraConfig(r=4, alpha=8, targets=targets), "a")
    lora.add_adapter(model, lora.LoraConfig(r=4, alpha=8, targets=targets), "b")
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for layer in lora.adapted_layers(model).values():
            for name in ["a", "b"]:
                adapter = layer.adapters[name]
                adapter.lora_B += 0.1 * torch.randn(adapter.lora_B.shape, generator=g)
            if same:
                layer.adapters["b"].load_state_dict(layer.adapters["a"].state_dict())
    return model


def manual_delta(model: nn.Module, path: str, name: str) -> torch.Tensor:
    adapter = model.get_submodule(path).adapters[name]
    return (8 / 4) * adapter.lora_B @ adapter.lora_A  # alpha / r, computed here, not by the library


def test_linear_combination_equals_summed_weights(base, ids):
    model = two_adapters(base)
    manual = copy.deepcopy(base)
    with torch.no_grad():
        for path in lora.adapted_layers(model):
            weight = manual.get_submodule(path).weight
            weight += manual_delta(model, path, "a") + manual_delta(model, path, "b")
    report = combine_adapters(model, {"a": 1.0, "b": 1.0}, "ab", method="linear")
    assert (report.adapter, report.rank) == ("ab", 8)
    assert report.kept == pytest.approx(1.0, abs=1e-5)  # rank 4 + 4 holds the sum exactly
    assert lora.adapter_names(model) == ["a", "b", "ab"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in dict(model.named_parameters()) if ".adapters.ab." in n}
    with torch.no_grad():
        assert max_diff(model(ids).logits, manual(ids).logits) <= MERGED
        assert max_diff(manual(ids).logits, base(ids).logits) > 1e-3


def test_negative_weight_subtracts(base, ids):
    model = two_adapters(base, same=True)
    report = combine_adapters(model, {"a": 1.0, "b": -1.0}, "zero")
    with torch.no_grad():
        assert max_diff(model(ids).logits, base(ids).logits) <= MERGED
        lora.set_active_adapter(model, "a")
        assert max_diff(model(ids).logits, base(ids).logits) > 1e-3
    assert report.kept == 1.0


def test_low_rank_combination_reports_what_it_kept(base):
    model = two_adapters(base)
    report = combine_adapters(model, {"a": 1.0, "b": 0.5}, "ab2", rank=2)
    assert report.rank == 2 and 0.3 < report.kept < 0.999


def test_ties_combination_uses_ties_per_layer(base, ids):
    # square 32 x 32 layers and rank 32: the sparse TIES update is full-rank, so only a full rank stores it exactly
    model = two_adapters(base, targets=["q_proj", "o_proj"])
    manual = copy.deepcopy(base)
    with torch.no_grad():
        for path in lora.adapted_layers(model):
            deltas = [manual_delta(model, path, n) for n in ["a", "b"]]
            manual.get_submodule(path).weight += peft_ties(task_tensors=deltas, weights=torch.tensor([1.0, 0.7]),
                                                           density=0.5)
    combine_adapters(model, {"a": 1.0, "b": 0.7}, "t", method="ties", density=0.5, rank=32)
    with torch.no_grad():
        assert max_diff(model(ids).logits, manual(ids).logits) <= MERGED


def test_combine_rejects_bad_requests(base):
    model = two_adapters(base)
    with pytest.raises(ValueError, match="unknown combination"):
        combine_adapters(model, {"a": 1.0, "b": 1.0}, "x", method="svd")
    with pytest.raises(ValueError, match="cannot combine"):
        combine_adapters(model, {"a": 1.0, "c": 1.0}, "x")
    with pytest.raises(ValueError, match="cannot combine"):
        combine_adapters(model, {}, "x")
    lora.add_adapter(model, lora.LoraConfig(r=2, targets=["q_proj"]), "q_only")
    with pytest.raises(ValueError, match="same layers"):
        combine_adapters(model, {"a": 1.0, "q_only": 1.0}, "x")
    assert lora.adapter_names(model) == ["a", "b", "q_only"]


def test_combining_a_dora_adapter_needs_a_rank_and_full_rank_reproduces_it(base, ids):
    model = copy.deepcopy(base)
    square = ["q_proj", "o_proj"]  # 32 x 32: rank 32 holds any update exactly
    lora.add_adapter(model, lora.LoraConfig(r=4, alpha=8, targets=square, dora=True), "a")
    perturb_model(model)
    with pytest.raises(ValueError, match="not low-rank"):
        combine_adapters(model, {"a": 1.0}, "a2")
    with torch.no_grad():
        lora.set_active_adapter(model, "a")
        expected = model(ids).logits
        report = combine_adapters(model, {"a": 1.0}, "a2", rank=32)
        assert max_diff(model(ids).logits, expected) <= MERGED
    assert report.kept == pytest.approx(1.0, abs=1e-6)


# 8. Memory ------------------------------------------------------------------------------------------


def step_memory(model: nn.Module, length: int):
    batch = torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(5))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    return measure_step(model, optimizer, lambda m: m(batch, labels=batch).loss)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_measured_step_matches_the_formula(base, method):
    model = copy.deepcopy(base)
    if method == "lora":
        lora.add_adapter(model, lora.LoraConfig(r=4, targets=["q_proj", "v_proj"]))
    count = lora.count_parameters(model)
    assert (count.trainable == count.total) == (method == "full")
    memory = step_memory(model, 9)
    assert memory.gradients == 4 * count.trainable
    assert memory.optimizer == 8 * count.trainable  # AdamW: two fp32 moments
    assert memory.weights >= 4 * count.total
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    params_only = memory.weights - buffers
    assert params_only == 4 * count.total
    assert training_state_bytes(count.total, count.trainable, weight_bytes=4) == (
        params_only + memory.gradients + memory.optimizer)
    assert memory.activations > 0
    assert memory.total == memory.weights + memory.gradients + memory.optimizer + memory.activations
    assert step_memory(copy.deepcopy(model), 4).activations < memory.activations


def test_llama2_sizes_and_paper_memory():
    published = {"Llama-2-7B": 6_738_415_616, "Llama-2-13B": 13_015_864_320, "Llama-2-70B": 68_976_648_192}
    assert {name: shape.n_params for name, shape in LLAMA2.items()} == published
    # peft prints "trainable params: 39,976,960" for Llama-2-7B with r=16 on all seven projections
    assert LLAMA2["Llama-2-7B"].lora_params(16, tuple(ALL_PROJ)) == 39_976_960
    for shape in LLAMA2.values():
        memory = paper_memory(shape)
        assert memory["full fine-tuning"] > memory["LoRA"] > memory["QLoRA"] > 0
        assert memory["full fine-tuning"] == pytest.approx(16 * shape.n_params / 1e9)  # 2 + 2 + 4 + 8 bytes
    assert training_state_bytes(10, 2, weight_bytes=2, master_bytes=4) == 10 * 2 + 2 * (2 + 4 + 8)
