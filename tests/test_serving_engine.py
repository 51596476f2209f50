"""The serving engine: paged cache, attention over it, scheduler and engine against the references.

Every equivalence is to a reference computed another way: attention over a contiguous cache (SDPA),
the model's own forward pass, and ``transformers.generate`` on the same weights.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmbook.chain.pretrained import load_pretrained, smollm2_dir
from llmbook.serving.engine import Engine, EngineConfig
from llmbook.serving.kv_cache import BlockAllocator, OutOfBlocks, block_waste, prefix_hashes, slot_indices
from llmbook.serving.model_runner import Chunk, PagedModelRunner
from llmbook.serving.paged_attention import contiguous_attention, paged_attention
from llmbook.serving.params import SamplingParams


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_dir())


def tiny_llama(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=2, bos_token_id=1, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(len(tokenizer))


def hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


PROMPTS = [list(range(5, 5 + n)) for n in (3, 17, 9, 30, 1)]


# ----------------------------------------------------------------------------------- paged attention


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_paged_attention_equals_contiguous(block_size):
    gen = torch.Generator().manual_seed(block_size)
    heads, kv_heads, dim, num_blocks = 6, 2, 8, 40
    keys = torch.randn(num_blocks * block_size, kv_heads, dim, generator=gen)
    values = torch.randn_like(keys)
    # three sequences: a decode (1 query), a prefill from 0, a chunk in the middle of a prompt
    spans = [(12, 1), (0, 7), (5, 6)]  # (tokens already cached, new queries)
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = []
    for start, length in spans:
        need = -(-(start + length) // block_size)
        tables.append([perm.pop() for _ in range(need)])
    width = max(map(len, tables))
    t_q = max(length for _, length in spans)
    q = torch.randn(len(spans), heads, t_q, dim, generator=gen)
    out = paged_attention(q, keys, values, torch.tensor([t + [0] * (width - len(t)) for t in tables]),
                          torch.tensor([s for s, _ in spans]), torch.tensor([n for _, n in spans]),
                          torch.tensor([s + n for s, n in spans]), block_size=block_size)
    for b, ((start, length), table) in enumerate(zip(spans, tables, strict=True)):
        slots = slot_indices(table, 0, start + length, block_size)
        k = keys[slots].transpose(0, 1)[None]  # (1, H_kv, T, D)
        v = values[slots].transpose(0, 1)[None]
        ref = contiguous_attention(q[b:b + 1, :, :length], k, v, start)
        assert (out[b:b + 1, :, :length] - ref).abs().max() < 1e-6


# ----------------------------------------------------------------------------------- block allocator


def test_allocator_counts_references_and_reuses_freed_cache_last():
    alloc = BlockAllocator(3)
    a, b = alloc.allocate(), alloc.allocate()
    hashes = prefix_hashes([1, 2, 3, 4], 2)
    alloc.register(a, hashes[0])
    alloc.register(b, hashes[1])
    assert alloc.lookup(hashes) == [a, b]
    alloc.share(a)
    alloc.release(a)
    assert alloc.ref_counts[a] == 1
    alloc.release(a)
    alloc.release(b)
    assert alloc.num_free == 3 and alloc.lookup(hashes) == [a, b]  # freed but still findable
    fresh = alloc.allocate()
    assert fresh not in (a, b)  # the never-cached block goes first
    assert alloc.allocate() == a  # then the least recently freed cached one, evicted
    assert alloc.lookup(hashes) == []  # the chain is broken at its first block
    alloc.allocate()
    with pytest.raises(OutOfBlocks):
        alloc.allocate()
    with pytest.raises(RuntimeError, match="released more often"):
        BlockAllocator(1).release(0)


def test_prefix_hashes_name_whole_prefixes():
    assert len(prefix_hashes(list(range(9)), 4)) == 2
    assert prefix_hashes([1, 2, 3, 4], 2)[1] != prefix_hashes([9, 9, 3, 4], 2)[1]  # same block, other parent
    assert prefix_hashes([1, 2, 3, 4, 5], 2) == prefix_hashes([1, 2, 3, 4, 6], 2)


# ----------------------------------------------------------------------------------- model runner


def test_runner_logits_equal_the_model_in_any_chunking(model):
    runner = PagedModelRunner(model, num_blocks=30, block_size=4)
    a, b = PROMPTS[3], PROMPTS[1]
    with torch.no_grad():
        ref_a, ref_b = model(torch.tensor([a])).logits[0], model(torch.tensor([b])).logits[0]
    first = runner.forward([Chunk(token_ids=a[:13], start=0, block_table=[9, 2, 17, 4], all_logits=True),
                            Chunk(token_ids=b, start=0, block_table=[1, 3, 5, 6, 8])])
    second = runner.forward([Chunk(token_ids=a[13:], start=13, block_table=[9, 2, 17, 4, 11, 12, 13, 14],
                                   all_logits=True)])
    assert (first[0] - ref_a[:13]).abs().max() < 1e-5
    assert (first[1] - ref_b[-1]).abs().max() < 1e-5
    assert (second[0] - ref_a[13:]).abs().max() < 1e-5


# ----------------------------------------------------------------------------------- engine


def run_greedy(engine: Engine, prompts, max_tokens: int) -> list[list[int]]:
    gens = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    return [g.samples[0].token_ids for g in gens]


@pytest.mark.parametrize("config", [
    EngineConfig(block_size=4, num_blocks=64),  # everything fits: one batch
    EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=8),  # prompts prefilled in chunks of <= 8
    EngineConfig(block_size=4, num_blocks=14, max_num_seqs=8),  # too few blocks: preemption and recompute
    EngineConfig(block_size=2, num_blocks=64, max_num_seqs=2),  # at most two sequences at a time
], ids=["one-batch", "chunked-prefill", "preemption", "two-at-a-time"])
def test_engine_greedy_equals_transformers_generate(model, tokenizer, config):
    engine = Engine(model, tokenizer, config)
    got = run_greedy(engine, PROMPTS, 12)
    assert got == [hf_greedy(model, p, 12) for p in PROMPTS]
    if config.num_blocks == 14:
        assert engine.stats().preemptions > 0
    assert engine.allocator.num_free == engine.allocator.num_blocks  # every block came back


def test_prefix_caching_reuses_a_shared_system_prompt(model, tokenizer):
    system = list(range(40, 72))  # 32 tokens = 8 full blocks of 4
    prompts = [system + [7, 8, 9], system + [10, 11]]
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64))
    first = run_greedy(engine, prompts[:1], 6)
    computed = engine.stats().computed_tokens
    second = run_greedy(engine, prompts[1:], 6)
    assert engine.stats().prefix_hit_tokens == 32
    assert engine.stats().computed_tokens - computed == 2 + 6 - 1  # the suffix and the decodes only
    assert first + second == [hf_greedy(model, p, 6) for p in prompts]


def test_seeded_samples_do_not_depend_on_the_batch(model, tokenizer):
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)
    alone = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64)).generate([PROMPTS[1]], params)
    crowd = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64)).generate(
        PROMPTS, [SamplingParams(max_tokens=7, temperature=1.3, seed=1), params, *[params] * 3])
    assert alone[0].samples[0].token_ids == crowd[1].samples[0].token_ids
    other_seed = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64)).generate(
        [PROMPTS[1]], SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=8, ignore_eos=True))
    assert other_seed[0].samples[0].token_ids != alone[0].samples[0].token_ids


def test_parallel_samples_share_the_prompt_and_copy_on_write(model, tokenizer):
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64))
    copies = []
    original = engine.scheduler.copy_block
    engine.scheduler.copy_block = lambda src, dst: (copies.append((src, dst)), original(src, dst))
    prompt = PROMPTS[2]  # 9 tokens: the third block is partly filled when the samples fork
    [gen] = engine.generate([prompt], SamplingParams(n=3, max_tokens=8, temperature=1.0, seed=3, ignore_eos=True))
    assert len(copies) == 2  # two of the three samples copy the shared last block before writing
    samples = [s.token_ids for s in gen.samples]
    assert len(set(map(tuple, samples))) > 1  # different seeds, different samples
    single = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64)).generate(
        [prompt], SamplingParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True))
    assert single[0].samples[0].token_ids == samples[0]  # sample 0 uses the request's seed
    [greedy] = engine.generate([prompt], SamplingParams(n=2, max_tokens=8, temperature=0, ignore_eos=True))
    assert greedy.samples[0].token_ids == greedy.samples[1].token_ids == hf_greedy(model, prompt, 8)


def test_stop_strings_eos_and_lengths(model, tokenizer):
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64))
    [free] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    text = free.samples[0].text
    stop = text[4:7]
    [cut] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=12, temperature=0, stop=(stop,)))
    assert cut.samples[0].finish_reason == "stop" and cut.samples[0].text == text[:text.find(stop)]
    assert free.samples[0].finish_reason == "length" and len(free.samples[0].token_ids) == 12
    eos = free.samples[0].token_ids[3]  # pretend the 4th greedy token ends the sequence
    engine.eos = {eos}
    [ended] = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=12, temperature=0))
    assert ended.samples[0].finish_reason == "stop" and ended.samples[0].token_ids == free.samples[0].token_ids[:4]


def test_streamed_deltas_add_up_to_the_text(model, tokenizer):
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64))
    engine.add_request("r", PROMPTS[3], SamplingParams(max_tokens=15, temperature=0, ignore_eos=True, stop=("zzz",)))
    deltas, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.delta)
            last = out
    assert last.finished and "".join(deltas) == last.text and last.completion_tokens == 15


def test_abort_returns_blocks_and_bad_requests_are_refused(model, tokenizer):
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=16))
    engine.add_request("a", PROMPTS[3], SamplingParams(max_tokens=20, temperature=0))
    engine.step()
    assert engine.allocator.num_free < 16
    assert engine.abort("a") and not engine.has_unfinished()
    assert engine.allocator.num_free == 16
    with pytest.raises(ValueError, match="max_model_len of 64"):
        engine.add_request("b", list(range(60)), SamplingParams(max_tokens=5))
    with pytest.raises(ValueError, match="top_p"):
        engine.add_request("c", [1, 2], SamplingParams(top_p=0))
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("d", [], SamplingParams())
    engine.add_request("e", [1, 2], SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("e", [1, 2], SamplingParams())
    with pytest.raises(ValueError, match="max_num_seqs"):
        Engine(model, tokenizer, EngineConfig(max_num_seqs=0))


def test_kv_usage_counts_shared_blocks_once(model, tokenizer):
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64))
    engine.add_request("a", PROMPTS[2], SamplingParams(n=2, max_tokens=4, temperature=0))  # 9 tokens
    engine.step()  # prefill + first tokens: two sequences of 10 tokens, 9 computed, sharing 3 blocks
    assert engine.kv_usage() == (12, 9)


def test_block_waste_by_hand_and_from_the_trace(model, tokenizer):
    assert block_waste([5, 8, 1], 4) == 1 - 14 / (8 + 8 + 4)
    assert block_waste([5, 8, 1], 1) == 0.0 and block_waste([], 16) == 0.0
    with pytest.raises(ValueError, match="block_size"):
        block_waste([3], 0)
    assert block_waste(iter([5, 8, 1]), 4) == block_waste([5, 8, 1], 4)  # any iterable, read once
    with pytest.raises(ValueError, match="counts >= 0"):
        block_waste([3, -1], 4)
    # with nothing shared (these prompts share prefixes), the trace's per-sequence counts give the
    # engine's own slot accounting
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64, trace=True, prefix_caching=False))
    run_greedy(engine, PROMPTS, 5)
    busy = [s for s in engine.trace if s.slots_allocated]
    allocated, filled = sum(s.slots_allocated for s in busy), sum(s.slots_filled for s in busy)
    assert block_waste([n for s in busy for n in s.cached_tokens], 4) == pytest.approx(1 - filled / allocated)


def test_engine_on_smollm2_equals_generate_on_chat_prompts():
    model, tok = load_pretrained()
    chats = ["What is the capital of France?", "Write a haiku about the sea.", "Name three prime numbers."]
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
               for c in chats]
    engine = Engine(model, tok, EngineConfig(block_size=16, num_blocks=32))
    gens = engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0))
    for prompt, gen in zip(prompts, gens, strict=True):
        ids = tok(prompt, add_special_tokens=False).input_ids
        ref = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
        assert gen.samples[0].token_ids == ref
    assert engine.stats().prefix_hit_tokens >= 16  # the chat template's system prompt is shared


@pytest.mark.parametrize("family", ["Qwen2", "Qwen3", "Mistral"])
def test_engine_serves_other_llama_family_models(tokenizer, family):
    config_class = getattr(transformers, f"{family}Config")
    model_class = getattr(transformers, f"{family}ForCausalLM")
    torch.manual_seed(1)
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    model = model_class(config).eval()  # Qwen2: q/k/v biases; Qwen3: per-head q/k norms
    engine = Engine(model, tokenizer, EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=16))
    assert run_greedy(engine, PROMPTS[:3], 8) == [hf_greedy(model, p, 8) for p in PROMPTS[:3]]
