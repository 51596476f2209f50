"""llmbook.evaluation.tasks (word problems, countdown, format) and llmbook.evaluation.rewards."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from llmbook.evaluation.rewards import (
    cjk_share,
    countdown_reward,
    exact_answer_reward,
    extract_final_number,
    format_reward,
    score_completions,
    task_reward,
)
from llmbook.evaluation.tasks import (
    CountdownExample,
    FormatExample,
    TaskExample,
    TaskSplits,
    addition_task,
    countdown_task,
    format_task,
    word_problem_task,
)

NEW_TASKS = (word_problem_task, countdown_task, format_task)


def all_examples(splits: TaskSplits) -> list[TaskExample]:
    return splits.train + splits.dev + splits.test


# --- the tasks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", NEW_TASKS)
def test_sizes_and_disjoint_prompts(make) -> None:
    splits = make(120, 30, 40, seed=1)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (120, 30, 40)
    prompts = [e.prompt for e in all_examples(splits)]
    assert len(set(prompts)) == len(prompts)  # no prompt twice, within or across splits


@pytest.mark.parametrize("make", NEW_TASKS)
def test_seeded(make) -> None:
    assert make(40, 10, 10, seed=4) == make(40, 10, 10, seed=4)
    assert make(40, 10, 10, seed=4).train != make(40, 10, 10, seed=5).train


@pytest.mark.parametrize("make", NEW_TASKS)
def test_bad_sizes_raise(make) -> None:
    for sizes in ((0, 1, 1), (1, 0, 1), (1, 1, 0), (-2, 5, 5)):
        with pytest.raises(ValueError):
            make(*sizes)


@pytest.mark.parametrize("make", NEW_TASKS)
def test_reference_answers_score_one_and_wrong_answers_zero(make) -> None:
    splits = make(150, 20, 30, seed=2)
    reward = task_reward(splits.name)
    for example in all_examples(splits):
        assert reward(example.answer, example) == 1.0, example
        assert reward(wrong_answer(example), example) == 0.0, example


def wrong_answer(example: TaskExample) -> str:
    if isinstance(example, CountdownExample):
        return str(example.numbers[0])  # a given number, but never the target
    if isinstance(example, FormatExample):
        if example.kind == "json":
            return json.dumps({**json.loads(example.answer), "extra": 1})
        if example.kind == "language":
            return "Blue." if example.language == "chinese" else "蓝色。"
        return " ".join(["word"] * (example.max_words + 1))
    return f"The answer is {int(example.answer) + 1}."


def test_word_problems_worked_solutions_add_up() -> None:
    examples = all_examples(word_problem_task(300, 10, 10, seed=0))
    for example in examples:
        answer = int(example.answer)
        assert 0 <= answer <= 200
        assert example.solution.endswith(f"The answer is {answer}.")
        steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", example.solution)
        assert 1 <= len(steps) <= 2, example.solution  # one- and two-step problems
        for a, op, b, result in steps:
            a, b, result = int(a), int(b), int(result)
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op] == result, example.solution
        assert int(steps[-1][3]) == answer  # the last step computes the answer
    steps_per_problem = Counter(e.solution.count(" = ") for e in examples)
    assert steps_per_problem[1] > 30 and steps_per_problem[2] > 30
    for phrase in ("buys", "eats", "gives", "takes out", "each", "change", "equally", "box", "book", "times as many"):
        assert any(phrase in e.prompt for e in examples), phrase  # every template is drawn
    assert len({e.prompt.split()[0] for e in examples}) > 10  # varied names and openings


def test_countdown_puzzles_disjoint_and_solvable() -> None:
    splits = countdown_task(200, 50, 50, seed=0)
    puzzles = [(tuple(sorted(e.numbers)), e.target) for e in all_examples(splits)]
    assert len(set(puzzles)) == len(puzzles)  # not the same numbers and target, in any order, twice
    for example in all_examples(splits):
        assert len(example.numbers) in (3, 4) and len(set(example.numbers)) == len(example.numbers)
        assert all(1 <= n <= 10 for n in example.numbers)
        assert 1 <= example.target <= 100 and example.target not in example.numbers
        assert sorted(map(int, re.findall(r"\d+", example.answer))) == sorted(example.numbers)  # all used once
        assert f"make {example.target}." in example.prompt


def test_format_task_kinds() -> None:
    splits = format_task(300, 30, 30, seed=0)
    kinds = Counter(e.kind for e in all_examples(splits))
    assert set(kinds) == {"json", "language", "max_words"} and min(kinds.values()) > 60
    for example in all_examples(splits):
        if example.kind == "json":
            assert set(json.loads(example.answer)) == set(example.keys)
            assert all(key in example.prompt for key in example.keys)
        elif example.kind == "language":
            assert example.language.capitalize() in example.prompt
        else:
            assert f"at most {example.max_words} words" in example.prompt
    languages = Counter((e.language, cjk_share(e.prompt) > 0) for e in all_examples(splits) if e.kind == "language")
    assert len(languages) == 4  # English and Chinese answers, each asked in either language


def test_old_tasks_unchanged_fields() -> None:
    example = addition_task(1, 1, 1, seed=0).train[0]
    assert example.solution == ""
    assert exact_answer_reward(example.answer, example) == 1.0


# --- rewards ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "number"), [
    ("The answer is 12.", 12),
    ("12", 12),
    ("-3", -3),
    ("It is -3 degrees.", -3),
    ("1,234", 1234),
    ("In total 1,234,567 people.", 1234567),
    ("5 + 7 = 12, so 12 apples", 12),
    ("10-3 = 7", 7),
    ("5-3", 3),  # the minus of a subtraction is not a sign
    ("3, 4", 4),
    ("12.0", 12),
    ("3.5", None),  # the final number is not whole
    ("no number here", None),
    ("", None),
    ("Ava has 3 apples. The answer is 8.\n", 8),
])
def test_extract_final_number(text: str, number: int | None) -> None:
    assert extract_final_number(text) == number


def test_exact_answer_reward() -> None:
    example = TaskExample(prompt="?", answer="8")
    assert exact_answer_reward("8 - 3 + ... The answer is 8.", example) == 1.0
    assert exact_answer_reward("The answer is 8. Check: 8 + 1 = 9", example) == 0.0  # the *last* number counts
    assert exact_answer_reward("eight", example) == 0.0
    novel = TaskExample(prompt="?", answer="Moby Dick")
    assert exact_answer_reward(" moby dick.", novel) == 1.0
    assert exact_answer_reward("Emma", novel) == 0.0


COUNTDOWN = CountdownExample(prompt="?", answer="2 * 4", numbers=(2, 4, 6, 3), target=8)


@pytest.mark.parametrize(("completion", "reward"), [
    ("2 * 4", 1.0),
    ("(6 + 2)", 1.0),  # a subset of the numbers is allowed
    ("6 - 3 + 4 - 2 + 3", 0.0),  # 3 used twice
    ("2 * 4 = 8", 1.0),
    ("Answer: (6 - 4) * 2 * 2", 0.0),  # 2 used twice
    ("Let me think.\n6 + 2", 1.0),  # the last line is the answer
    ("`6 + 2`.", 1.0),
    ("6 + 4", 0.0),  # valid but 10
    ("4 + 4", 0.0),  # reuse
    ("8", 0.0),  # a number that is not given
    ("1 * 8", 0.0),
    ("6 + 2 + 0", 0.0),
    ("2 ** 3", 0.0),  # right value, disallowed operator
    ("6 / 3 * 4", 0.0),  # right value, division is not allowed
    ("-2 + 6 + 4", 0.0),  # right value, unary minus is not allowed
    ("4.0 * 2", 0.0),
    ("True * 8", 0.0),
    ("x * 2", 0.0),
    ("__import__('os').system('echo hacked')", 0.0),
    ("(lambda: 8)()", 0.0),
    ("2 * 4; 1", 0.0),
    ("", 0.0),
    ("(" * 300 + "2" + ")" * 300, 0.0),
])
def test_countdown_reward(completion: str, reward: float) -> None:
    assert countdown_reward(completion, COUNTDOWN) == reward


def test_countdown_reward_takes_integers_only() -> None:
    example = CountdownExample(prompt="?", answer="1 + 7", numbers=(1, 7), target=8)
    assert countdown_reward("1 + 7", example) == 1.0
    assert countdown_reward("True + 7", example) == 0.0  # a bool is an int to Python, not to the game
    assert countdown_reward("1.0 + 7", example) == 0.0
    assert countdown_reward("0x1 + 7", example) == 0.0  # decimal literals only
    assert countdown_reward("01 + 7", example) == 0.0  # Python rejects a leading zero


def test_countdown_reward_needs_a_countdown_example() -> None:
    with pytest.raises(TypeError):
        countdown_reward("2 * 4", TaskExample(prompt="?", answer="8"))


def json_example(*keys: str) -> FormatExample:
    return FormatExample(prompt="?", answer="", kind="json", keys=keys)


@pytest.mark.parametrize(("completion", "reward"), [
    ('{"name": "Ava", "age": 7}', 1.0),
    ('{"age": 7, "name": "Ava"}', 1.0),  # key order does not matter
    ('```json\n{"name": "Ava", "age": 7}\n```', 1.0),
    ('{"name": "Ava"}', 0.0),  # a key missing
    ('{"name": "Ava", "age": 7, "city": "Oslo"}', 0.0),  # a key too many
    ('{"name": "Ava", "name": "Bo", "age": 7}', 0.0),  # a key twice
    ('{"Name": "Ava", "age": 7}', 0.0),
    ("{'name': 'Ava', 'age': 7}", 0.0),  # a Python dict, not JSON
    ('[["name", "Ava"], ["age", 7]]', 0.0),
    ('Sure! {"name": "Ava", "age": 7}', 0.0),
    ("", 0.0),
])
def test_format_reward_json_keys_exactly(completion: str, reward: float) -> None:
    assert format_reward(completion, json_example("name", "age")) == reward


@pytest.mark.parametrize(("completion", "language", "reward"), [
    ("北京。", "chinese", 1.0),
    ("北京是中国的首都，NBA 也很有名。", "chinese", 1.0),  # mostly ideographs
    ("Beijing.", "chinese", 0.0),
    ("Beijing (北京)", "chinese", 0.0),
    ("Beijing.", "english", 1.0),
    ("Beijing (北京)", "english", 0.0),
    ("北京。", "english", 0.0),
    ("24", "english", 0.0),  # no letters: no language
    ("", "chinese", 0.0),
])
def test_format_reward_language(completion: str, language: str, reward: float) -> None:
    example = FormatExample(prompt="?", answer="", kind="language", language=language)
    assert format_reward(completion, example) == reward


def test_cjk_share() -> None:
    assert cjk_share("蓝色") == 1.0
    assert cjk_share("blue") == 0.0
    assert cjk_share("ab 蓝色, 12!") == 0.5  # digits, spaces and punctuation are not letters
    assert cjk_share("") == 0.0


@pytest.mark.parametrize(("completion", "reward"), [
    ("Honey.", 1.0),
    ("Bees make sweet golden honey.", 1.0),  # exactly 5
    ("Bees make sweet golden honey daily.", 0.0),  # 6
    ("  ", 0.0),
])
def test_format_reward_word_limit(completion: str, reward: float) -> None:
    example = FormatExample(prompt="?", answer="", kind="max_words", max_words=5)
    assert format_reward(completion, example) == reward


def test_task_reward() -> None:
    assert task_reward("word_problem") is exact_answer_reward
    assert task_reward("addition") is exact_answer_reward
    assert task_reward("countdown") is countdown_reward
    assert task_reward("format") is format_reward
    with pytest.raises(ValueError, match="countdown"):
        task_reward("chess")


def test_score_completions_counts_raises_and_nan() -> None:
    examples = [TaskExample(prompt="?", answer=str(i)) for i in range(5)]

    def flaky(completion: str, example: TaskExample) -> float:
        if example.answer == "1":
            raise RuntimeError("checker bug")
        if example.answer == "2":
            return math.nan
        if example.answer == "3":
            return math.inf
        return exact_answer_reward(completion, example)

    scores = score_completions(flaky, ["0", "1", "2", "3", "5"], examples)
    assert scores.values == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert all(math.isfinite(v) for v in scores.values)
    assert scores.skipped == 3 and scores.skipped_indices == [1, 2, 3]
    assert scores.reasons == Counter({"raised RuntimeError": 1, "returned nan": 1, "returned inf": 1})
    # a wrong answer is a 0.0 reward, not a skip
    assert score_completions(exact_answer_reward, ["9"], examples[:1]).skipped == 0
    none = score_completions(lambda c, e: None, ["0"], examples[:1])
    assert none.values == [0.0] and none.reasons == Counter({"returned NoneType": 1})
    # a countdown checker given the wrong kind of example raises: a counted skip too
    wrong_kind = score_completions(countdown_reward, ["2 * 4"], examples[:1])
    assert wrong_kind.reasons == Counter({"raised TypeError": 1})
    with pytest.raises(ValueError):
        score_completions(exact_answer_reward, ["1", "2"], examples[:1])
