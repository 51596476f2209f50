"""Rewards that check an answer: the signal for GRPO and the metric for every post-training method.

A *verifiable* reward is a program, not a model: it reads a completion and the example it answers and
returns a score in [0, 1]. It cannot be flattered, but it can be gamed wherever it checks less than the
task asks, so each function here says exactly what it checks:

- :func:`exact_answer_reward`: the last integer in the completion equals the answer (word problems,
  addition); for a non-numeric answer (the novel task), the stripped text equals it, case aside.
- :func:`countdown_reward`: the last line is an arithmetic expression over the given numbers, each
  used at most once, with only ``+ - * ( )`` (no unary minus, no ``**``), and it equals the target.
  A completion is untrusted text and is never ``eval``-ed: the expression must consist of decimal
  digits, spaces and those symbols, and is then parsed with :mod:`ast` and evaluated by walking the tree.
- :func:`format_reward`: the form the instruction asked for (JSON keys, language, word limit), not
  whether the content is right.

A reward function is code that meets text no one has seen, so :func:`score_completions` runs it
defensively: a reward that raises or returns NaN or infinity for a completion records 0.0 there and
counts the skip with its reason, so a broken checker shows up in a count instead of a NaN in the loss.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmbook.evaluation.tasks import CountdownExample, FormatExample, TaskExample

Reward = Callable[[str, TaskExample], float]

# an integer, with thousands separators or without; a "-" only as a sign, not as "5-3"'s minus; a decimal
# point with digits after it is captured so "3.5" is not read as the integer 5
_NUMBER = re.compile(r"(?<![\d.])(-?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # CJK unified ideographs (+ ext. A, compatibility)
_MAX_EXPRESSION_CHARS = 200  # a countdown answer is a few tokens; a longer "expression" is not parsed at all
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}  # the game's only operators


def extract_final_number(text: str) -> int | None:
    """The last number in ``text`` as an int, or None if there is none or it is not a whole number."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    sign, digits, fraction = matches[-1]
    if fraction.strip("0"):  # "3.5": the final number is not an integer
        return None
    return int(sign + digits.replace(",", ""))


def exact_answer_reward(completion: str, example: TaskExample) -> float:
    """1.0 if the completion's final number (or, for a text answer, the whole reply) matches the answer."""
    answer = example.answer.strip()
    if re.fullmatch(r"-?\d+", answer):
        return float(extract_final_number(completion) == int(answer))
    return float(completion.strip().rstrip(".").casefold() == answer.rstrip(".").casefold())


def _expression_text(completion: str) -> str:
    """The expression a countdown reply ends with: its last line, after any "Answer:", before any "= 24"."""
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text.rsplit(":", 1)[-1].split("=", 1)[0].strip(" `.")


def _evaluate(node: ast.AST, used: list[int]) -> int:
    """The value of an expression tree of integer literals and + - *; appends each literal to ``used``."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:  # not bool, float or str
        used.append(node.value)
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left, used), _evaluate(node.right, used))
    # names, calls, attributes, **, /, unary minus, comparisons...: not part of the game
    raise ValueError(f"{type(node).__name__} is not allowed in a countdown answer")


def countdown_reward(completion: str, example: TaskExample) -> float:
    """1.0 if the reply's expression uses only given numbers, each at most once, and + - * ( ), and hits the target."""
    if not isinstance(example, CountdownExample):
        raise TypeError(f"countdown_reward needs a CountdownExample, not {type(example).__name__}")
    text = _expression_text(completion)
    # decimal digits, spaces and + - * ( ) only: no names, no "0x1" or "1_0" literals reach the parser
    if len(text) > _MAX_EXPRESSION_CHARS or not re.fullmatch(r"[0-9 +\-*()]+", text):
        return 0.0
    used: list[int] = []
    try:
        value = _evaluate(ast.parse(text, mode="eval"), used)
    except (SyntaxError, ValueError):
        return 0.0
    available = Counter(example.numbers)
    if any(count > available[n] for n, count in Counter(used).items()):  # unknown numbers have available[n] == 0
        return 0.0
    return float(value == example.target)


