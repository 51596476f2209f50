"""llmbook.data.conversations: the ChatterBot corpus as chat conversations, splits, hard-negative pairs."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from llmbook.data import conversations as module
from llmbook.data.conversations import (
    Conversation,
    chatterbot_conversations,
    hard_negative_pairs,
    split_conversations,
)
from llmbook.evaluation.rewards import cjk_share


@pytest.fixture(scope="module")
def english() -> list[Conversation]:
    return chatterbot_conversations("english")


@pytest.fixture(scope="module")
def chinese() -> list[Conversation]:
    return chatterbot_conversations("chinese")


def assert_well_formed(convs: list[Conversation]) -> None:
    for conversation in convs:
        roles = [m["role"] for m in conversation.messages]
        assert len(roles) >= 2 and len(roles) % 2 == 0
        assert roles == ["user", "assistant"] * (len(roles) // 2)  # alternate, user first, assistant last
        assert all(isinstance(m["content"], str) and m["content"] == m["content"].strip() != ""
                   for m in conversation.messages)
        assert conversation.source.endswith(".yml") and conversation.category


def test_english(english: list[Conversation]) -> None:
    assert len(english) > 800
    assert_well_formed(english)
    assert len({tuple(m["content"] for m in c.messages) for c in english}) == len(english)  # no duplicates
    categories = Counter(c.category for c in english)
    assert len(categories) > 15 and categories["AI"] > 50
    assert english == chatterbot_conversations("english")  # deterministic order
    assert english[0].prompt == "What is AI?" and english[0].source == "ai.yml"


def test_chinese_is_simplified_chinese(chinese: list[Conversation]) -> None:
    assert len(chinese) > 300
    assert_well_formed(chinese)
    mostly_chinese = sum(cjk_share(m["content"]) > 0.5 for c in chinese for m in c.messages)
    assert mostly_chinese > 0.9 * sum(len(c.messages) for c in chinese)
    text = "".join(m["content"] for c in chinese for m in c.messages)
    assert "们" in text and "們" not in text  # the simplified form, not the traditional one


def test_corpus_quirks_are_counted() -> None:
    skipped = Counter()
    chatterbot_conversations("english", skipped=skipped)
    assert skipped["entry is not a list of turns"] >= 1  # trivia.yml's bingo question lost its list dash
    assert skipped["trailing user turn dropped"] > 10
    assert skipped["duplicate conversation"] > 1000  # tech_support.yml: 1,050 conversations, 10 distinct
    with pytest.raises(ValueError):
        chatterbot_conversations("klingon")


def test_parsing_rules_on_a_hand_made_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data" / "english"
    folder.mkdir(parents=True)
    (folder / "b_quirks.yml").write_text("""categories:
- quirks
conversations:
- - How old is Bond?
  - 007
- - Is it on?
  - yes
- - Ask me
  - {key: value}
  - lost
- - Hello
  - ''
  - lost
- - One
  - Two
  - Three
- just a string
- - Lonely
- - Hi
  - Hello
