"""llmbook.evaluation.tasks and llmbook.training.finetune: the two tasks, reply-only labels, the loss, accuracy.

The model is a tiny seeded Llama (2 blocks, width 32) with SmolLM2's 49,152-token vocabulary and chat
template. The tokenizer comes from the converted SmolLM2 directory when the artifact cache already holds
it, else straight from the GGUF file (~10 s): these tests never start the ~40 s conversion, which
tests/test_pretrained_loader.py owns.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from llmbook.data.corpora import load_documents
from llmbook.evaluation.tasks import NOVELS, TaskExample, addition_task, novel_task
from llmbook.training.finetune import (
    IGNORE,
    Encoded,
    batches,
    collate,
    encode_examples,
    evaluate_replies,
    finetune,
    reply_loss,
)

EXACT = 1e-6  # the same fp32 operations, in a different order at most


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return copy.deepcopy(smollm2_tokenizer)  # this module's own copy: a test may change it


def tiny_llama(tokenizer, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **overrides)
    return LlamaForCausalLM(config).eval()


def prompt_length(tokenizer, prompt: str) -> int:
    """Tokens of the rendered user turn plus the assistant header, rendered by transformers itself."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return len(rendered["input_ids"])


def reference(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over every labelled position from the full logits, and 'every reply token is the argmax'."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    hit = (logits.argmax(-1) == targets) | (targets == IGNORE)
    return loss, hit.all(dim=1)


# --- tasks -----------------------------------------------------------------------------------------------

ADDITION = re.compile(r"What is (\d+) \+ (\d+)\? Reply with the number only\.")


def pairs(examples: list[TaskExample]) -> list[tuple[int, int]]:
    out = []
    for example in examples:
        match = ADDITION.fullmatch(example.prompt)
        assert match is not None, example.prompt
        a, b = int(match[1]), int(match[2])
        assert example.answer == str(a + b)
        out.append((a, b))
    return out


def test_addition_sizes_disjoint_pairs_and_correct_sums() -> None:
    splits = addition_task(50, 10, 20, seed=3)
    assert splits.name == "addition"
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (50, 10, 20)
    train, dev, test = pairs(splits.train), pairs(splits.dev), pairs(splits.test)
    assert all(100 <= x <= 999 for pair in train + dev + test for x in pair)  # digits=3
    assert len(set(train + dev + test)) == 80  # no pair twice, within or across splits
    two = pairs(addition_task(3, 1, 1, digits=2).train)
    assert all(10 <= x <= 99 for pair in two for x in pair)


def test_addition_seeded() -> None:
    assert addition_task(20, 5, 5, seed=1) == addition_task(20, 5, 5, seed=1)
    other = addition_task(20, 5, 5, seed=2)
    assert other.train != addition_task(20, 5, 5, seed=1).train


def test_addition_too_many_and_too_few() -> None:
    assert len(pairs(addition_task(79, 1, 1, digits=1).train)) == 79  # all 81 one-digit pairs
    with pytest.raises(ValueError, match="81"):
        addition_task(80, 1, 1, digits=1)
    for sizes in ((0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 5, 5)):
        with pytest.raises(ValueError):
            addition_task(*sizes)


@pytest.fixture(scope="module")
def novel_splits():
    return novel_task(3000, 300, 1000, seed=0)


def chapters_by_novel() -> list[tuple[str, str]]:
    """(novel, whitespace-normalised chapter text) for every chapter of the four novels."""
    out = []
    for corpus in ("austen", "moby_dick"):
        for doc in load_documents(corpus):
            title = doc["meta"]["title"]
            name = "Moby Dick" if title.startswith("Moby Dick") else title
            if name in NOVELS:
                out.append((name, " ".join(doc["text"].split())))
    return out


def test_novel_splits_are_by_chapter(novel_splits) -> None:
    splits = novel_splits
    assert splits.name == "novel"
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (3000, 300, 1000)
    options = ", ".join(NOVELS)
    passages = {}
    for split in ("train", "dev", "test"):
        examples = getattr(splits, split)
        assert all(e.answer in NOVELS for e in examples)
        head = f"Which novel is this passage from ({options})?\n\n"
        assert all(e.prompt.startswith(head) for e in examples)
        passages[split] = [(e.prompt[len(head):], e.answer) for e in examples]
        assert len({p for p, _ in passages[split]}) == len(examples)  # no passage twice in a split
    assert {e.answer for e in splits.train} == set(NOVELS)
    assert {e.answer for e in splits.test} == set(NOVELS)
    texts = {split: {p for p, _ in passages[split]} for split in passages}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]

    # Which chapter each passage comes from, re-derived from the corpus: index every 6-word run.
    chapters = chapters_by_novel()
    index: dict[tuple[str, ...], set[int]] = {}
    for c, (_, text) in enumerate(chapters):
        words = text.split()
        for i in range(len(words) - 5):
            index.setdefault(tuple(words[i:i + 6]), set()).add(c)
    used = {}
    for split, items in passages.items():
        used[split] = set()
        for passage, answer in items:
            assert len(passage) >= 199  # passage_chars counts a space after the last word
            found = {c for c in index.get(tuple(passage.split()[:6]), ()) if passage in chapters[c][1]}
            assert len(found) == 1, passage  # a passage comes from exactly one chapter
            (c,) = found
            assert chapters[c][0] == answer  # labelled with its chapter's novel
            used[split].add(c)
    assert not used["train"] & used["test"], "a test passage comes from a training chapter"
    assert not used["train"] & used["dev"] and not used["dev"] & used["test"]


