"""Two fine-tuning tasks with answers that can be checked exactly, each split into train / dev / test.

- **addition**: "What is 347 + 589?" -> "936". Generated from a seed; the three splits share no
  (a, b) pair. It measures whether fine-tuning teaches a skill, on data this code generated.
- **novel**: a passage of real text -> which of four novels it comes from (Emma, Pride and
  Prejudice, Persuasion: Austen; Moby Dick: Melville), from the bundled public-domain corpora. The
  splits are by *chapter*, so no test passage comes from a chapter seen in training: the model must
  learn the books' style and vocabulary, not memorise passages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llmbook.data.corpora import load_documents

NOVELS = ("Emma", "Pride and Prejudice", "Persuasion", "Moby Dick")


@dataclass(frozen=True, kw_only=True)
class TaskExample:
    prompt: str  # the user's message
    answer: str  # the exact answer the assistant should give


@dataclass(frozen=True, kw_only=True)
class TaskSplits:
    name: str
    train: list[TaskExample]
    dev: list[TaskExample]  # for choosing settings (learning rate, rank, merge weights)
    test: list[TaskExample]  # reported once, never tuned on


def _sizes_ok(n_train: int, n_dev: int, n_test: int) -> None:
    if min(n_train, n_dev, n_test) < 1:
        raise ValueError(f"every split needs at least one example: train={n_train}, dev={n_dev}, test={n_test}")


def addition_task(n_train: int, n_dev: int, n_test: int, *, digits: int = 3, seed: int = 0) -> TaskSplits:
    """Sums of two ``digits``-digit numbers; the splits are disjoint sets of (a, b) pairs."""
    _sizes_ok(n_train, n_dev, n_test)
    low, high = 10 ** (digits - 1), 10**digits - 1
    total = n_train + n_dev + n_test
    if total > (high - low + 1) ** 2:
        raise ValueError(f"only {(high - low + 1) ** 2} distinct {digits}-digit pairs exist; asked for {total}")
    rng = random.Random(seed)
    pairs: dict[tuple[int, int], None] = {}
    while len(pairs) < total:
        pairs[(rng.randint(low, high), rng.randint(low, high))] = None
    examples = [TaskExample(prompt=f"What is {a} + {b}? Reply with the number only.", answer=str(a + b))
                for a, b in pairs]
    return TaskSplits(name="addition", train=examples[:n_train], dev=examples[n_train:n_train + n_dev],
                      test=examples[n_train + n_dev:])


def _passages(text: str, chars: int) -> list[str]:
    """Whole-word windows of about ``chars`` characters from a chapter's paragraphs."""
    words, out, current = text.split(), [], []
    for word in words:
        current.append(word)
        if sum(len(w) + 1 for w in current) >= chars:
            out.append(" ".join(current))
            current = []
    return out


def novel_task(n_train: int, n_dev: int, n_test: int, *, passage_chars: int = 200, seed: int = 0) -> TaskSplits:
    """Passages labelled with their novel; chapters are split 70/10/20 per novel before passages are cut."""
    _sizes_ok(n_train, n_dev, n_test)
    rng = random.Random(seed)
    by_novel: dict[str, list[str]] = {name: [] for name in NOVELS}
    for corpus in ("austen", "moby_dick"):
        for doc in load_documents(corpus):
            title = doc["meta"]["title"]
            name = "Moby Dick" if title.startswith("Moby Dick") else title
            if name in by_novel:
                by_novel[name].append(doc["text"])
    options = ", ".join(NOVELS)
    splits: dict[str, list[TaskExample]] = {"train": [], "dev": [], "test": []}
    for name, chapters in by_novel.items():
        rng.shuffle(chapters)
        cut1, cut2 = int(0.7 * len(chapters)), int(0.8 * len(chapters))
        for split, part in (("train", chapters[:cut1]), ("dev", chapters[cut1:cut2]), ("test", chapters[cut2:])):
            for chapter in part:
                for passage in _passages(chapter, passage_chars):
                    prompt = f"Which novel is this passage from ({options})?\n\n{passage}"
                    splits[split].append(TaskExample(prompt=prompt, answer=name))
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        examples = splits[split]
        rng.shuffle(examples)
        if len(examples) < n:
            raise ValueError(f"the novel task has {len(examples)} {split} passages; asked for {n}")
        out[split] = examples[:n]
    return TaskSplits(name="novel", **out)
