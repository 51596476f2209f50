"""Evaluation sets and metrics the chapters share: tasks with checkable answers, split into train, dev
and test so that a method is tuned on dev and reported on test; rewards that check answers; and the
statistics that say how much a score measured on a few hundred prompts can be trusted."""

from llmbook.evaluation.rewards import (
    RewardScores,
    cjk_share,
    countdown_reward,
    exact_answer_reward,
    extract_final_number,
    format_reward,
    score_completions,
    task_reward,
)
from llmbook.evaluation.stats import (
    Interval,
    accuracy_ci,
    agreement,
    bootstrap_ci,
    cohen_kappa,
    length_controlled_win_rate,
    win_rate,
)
from llmbook.evaluation.tasks import (
    CountdownExample,
    FormatExample,
    TaskExample,
    TaskSplits,
    addition_task,
    countdown_task,
    format_task,
    novel_task,
    word_problem_task,
)

__all__ = [
    "CountdownExample",
    "FormatExample",
    "Interval",
    "RewardScores",
    "TaskExample",
    "TaskSplits",
    "accuracy_ci",
    "addition_task",
    "agreement",
    "bootstrap_ci",
    "cjk_share",
    "cohen_kappa",
    "countdown_reward",
    "countdown_task",
    "exact_answer_reward",
    "extract_final_number",
    "format_reward",
    "format_task",
    "length_controlled_win_rate",
    "novel_task",
    "score_completions",
    "task_reward",
    "win_rate",
    "word_problem_task",
]
