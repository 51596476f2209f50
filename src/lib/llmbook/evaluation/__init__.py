"""Evaluation sets and metrics the chapters share: tasks with checkable answers, split into train, dev
and test so that a method is tuned on dev and reported on test."""

from llmbook.evaluation.tasks import TaskExample, TaskSplits, addition_task, novel_task

__all__ = ["TaskExample", "TaskSplits", "addition_task", "novel_task"]