def test_novel_seeded_and_limits(novel_splits) -> None:
    assert novel_task(3000, 300, 1000, seed=0) == novel_splits
    other = novel_task(3000, 300, 1000, seed=1)
    assert other.test != novel_splits.test
    with pytest.raises(ValueError, match="test passages"):
        novel_task(1, 1, 10**6)
    for sizes in ((0, 1, 1), (1, 0, 1), (1, 1, 0)):
        with pytest.raises(ValueError):
            novel_task(*sizes)


# --- encode_examples ---------------------------------------------------------------------------------------

def test_encode_labels_cover_exactly_the_reply(tokenizer) -> None:
    examples = [TaskExample(prompt="What is 347 + 589?", answer="936"),
                TaskExample(prompt="Which novel?\n\nCall me Ishmael.", answer="Moby Dick")]
    for example, enc in zip(examples, encode_examples(tokenizer, examples, max_len=256), strict=True):
        n = prompt_length(tokenizer, example.prompt)
        assert len(enc.labels) == len(enc.input_ids) > n
        assert enc.labels[:n] == [IGNORE] * n
        assert enc.labels[n:] == enc.input_ids[n:]  # no IGNORE in the reply
        assert tokenizer.decode(enc.input_ids[n:]) == example.answer + tokenizer.eos_token
        assert enc.input_ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
        # SmolLM2's template closes every turn with "<|im_end|>\n": the full conversation rendered by
        # transformers is our example plus one trailing "\n" token (198), which the reply must not teach.
        messages = [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.answer}]
        full = tokenizer.apply_chat_template(messages)["input_ids"]
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        assert newline == [198]
        assert full == enc.input_ids + newline


def test_encode_system_turn(tokenizer) -> None:
    example = TaskExample(prompt="What is 1 + 1?", answer="2")
    (default,) = encode_examples(tokenizer, [example], max_len=256)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(default.input_ids)  # the template's
    (own,) = encode_examples(tokenizer, [example], max_len=256, system="Answer in digits.")
    text = tokenizer.decode(own.input_ids)
    assert text.startswith("<|im_start|>system\nAnswer in digits.<|im_end|>\n<|im_start|>user\n")
    assert "SmolLM" not in text
    messages = [{"role": "system", "content": "Answer in digits."}, {"role": "user", "content": example.prompt},
                {"role": "assistant", "content": "2"}]
    assert tokenizer.apply_chat_template(messages)["input_ids"] == own.input_ids + [198]
    n = len(tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True)["input_ids"])
    assert own.labels == [IGNORE] * n + own.input_ids[n:]