def cjk_share(text: str) -> float:
    """The share of CJK ideographs among the letters of ``text`` (0.0 when it has no letters)."""
    letters = [c for c in text if c.isalpha()]  # ideographs count as letters; digits, spaces, punctuation do not
    return sum(bool(_CJK.match(c)) for c in letters) / len(letters) if letters else 0.0


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {keys}")
    return dict(pairs)


def _json_object(completion: str) -> dict[str, Any] | None:
    """The reply parsed as one JSON object (a ```json fence around it allowed), or None."""
    text = completion.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    try:
        value = json.loads(fenced[1] if fenced else text, object_pairs_hook=_no_duplicate_keys)
    except ValueError:  # json.JSONDecodeError is a ValueError, and so is a duplicate key
        return None
    return value if isinstance(value, dict) else None


def format_reward(completion: str, example: TaskExample) -> float:
    """1.0 if the reply has the form the example's instruction asks for.

    - json: one JSON object whose keys are exactly the example's keys, none twice (values not checked);
    - language: chinese, at least half the letters are CJK ideographs; english, none is and at least one
      ASCII letter is there;
    - max_words: 1 to ``max_words`` whitespace-separated words (the prompts are English).
    """
    if not isinstance(example, FormatExample):
        raise TypeError(f"format_reward needs a FormatExample, not {type(example).__name__}")
    if example.kind == "json":
        obj = _json_object(completion)
        return float(obj is not None and sorted(obj) == sorted(example.keys))
    if example.kind == "language":
        if example.language == "chinese":
            return float(cjk_share(completion) >= 0.5)
        if example.language == "english":
            return float(cjk_share(completion) == 0.0 and re.search(r"[A-Za-z]", completion) is not None)
        raise ValueError(f"unknown language {example.language!r}")
    if example.kind == "max_words":
        return float(1 <= len(completion.split()) <= example.max_words)
    raise ValueError(f"unknown format kind {example.kind!r}")


TASK_REWARDS: dict[str, Reward] = {
    "addition": exact_answer_reward,
    "novel": exact_answer_reward,
    "word_problem": exact_answer_reward,
    "countdown": countdown_reward,
    "format": format_reward,
}


def task_reward(task_name: str) -> Reward:
    """The reward function that checks answers to the task called ``task_name`` (``TaskSplits.name``)."""
    if task_name not in TASK_REWARDS:
        raise ValueError(f"no reward for task {task_name!r}; known: {', '.join(TASK_REWARDS)}")
    return TASK_REWARDS[task_name]


@dataclass(frozen=True, kw_only=True)
class RewardScores:
    values: list[float]  # one per completion, each finite; 0.0 where the reward was skipped
    skipped_indices: list[int] = field(default_factory=list)  # completions whose reward raised or was not finite
    reasons: Counter[str] = field(default_factory=Counter)  # why, e.g. "raised ValueError", "returned nan"

    @property
    def skipped(self) -> int:
        return len(self.skipped_indices)


def _score(reward_fn: Reward, completion: str, example: TaskExample) -> float | str:
    """The reward as a finite float, or the reason there is none."""
    try:
        raw = reward_fn(completion, example)
    except Exception as error:  # any bug in a checker is counted, not raised in the middle of training
        return f"raised {type(error).__name__}"
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return f"returned {type(raw).__name__}"
    return value if math.isfinite(value) else f"returned {value}"


def score_completions(reward_fn: Reward, completions: Sequence[str], examples: Sequence[TaskExample]) -> RewardScores:
    """``reward_fn`` on each (completion, example) pair; a raise or a NaN/inf is a counted skip scored 0.0."""
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
    scores = RewardScores(values=[])
    for i, (completion, example) in enumerate(zip(completions, examples)):
        result = _score(reward_fn, completion, example)
        if isinstance(result, str):
            scores.values.append(0.0)
            scores.skipped_indices.append(i)
            scores.reasons[result] += 1
        else:
            scores.values.append(result)
    return scores
