"""Data access under task-incremental learning: in round t only task t's data is readable.

Methods never hold TaskData; they ask a TaskAccess for a split. Past tasks' train/val splits
raise DataIsolationError after their round (the privacy constraint of sec. 3). Test splits are
never given to methods: only the runner's evaluation reads them.
"""
from __future__ import annotations

from typing import Callable

from data_catalog.schema import TaskCard
from data_catalog.taskdata import Split, TaskData


class DataIsolationError(PermissionError):
    """A method asked for data it may not see in this round."""


class TaskAccess:
    def __init__(self, cards: list[TaskCard], load: Callable[[int], TaskData], privileged: bool = False):
        self.cards = cards
        self._load = load
        self._privileged = privileged  # JointTrain-style upper references may read all tasks seen so far
        self.round = -1
        self._current: TaskData | None = None

    def begin_round(self, t: int) -> None:
        self.round = t
        self._current = None  # drop the previous task's data: nothing of it stays readable

    def _check(self, task: int, split: str) -> None:
        if split not in ("train", "val"):
            raise DataIsolationError(f"methods may read only train/val splits, not {split!r} "
                                     "(test splits are read by the evaluation alone)")
        if task > self.round:
            raise DataIsolationError(f"task {task} ({self.cards[task].name}) has not arrived yet (round {self.round})")
        if task < self.round and not self._privileged:
            raise DataIsolationError(
                f"task {task} ({self.cards[task].name}) belongs to a past round; its real data is gone "
                f"in round {self.round} (task-incremental privacy constraint)")

    def split(self, task: int, split: str = "train") -> Split:
        self._check(task, split)
        if task == self.round:
            if self._current is None:
                self._current = self._load(task)
            return self._current.split(split)
        return self._load(task).split(split)

    def train(self, task: int | None = None) -> Split:
        return self.split(self.round if task is None else task, "train")

    def val(self, task: int | None = None) -> Split:
        return self.split(self.round if task is None else task, "val")