def test_encode_rejects_long_examples_and_plain_tokenizers(tokenizer) -> None:
    example = TaskExample(prompt="What is 347 + 589?", answer="936")
    (enc,) = encode_examples(tokenizer, [example], max_len=256)
    assert encode_examples(tokenizer, [example], max_len=len(enc.input_ids)) == [enc]  # exactly max_len fits
    with pytest.raises(ValueError, match="max_len"):
        encode_examples(tokenizer, [example], max_len=len(enc.input_ids) - 1)
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        encode_examples(plain, [example], max_len=256)


# --- reply_loss and accuracy ---------------------------------------------------------------------------------

MEMORISED = TaskExample(prompt="What is 20 + 22?", answer="42")


@pytest.fixture(scope="module")
def memorised(tokenizer) -> LlamaForCausalLM:
    """The tiny model trained (full logits, plain loop) until it answers MEMORISED by argmax."""
    model = tiny_llama(tokenizer, seed=1).train()
    batch = collate(encode_examples(tokenizer, [MEMORISED], max_len=128), tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss, correct = reference(model, batch)
        if correct.all() and loss.item() < 0.3:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert reference(model, batch)[1].all(), "the tiny model did not memorise its one example"
    return model


def probe_examples() -> list[TaskExample]:
    """The memorised example, one right on its first token only ("43"), one whose reply should end after
    "4" (the end-of-turn token is the miss), one wrong from the start, and one with another prompt."""
    return [MEMORISED, TaskExample(prompt=MEMORISED.prompt, answer="43"),
            TaskExample(prompt=MEMORISED.prompt, answer="4"), TaskExample(prompt=MEMORISED.prompt, answer="17"),
            TaskExample(prompt="Which novel is this passage from?\n\nCall me Ishmael.", answer="Moby Dick")]


class LogitsOnly(nn.Module):
    """A model without get_decoder: reply_loss must fall back to full logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **inputs):
        return self.inner(**inputs)


def test_reply_loss_matches_full_logits(tokenizer, memorised) -> None:
    encoded = encode_examples(tokenizer, probe_examples(), max_len=128)
    batch = collate(encoded, tokenizer.pad_token_id)
    assert len({len(e.input_ids) for e in encoded}) > 1  # right padding is exercised
    rows = []
    hook = memorised.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    try:
        with torch.no_grad():
            loss, correct = reply_loss(memorised, batch)
    finally:
        hook.remove()
    reply_tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
    assert rows == [torch.Size([reply_tokens, 32])]  # the output layer saw the reply positions only
    with torch.no_grad():
        want_loss, want_correct = reference(memorised, batch)
        fallback_loss, fallback_correct = reply_loss(LogitsOnly(memorised), batch)
    assert not hasattr(LogitsOnly(memorised), "get_decoder")
    assert abs(loss.item() - want_loss.item()) < EXACT
    assert abs(fallback_loss.item() - want_loss.item()) < EXACT
    assert correct.tolist() == want_correct.tolist() == fallback_correct.tolist() == [True, False, False, False,
                                                                                      False]
    # A random model: nothing is right, and the numbers still agree.
    fresh = tiny_llama(tokenizer, seed=5)
    with torch.no_grad():
        loss, correct = reply_loss(fresh, batch)
        want_loss, want_correct = reference(fresh, batch)
    assert abs(loss.item() - want_loss.item()) < EXACT and correct.tolist() == want_correct.tolist()


def test_reply_loss_gradients_match_full_logits(tokenizer) -> None:
    encoded = encode_examples(tokenizer, probe_examples()[:2], max_len=128)
    batch = collate(encoded, tokenizer.pad_token_id)
    ours, ref = tiny_llama(tokenizer, seed=2), tiny_llama(tokenizer, seed=2)
    reply_loss(ours, batch)[0].backward()
    reference(ref, batch)[0].backward()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-7), name


def test_correct_means_greedy_decoding_reproduces_the_reply(tokenizer, memorised) -> None:
    examples = probe_examples()
    encoded = encode_examples(tokenizer, examples, max_len=128)
    with torch.no_grad():
        _, correct = reply_loss(memorised, collate(encoded, tokenizer.pad_token_id))
    for example, enc, ok in zip(examples, encoded, correct.tolist(), strict=True):
        n = prompt_length(tokenizer, example.prompt)
        prompt, reply = torch.tensor([enc.input_ids[:n]]), enc.input_ids[n:]
        out = memorised.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=len(reply),
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert (out[0, n:].tolist() == reply) == ok, example
    assert correct.tolist() == [True, False, False, False, False]  # both outcomes are covered


# --- finetune, batches, evaluate_replies --------------------------------------------------------------------

def test_finetune_loss_falls(tokenizer) -> None:
    splits = addition_task(8, 1, 1, seed=0)
    encoded = encode_examples(tokenizer, splits.train, max_len=128)
    model = tiny_llama(tokenizer, seed=0)
    before = evaluate_replies(model, encoded, batch_size=8, pad_id=tokenizer.pad_token_id)["loss"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = []
    result = finetune(model, encoded, optimizer, steps=20, batch_size=4, pad_id=tokenizer.pad_token_id, seed=0,
                      on_step=steps.append)
    after = evaluate_replies(model, encoded, batch_size=8, pad_id=tokenizer.pad_token_id)["loss"]
    assert len(result.losses) == 20 and steps == list(range(20))
    assert sum(result.losses[-5:]) / 5 < 0.5 * sum(result.losses[:5]) / 5
    assert after < 0.5 * before
    assert result.seconds_per_step > 0 and result.tokens_per_second > 0
    with pytest.raises(ValueError, match="cannot fill a batch"):
        finetune(model, encoded[:3], optimizer, steps=1, batch_size=4, pad_id=tokenizer.pad_token_id, seed=0)


def test_batches_deterministic_and_cover_each_epoch() -> None:
    encoded = [Encoded(input_ids=[i] * (1 + i % 3), labels=[IGNORE] + [i] * (i % 3)) for i in range(10)]

    def order(seed: int, n: int) -> list[list[int]]:
        stream = batches(encoded, 3, pad_id=99, seed=seed)
        return [next(stream)["input_ids"][:, 0].tolist() for _ in range(n)]

    first = order(0, 9)
    assert first == order(0, 9)
    assert first != order(1, 9)
    for epoch in range(3):  # 10 examples, batches of 3: three batches an epoch, one example left out
        seen = [i for batch in first[3 * epoch:3 * epoch + 3] for i in batch]
        assert len(set(seen)) == 9
    assert first[:3] != first[3:6]  # each epoch reshuffles
    batch = collate(encoded[:3], pad_id=99)
    assert batch["input_ids"].tolist() == [[0, 99, 99], [1, 1, 99], [2, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert batch["labels"].tolist() == [[IGNORE] * 3, [IGNORE, 1, IGNORE], [IGNORE, 2, 2]]


def test_evaluate_replies_token_weighted_and_restores_mode(tokenizer, memorised) -> None:
    examples = [*probe_examples(), TaskExample(prompt="Which novel?", answer="Pride and Prejudice")]
    encoded = encode_examples(tokenizer, examples, max_len=128)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        whole_loss, whole_correct = reply_loss(memorised, collate(encoded, pad))
    got = evaluate_replies(memorised, encoded, batch_size=2, pad_id=pad)
    assert got["loss"] == pytest.approx(whole_loss.item(), abs=1e-5)
    assert got["accuracy"] == pytest.approx(whole_correct.float().mean().item()) == pytest.approx(1 / 6)
    # The test can tell: the plain mean of the three batch means is not the token-weighted mean.
    with torch.no_grad():
        means = [reply_loss(memorised, collate(encoded[i:i + 2], pad))[0].item() for i in range(0, 6, 2)]
    assert abs(sum(means) / 3 - got["loss"]) > 1e-3

    # Evaluation runs in eval mode (dropout off) and the caller's mode comes back.
    dropping = tiny_llama(tokenizer, seed=4, attention_dropout=0.5)
    want = evaluate_replies(dropping, encoded, batch_size=2, pad_id=pad)
    assert not dropping.training
    dropping.train()
    assert evaluate_replies(dropping, encoded, batch_size=2, pad_id=pad) == want
    assert dropping.training
    with torch.no_grad():
        assert reply_loss(dropping, collate(encoded, pad))[0].item() != pytest.approx(want["loss"], abs=1e-3)
