"""Short chat conversations for supervised fine-tuning and preference pairs, from the ChatterBot corpus.

Source: the ``chatterbot-corpus`` package, version 1.3.3 (https://github.com/gunthercox/chatterbot-corpus),
BSD 3-Clause licence, (c) Gunther Cox. Each YAML file holds one topic: ``categories`` (the first one
names it here) and ``conversations``, lists of turns that alternate speaker, starting with the user.
The English folder and the ``chinese`` folder (Simplified Chinese; ``traditionalchinese`` is not used)
are read, in sorted file order, conversations in file order.

Hand-written corpora have rough edges, and each is handled and counted, never silently papered over:

- YAML reads ``- yes`` as a bool and ``- 22`` as an int. The files are parsed with PyYAML's
  ``BaseLoader``, which keeps every scalar as the text written, so "yes" stays "yes" and "007" "007".
- An entry that is not a list of turns (one trivia entry is a string, a list's dash missing) is skipped.
- A turn that is empty or not text (a mapping) ends the conversation there: dropping it would shift
  every later turn to the other speaker.
- A conversation of odd length ends with a user turn that has no reply to learn; that turn is dropped.
- A conversation that repeats an earlier one word for word is dropped: the English ``tech_support.yml``
  holds 1,050 conversations but only 10 distinct ones, and ``coding.yml`` repeats many of its own; kept,
  they would be over half the English data and teach ten replies by rote.

:func:`hard_negative_pairs` builds preference pairs whose rejected answer is *on topic*: a reply to a
different prompt from the same category. Telling "Python." from "Paris." is easy; telling the reply to
"What language are you written in?" from the reply to "Are you sentient?" takes reading the prompt.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

LANGUAGES = ("english", "chinese")


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]  # {"role": "user" | "assistant", "content": ...}, user first, assistant last
    category: str
    source: str  # the YAML file it came from, e.g. "ai.yml"

    @property
    def prompt(self) -> str:
        """The first user message."""
        return self.messages[0]["content"]


@dataclass(frozen=True)
class ConversationSplits:
    train: list[Conversation]
    dev: list[Conversation]
    test: list[Conversation]


@dataclass(frozen=True)
class PreferencePair:
    prompt_messages: tuple[dict[str, str], ...]  # the conversation up to the reply: here one user message
    chosen: str  # the corpus's reply
    rejected: str  # the reply to another prompt of the same category
    category: str


def _turns(entry: Any, skipped: Counter[str]) -> list[str]:
    """The usable turns of one YAML conversation entry, cut at the first empty or non-text turn."""
    if not isinstance(entry, list):
        skipped["entry is not a list of turns"] += 1
        return []
    turns = []
    for turn in entry:
        if not isinstance(turn, str):
            skipped["non-text turn ends the conversation"] += 1
            break
        if not turn.strip():
            skipped["empty turn ends the conversation"] += 1
            break
        turns.append(turn.strip())
    if len(turns) % 2:
        skipped["trailing user turn dropped"] += 1
        turns.pop()
    if not turns:
        skipped["no exchange left"] += 1
    return turns


def chatterbot_conversations(language: str = "english", *, skipped: Counter[str] | None = None) -> list[Conversation]:
    """Every usable conversation of one language of the ChatterBot corpus, in file order.

    Pass a Counter as ``skipped`` to learn what was dropped and why (see the module docstring).
    """
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    skipped = Counter() if skipped is None else skipped
    folder = resources.files("chatterbot_corpus") / "data" / language
    out = []
    seen: set[tuple[str, ...]] = set()
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".yml")), key=lambda p: p.name):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)  # every scalar stays text
        category = data["categories"][0]
        for entry in data["conversations"]:
            turns = _turns(entry, skipped)
            if not turns:
                continue
            if tuple(turns) in seen:
                skipped["duplicate conversation"] += 1
                continue
            seen.add(tuple(turns))
            messages = tuple({"role": "user" if i % 2 == 0 else "assistant", "content": turn}
                             for i, turn in enumerate(turns))
            out.append(Conversation(messages=messages, category=category, source=path.name))
    return out


def _prompt_key(conversation: Conversation) -> str:
    return " ".join(conversation.prompt.casefold().split())  # "What is AI?" and "what is  AI?" are one prompt


def split_conversations(convs: list[Conversation], *, dev_fraction: float, test_fraction: float,
                        seed: int = 0) -> ConversationSplits:
    """Train / dev / test splits that share no first prompt (case and spacing aside).

    Conversations that open with the same prompt ("What is AI?" has several answers) go to one split
    together, so a test prompt is never seen in training with another reply. Whole groups are dealt
    out in a seeded order, so the splits' sizes are close to the fractions, not exact; within a split
    the corpus order is kept.
    """
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= fractions and dev + test < 1; got dev={dev_fraction}, test={test_fraction}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, conversation in enumerate(convs):
        groups[_prompt_key(conversation)].append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    n_test, n_dev = round(test_fraction * len(convs)), round(dev_fraction * len(convs))
    test: list[int] = []
    dev: list[int] = []
    train: list[int] = []
    for group in order:
        part = test if len(test) < n_test else dev if len(dev) < n_dev else train
        part.extend(group)
    return ConversationSplits(*([convs[i] for i in sorted(part)] for part in (train, dev, test)))


def hard_negative_pairs(convs: list[Conversation], *, seed: int = 0,
                        skipped: Counter[str] | None = None) -> list[PreferencePair]:
    """(prompt, gold reply, another prompt's reply from the same category) for each single exchange.

    The rejected reply is drawn from the single exchanges of the same category whose prompt differs
    (case and spacing aside; a second answer to the same prompt may be just as good). A draw that
    equals the gold reply word for word ("Hello" answers many greetings), or that the corpus also gives
    as a reply to this prompt, is skipped and counted in ``skipped``, as is a conversation whose
    category has no other prompt.
    """
    skipped = Counter() if skipped is None else skipped
    singles = [c for c in convs if len(c.messages) == 2]
    by_category: dict[str, list[Conversation]] = defaultdict(list)
    gold: dict[str, set[str]] = defaultdict(set)  # prompt key -> every reply the corpus gives it
    for conversation in singles:
        by_category[conversation.category].append(conversation)
        gold[_prompt_key(conversation)].add(conversation.messages[1]["content"])
    rng = random.Random(seed)
    pairs = []
    for conversation in singles:
        key = _prompt_key(conversation)
        others = [c for c in by_category[conversation.category] if _prompt_key(c) != key]
        if not others:
            skipped["no other prompt in the category"] += 1
            continue
        chosen, rejected = conversation.messages[1]["content"], rng.choice(others).messages[1]["content"]
        if rejected == chosen:
            skipped["rejected equals chosen"] += 1
            continue
        if rejected in gold[key]:  # another prompt's reply that this prompt also has as a gold reply
            skipped["rejected is another gold reply to the prompt"] += 1
            continue
        pairs.append(PreferencePair(prompt_messages=conversation.messages[:1], chosen=chosen, rejected=rejected,
                                    category=conversation.category))
    return pairs