""", encoding="utf-8")
    (folder / "a_first.yml").write_text("categories:\n- first\n- other\nconversations:\n- - Hi\n  - Hello\n",
                                        encoding="utf-8")
    (folder / "notes.txt").write_text("not a corpus file", encoding="utf-8")
    monkeypatch.setattr(module.resources, "files", lambda package: tmp_path)
    skipped = Counter()
    convs = chatterbot_conversations("english", skipped=skipped)
    texts = [[m["content"] for m in c.messages] for c in convs]
    assert texts == [["Hi", "Hello"], ["How old is Bond?", "007"], ["Is it on?", "yes"], ["One", "Two"]]
    assert [(c.category, c.source) for c in convs] == [("first", "a_first.yml")] + [("quirks", "b_quirks.yml")] * 3
    assert skipped == Counter({"non-text turn ends the conversation": 1, "empty turn ends the conversation": 1,
                               "trailing user turn dropped": 4, "no exchange left": 3,
                               "entry is not a list of turns": 1, "duplicate conversation": 1})


def test_split_disjoint_by_prompt(english: list[Conversation]) -> None:
    splits = split_conversations(english, dev_fraction=0.1, test_fraction=0.2, seed=0)
    keys = [{key(c.prompt) for c in part} for part in (splits.train, splits.dev, splits.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert sorted(map(id, splits.train + splits.dev + splits.test)) == sorted(map(id, english))  # each once
    assert len(splits.dev) == pytest.approx(0.1 * len(english), abs=10)
    assert len(splits.test) == pytest.approx(0.2 * len(english), abs=10)
    assert split_conversations(english, dev_fraction=0.1, test_fraction=0.2, seed=0) == splits
    assert split_conversations(english, dev_fraction=0.1, test_fraction=0.2, seed=1).test != splits.test
    repeated = Counter(c.prompt for c in english)
    assert repeated["What is AI?"] > 1  # the case that makes splitting by conversation leak
    for bad in ((0.5, 0.5), (-0.1, 0.2), (0.1, 1.0)):
        with pytest.raises(ValueError):
            split_conversations(english, dev_fraction=bad[0], test_fraction=bad[1])


def key(prompt: str) -> str:
    return " ".join(prompt.casefold().split())


@pytest.mark.parametrize("language", ["english", "chinese"])
def test_hard_negatives(language: str, english: list[Conversation], chinese: list[Conversation]) -> None:
    convs = english if language == "english" else chinese
    skipped = Counter()
    pairs = hard_negative_pairs(convs, seed=0, skipped=skipped)
    singles = [c for c in convs if len(c.messages) == 2]
    assert len(pairs) + sum(skipped.values()) == len(singles)  # every single exchange: a pair or a counted skip
    assert len(pairs) > (700 if language == "english" else 300)
    replies: dict[str, set[str]] = defaultdict(set)  # category -> its single exchanges' replies
    gold: dict[str, set[str]] = defaultdict(set)  # prompt (case and spacing aside) -> its gold replies
    for c in singles:
        replies[c.category].add(c.messages[1]["content"])
        gold[key(c.prompt)].add(c.messages[1]["content"])
    for pair in pairs:
        assert pair.rejected != pair.chosen
        assert [m["role"] for m in pair.prompt_messages] == ["user"]
        prompt = key(pair.prompt_messages[0]["content"])
        assert pair.chosen in gold[prompt]
        assert pair.rejected not in gold[prompt]  # not a reply the corpus also gives to this prompt
        assert pair.rejected in replies[pair.category]  # from the same category
    assert len({p.rejected for p in pairs}) > 0.4 * len(pairs)  # drawn, not one reply for all
    assert hard_negative_pairs(convs, seed=0) == pairs
    assert hard_negative_pairs(convs, seed=1) != pairs


def test_hard_negatives_skip_and_count() -> None:
    def single(prompt: str, reply: str, category: str = "c") -> Conversation:
        return Conversation(messages=({"role": "user", "content": prompt}, {"role": "assistant", "content": reply}),
                            category=category, source="x.yml")

    convs = [single("Hi", "Hello"), single("Hey", "Hello"),  # two prompts with the same reply
             single("What is AI?", "A field."), single("what is  AI?", "Machines."),  # one prompt, two answers
             single("Who are you?", "A bot."), single("Who made you?", "A bot."), single("who made you?", "People."),
             single("Alone", "Yes", category="lonely")]
    all_skips = Counter()
    for seed in range(30):
        skipped = Counter()
        pairs = hard_negative_pairs(convs, seed=seed, skipped=skipped)
        assert skipped["no other prompt in the category"] == 1  # "Alone": nothing else in its category
        assert len(pairs) + sum(skipped.values()) == len(convs)
        for pair in pairs:
            assert pair.rejected != pair.chosen
            prompt = key(pair.prompt_messages[0]["content"])
            assert pair.rejected not in {"what is ai?": {"A field.", "Machines."},
                                         "who made you?": {"A bot.", "People."}}.get(prompt, ())
        # the two answers to "What is AI?" have other prompts' replies to draw from: never a skip
        assert sum(key(p.prompt_messages[0]["content"]) == "what is ai?" for p in pairs) == 2
        all_skips.update(skipped)
    assert all_skips["rejected equals chosen"] > 0  # "Hi" and "Hey" draw each other's identical reply at times
    # "who made you?" -> "People." drawing "Who are you?"'s "A bot.", which answers "Who made you?" too
    assert all_skips["rejected is another gold reply to the prompt"] > 0
