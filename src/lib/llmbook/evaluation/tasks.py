"""Tasks with answers a program can check, each split into train / dev / test.

Two are for fine-tuning:

- **addition**: "What is 347 + 589?" -> "936". Generated from a seed; the three splits share no
  (a, b) pair. It measures whether fine-tuning teaches a skill, on data this code generated.
- **novel**: a passage of real text -> which of four novels it comes from (Emma, Pride and
  Prejudice, Persuasion: Austen; Moby Dick: Melville), from the bundled public-domain corpora. The
  splits are by *chapter*, so no test passage comes from a chapter seen in training: the model must
  learn the books' style and vocabulary, not memorise passages.

Three more tasks are for post-training (SFT, preference tuning, GRPO on a 135M-parameter chat model),
so they stay small: one- or two-step sums with numbers under a few hundred, short answers. Each has a
reward that checks an answer (:mod:`llmbook.evaluation.rewards`), and its splits share no prompt:

- **word_problem**: "Ava has 7 apples. Ava buys 4 more and then eats 3. How many apples does Ava
  have now?" -> "8", with a worked ``solution`` ending "The answer is 8." for SFT on worked answers.
- **countdown**: reach a target from 3-4 small numbers with + - * and parentheses, each number at
  most once. Any valid expression is right; ``answer`` holds one, the expression the target was built
  from. Splits are disjoint by puzzle (the numbers as a set and the target), not only by wording.
- **format**: instruction following that a program can check: reply with JSON with exactly the given
  keys, answer in a given language (English or Chinese; the question may be asked in the other one), or
  answer in at most N words. ``answer`` is one reply that passes; the reward checks the form, not the facts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from llmbook.data.corpora import load_documents

NOVELS = ("Emma", "Pride and Prejudice", "Persuasion", "Moby Dick")


@dataclass(frozen=True, kw_only=True)
class TaskExample:
    prompt: str  # the user's message
    answer: str  # the exact answer the assistant should give (for countdown and format: one that passes)
    solution: str = ""  # a worked answer ending "The answer is N." where the task has one (word problems)


@dataclass(frozen=True, kw_only=True)
class CountdownExample(TaskExample):
    numbers: tuple[int, ...]  # the numbers the expression may use, each at most once
    target: int


@dataclass(frozen=True, kw_only=True)
class FormatExample(TaskExample):
    kind: str  # which check the reward applies: "json", "language" or "max_words"
    keys: tuple[str, ...] = ()  # json: the reply is a JSON object with exactly these keys
    language: str = ""  # language: "english" or "chinese"
    max_words: int = 0  # max_words: the reply has 1 to max_words whitespace-separated words


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


def _distinct(make: Callable[[random.Random], tuple[Hashable, TaskExample]], total: int, rng: random.Random,
              task: str) -> list[TaskExample]:
    """``total`` examples with distinct keys, drawn from ``make`` until found (or clearly not there)."""
    found: dict[Hashable, TaskExample] = {}
    for _ in range(100 * total + 1000):  # ample for a space much larger than ``total``; stops a too-small one
        key, example = make(rng)
        found.setdefault(key, example)
        if len(found) == total:
            return list(found.values())
    raise ValueError(f"the {task} task found only {len(found)} distinct prompts; asked for {total}")


def _split(name: str, examples: list[TaskExample], n_train: int, n_dev: int) -> TaskSplits:
    return TaskSplits(name=name, train=examples[:n_train], dev=examples[n_train:n_train + n_dev],
                      test=examples[n_train + n_dev:])


# --- word problems ---------------------------------------------------------------------------------------

NAMES = ("Ava", "Ben", "Chen", "Dina", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo",
         "Nora", "Omar", "Priya", "Sam", "Tara", "Yusuf", "Zoe")
FRUITS = ("apples", "oranges", "pears", "plums", "bananas", "peaches")
THINGS = ("pencils", "stickers", "marbles", "cookies", "cards", "shells", "stamps", "balloons")
GOODS = ("notebooks", "pens", "toy cars", "tickets", "sandwiches", "comic books")  # things sold at a price

# each template: rng -> (prompt, answer, worked solution without the closing "The answer is N.")
Template = Callable[[random.Random], tuple[str, int, str]]


def _buy_and_eat(rng: random.Random) -> tuple[str, int, str]:
    name, fruit = rng.choice(NAMES), rng.choice(FRUITS)
    a, b = rng.randint(3, 15), rng.randint(1, 10)
    c = rng.randint(1, a + b)
    return (f"{name} has {a} {fruit}. {name} buys {b} more and then eats {c}. How many {fruit} does {name} "
            f"have now?", a + b - c,
            f"{name} starts with {a} {fruit}. After buying {b} more: {a} + {b} = {a + b}. "
            f"After eating {c}: {a + b} - {c} = {a + b - c}.")


def _gift(rng: random.Random) -> tuple[str, int, str]:
    name, friend = rng.sample(NAMES, 2)
    thing, a, b = rng.choice(THINGS), rng.randint(2, 20), rng.randint(2, 20)
    return (f"{name} has {a} {thing}. {friend} gives {name} {b} more. How many {thing} does {name} have now?",
            a + b, f"{name} has {a} {thing} and gets {b} more: {a} + {b} = {a + b}.")


def _take_out(rng: random.Random) -> tuple[str, int, str]:
    name, fruit = rng.choice(NAMES), rng.choice(FRUITS)
    a = rng.randint(5, 20)
    b = rng.randint(1, a - 1)
    return (f"There are {a} {fruit} in a basket. {name} takes out {b}. How many {fruit} are left in the basket?",
            a - b, f"{b} of the {a} {fruit} are taken out: {a} - {b} = {a - b}.")


def _price(rng: random.Random) -> tuple[str, int, str]:
    name, goods = rng.choice(NAMES), rng.choice(GOODS)
    q, p = rng.randint(2, 9), rng.randint(2, 12)
    return (f"{name} buys {q} {goods} at {p} dollars each. How many dollars does {name} spend?", q * p,
            f"{q} {goods} at {p} dollars each cost {q} * {p} = {q * p} dollars.")


def _change(rng: random.Random) -> tuple[str, int, str]:
    name, goods = rng.choice(NAMES), rng.choice(GOODS)
    q, p = rng.randint(2, 5), rng.randint(2, 9)
    note = rng.choice([n for n in (20, 50, 100) if n > q * p])
    return (f"{name} buys {q} {goods} at {p} dollars each and pays with a {note}-dollar note. How many dollars "
            f"of change does {name} get?", note - q * p,
            f"The {goods} cost {q} * {p} = {q * p} dollars. The change is {note} - {q * p} = {note - q * p} "
            f"dollars.")


def _share(rng: random.Random) -> tuple[str, int, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    k, each = rng.randint(2, 8), rng.randint(2, 10)
    return (f"{name} shares {k * each} {thing} equally among {k} friends. How many {thing} does each friend get?",
            each, f"{k * each} {thing} shared among {k} friends: {k * each} / {k} = {each}.")


def _boxes(rng: random.Random) -> tuple[str, int, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    per_box, boxes = rng.randint(2, 10), rng.randint(2, 6)
    given = rng.randint(1, per_box * boxes - 1)
    total = per_box * boxes
    return (f"Each box holds {per_box} {thing}. {name} has {boxes} full boxes and gives away {given} {thing}. "
            f"How many {thing} does {name} have left?", total - given,
            f"{boxes} boxes of {per_box} hold {boxes} * {per_box} = {total} {thing}. After giving away {given}: "
            f"{total} - {given} = {total - given}.")


def _reading(rng: random.Random) -> tuple[str, int, str]:
    name = rng.choice(NAMES)
    per_day, days, left = rng.randint(3, 12), rng.randint(2, 7), rng.randint(1, 30)
    pages, read = per_day * days + left, per_day * days
    return (f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days. How many pages are "
            f"left to read?", left,
            f"{name} reads {per_day} * {days} = {read} pages. Pages left: {pages} - {read} = {left}.")


def _times_as_many(rng: random.Random) -> tuple[str, int, str]:
    name, friend = rng.sample(NAMES, 2)
    thing, a, times = rng.choice(THINGS), rng.randint(2, 10), rng.randint(2, 4)
    return (f"{name} has {a} {thing} and {friend} has {times} times as many. How many {thing} do they have "
            f"together?", a + a * times,
            f"{friend} has {a} * {times} = {a * times} {thing}. Together: {a} + {a * times} = {a + a * times}.")


WORD_PROBLEMS: tuple[Template, ...] = (_buy_and_eat, _gift, _take_out, _price, _change, _share, _boxes, _reading,
                                       _times_as_many)


def word_problem_task(n_train: int, n_dev: int, n_test: int, *, seed: int = 0) -> TaskSplits:
    """One- and two-step arithmetic word problems from nine templates; the splits share no prompt."""
    _sizes_ok(n_train, n_dev, n_test)

    def make(rng: random.Random) -> tuple[str, TaskExample]:
        prompt, answer, worked = rng.choice(WORD_PROBLEMS)(rng)
        return prompt, TaskExample(prompt=prompt, answer=str(answer), solution=f"{worked} The answer is {answer}.")

    examples = _distinct(make, n_train + n_dev + n_test, random.Random(seed), "word_problem")
    return _split("word_problem", examples, n_train, n_dev)


# --- countdown -------------------------------------------------------------------------------------------

def _operand(text: str, inner: str, outer: str, *, right: bool) -> str:
    """``text`` (whose top operator is ``inner``, "" for a number) in parentheses only where it needs them."""
    needs = inner in ("+", "-") and (outer == "*" or (outer == "-" and right))
    return f"({text})" if needs else text


def _countdown(rng: random.Random) -> tuple[tuple[tuple[int, ...], int], CountdownExample]:
    while True:
        numbers = rng.sample(range(1, 11), rng.choice((3, 4)))
        # combine two random sub-expressions until one is left: every number is used exactly once
        parts = [(str(n), n, "") for n in numbers]  # (text, value, top operator)
        while len(parts) > 1:
            left, a, left_op = parts.pop(rng.randrange(len(parts)))
            right, b, right_op = parts.pop(rng.randrange(len(parts)))
            op = rng.choice("+-*")
            value = a + b if op == "+" else a - b if op == "-" else a * b
            text = f"{_operand(left, left_op, op, right=False)} {op} {_operand(right, right_op, op, right=True)}"
            parts.append((text, value, op))
        expression, target, _ = parts[0]
        # a target of 1-100 keeps it small; one equal to a given number would be solved by that number alone
        if 1 <= target <= 100 and target not in numbers:
            break
    listed = ", ".join(map(str, numbers))
    prompt = (f"Using the numbers {listed}, make {target}. You may use +, - and * and parentheses, and each "
              "number at most once. Reply with the expression only.")
    example = CountdownExample(prompt=prompt, answer=expression, numbers=tuple(numbers), target=target)
    return (tuple(sorted(numbers)), target), example


def countdown_task(n_train: int, n_dev: int, n_test: int, *, seed: int = 0) -> TaskSplits:
    """Countdown puzzles from 3-4 distinct numbers in 1-10 and a target in 1-100 built from them."""
    _sizes_ok(n_train, n_dev, n_test)
    examples = _distinct(_countdown, n_train + n_dev + n_test, random.Random(seed), "countdown")
    return _split("countdown", examples, n_train, n_dev)


# --- format following ------------------------------------------------------------------------------------

# (English question, English answer, Chinese question, Chinese answer): facts a small model may know
FACTS = (
    ("What colour is the sky on a clear day?", "Blue.", "晴天时天空是什么颜色？", "蓝色。"),
    ("How many legs does a spider have?", "Eight.", "蜘蛛有几条腿？", "八条。"),
    ("What do bees make?", "Honey.", "蜜蜂会制造什么？", "蜂蜜。"),
    ("What is the capital of France?", "Paris.", "法国的首都是哪里？", "巴黎。"),
    ("What is frozen water called?", "Ice.", "结冰的水叫什么？", "冰。"),
    ("How many days are in a week?", "Seven.", "一个星期有几天？", "七天。"),
    ("Which animal says meow?", "A cat.", "什么动物会喵喵叫？", "猫。"),
    ("Which planet do we live on?", "Earth.", "我们住在哪个星球上？", "地球。"),
    ("What colour is grass?", "Green.", "草是什么颜色的？", "绿色。"),
    ("What do we use to write on a blackboard?", "Chalk.", "我们用什么在黑板上写字？", "粉笔。"),
    ("How many hours are in a day?", "Twenty-four.", "一天有多少个小时？", "二十四个小时。"),
    ("What is the largest ocean?", "The Pacific Ocean.", "最大的海洋是哪个？", "太平洋。"),
    ("Which season comes after winter?", "Spring.", "冬天之后是哪个季节？", "春天。"),
    ("Which fruit is yellow and curved?", "A banana.", "什么水果是黄色的、弯弯的？", "香蕉。"),
    ("What does a thermometer measure?", "Temperature.", "温度计测量什么？", "温度。"),
    ("Where does the sun rise?", "In the east.", "太阳从哪里升起？", "东方。"),
    ("What is the capital of China?", "Beijing.", "中国的首都是哪里？", "北京。"),
    ("How many months are in a year?", "Twelve.", "一年有几个月？", "十二个月。"),
    ("What do plants need from the sun?", "Light.", "植物需要从太阳得到什么？", "阳光。"),
    ("Which animal is called the king of the jungle?", "The lion.", "什么动物被称为丛林之王？", "狮子。"),
    ("What is the opposite of hot?", "Cold.", "热的反义词是什么？", "冷。"),
    ("Which is the biggest planet in the solar system?", "Jupiter.", "太阳系中最大的行星是哪颗？", "木星。"),
    ("Which gas do people need to breathe?", "Oxygen.", "人需要呼吸什么气体？", "氧气。"),
    ("What do pandas mostly eat?", "Bamboo.", "熊猫主要吃什么？", "竹子。"),
    ("How many sides does a triangle have?", "Three.", "三角形有几条边？", "三条。"),
    ("What is two plus three?", "Five.", "二加三等于几？", "五。"),
    ("What do you use to cut paper?", "Scissors.", "你用什么剪纸？", "剪刀。"),
    ("What falls from the clouds when it rains?", "Raindrops.", "下雨时从云里落下什么？", "雨滴。"),
    ("What is the tallest animal?", "The giraffe.", "最高的动物是什么？", "长颈鹿。"),
    ("In which country is the Great Wall?", "China.", "长城在哪个国家？", "中国。"),
)
CITIES = ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi", "Rome", "Seoul", "Nairobi", "Toronto")
LANGUAGE_INSTRUCTIONS = ("Answer in {language}: {question}", "Reply in {language}. {question}",
                         "{question} Answer in {language}.")
WORD_LIMITS = (3, 4, 5, 6, 8, 10)


def _json_example(rng: random.Random) -> FormatExample:
    name, age, city = rng.choice(NAMES), rng.randint(5, 90), rng.choice(CITIES)
    keys, fact = rng.choice(((("name", "age"), f"{name} is {age} years old."),
                             (("name", "city"), f"{name} lives in {city}."),
                             (("name", "age", "city"), f"{name} is {age} and lives in {city}.")))
    values = {"name": name, "age": age, "city": city}
    listed = " and ".join([", ".join(keys[:-1]), keys[-1]])
    return FormatExample(prompt=f"Reply with JSON with keys {listed} for: {fact}",
                         answer=json.dumps({key: values[key] for key in keys}), kind="json", keys=keys)


def _language_example(rng: random.Random) -> FormatExample:
    en_question, en_answer, zh_question, zh_answer = rng.choice(FACTS)
    asked_in, language = rng.choice(("english", "chinese")), rng.choice(("english", "chinese"))
    question = en_question if asked_in == "english" else zh_question
    prompt = rng.choice(LANGUAGE_INSTRUCTIONS).format(language=language.capitalize(), question=question)
    return FormatExample(prompt=prompt, answer=en_answer if language == "english" else zh_answer, kind="language",
                         language=language)


def _word_limit_example(rng: random.Random) -> FormatExample:
    question, answer, _, _ = rng.choice(FACTS)
    limit = rng.choice(WORD_LIMITS)
    return FormatExample(prompt=f"In at most {limit} words, {question[0].lower()}{question[1:]}", answer=answer,
                         kind="max_words", max_words=limit)


def format_task(n_train: int, n_dev: int, n_test: int, *, seed: int = 0) -> TaskSplits:
    """JSON-keys, answer-language and word-limit instructions, about a third each; the splits share no prompt.

    The language and word-limit kinds have a few hundred distinct prompts between them; past that the
    JSON kind fills the rest.
    """
    _sizes_ok(n_train, n_dev, n_test)

    def make(rng: random.Random) -> tuple[str, FormatExample]:
        example = rng.choice((_json_example, _language_example, _word_limit_example))(rng)
        return example.prompt, example

    examples = _distinct(make, n_train + n_dev + n_test, random.Random(seed), "format")
    return _split("format", examples, n_train, n_dev)
