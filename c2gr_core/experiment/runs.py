"""Reading a finished (or interrupted) run directory back: its tables, its tasks, its model.

The run directory is the one `experiment.runner.run_stream` writes through `experiment.rundir`.
Everything here only reads it; rebuilding a method mirrors what `run_stream` does before round 0 (config,
stream, frozen text embeddings from the run's own cache) and then loads a round's checkpoint.
"""
from __future__ import annotations

import os
import shutil
import weakref

from data_catalog.catalog import entry_card
from data_catalog.schema import TaskCard
from data_catalog.taskdata import TaskData

from ..config import ExperimentConfig
from ..methods import get_method
from ..methods.base import Method, StreamContext
from .rundir import checkpoint_rounds, load_checkpoint, read_json, read_matrix, read_numerics, read_run, run_path
from .tasks import load_stream_task, make_context, resolve_entries, task_embeddings

__all__ = ["checkpoint_rounds", "load_method", "load_run_task", "method_context", "read_json", "read_matrix",
           "read_run", "run_cards", "task_index"]


def run_cards(run_dir: str | os.PathLike) -> list[TaskCard]:
    run = run_path(run_dir)
    return [entry_card(e) for e in resolve_entries(read_json(run / "stream.json")["entries"])]


def load_run_task(run_dir: str | os.PathLike, task: int | str, data_root: str | None = None) -> TaskData:
    """Task `task` (stream index or name) of a run, materialised exactly as `run_stream` loads it."""
    run = run_path(run_dir)
    info = read_run(run)
    j = task_index(info["tasks"], task, run)
    return load_stream_task(resolve_entries(info["entries"]), j, info["config"], data_root)


def task_index(tasks: list[str], task: int | str, where) -> int:
    """A stream index from a task name or index, with an error naming `where`."""
    if isinstance(task, str):
        if task not in tasks:
            raise ValueError(f"{where}: task {task!r} is not in the stream {tasks}")
        return tasks.index(task)
    if not 0 <= int(task) < len(tasks):
        raise ValueError(f"{where}: task index {task} outside 0..{len(tasks) - 1}")
    return int(task)


def method_context(cfg: ExperimentConfig, cards: list[TaskCard], cache_dir: str | os.PathLike | None = None,
                   work_dir: str | os.PathLike | None = None, device: str | None = None,
                   progress: bool = False) -> StreamContext:
    """A StreamContext built as `run_stream` builds it. Without work_dir a temporary folder is
    used; the caller owns it (load_method removes it with the method)."""
    return make_context(cfg, cards, task_embeddings(cfg, cards, cache_dir), work_dir, device, progress)


def load_method(run_dir: str | os.PathLike, round: int | None = None, device: str | None = None,
                work_dir: str | os.PathLike | None = None) -> Method:
    """Rebuild the run's method and load checkpoints/round_XX.pt (default: the last finished round).

    The text embeddings come from the run's cache (`cache/`), so a run made with a slow or
    checkpoint-backed encoder reloads without it. The run directory is never written to: the
    method's scratch space is a temporary folder removed when the method is garbage-collected
    (or `work_dir`, kept).
    """
    run = run_path(run_dir)
    info = read_run(run)
    last = info["completed_rounds"] - 1
    r = last if round is None else int(round)
    if not 0 <= r <= last:
        raise ValueError(f"{run}: round {round} outside the finished rounds 0..{last}")
    ckpt = run / "checkpoints" / f"round_{r:02d}.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} does not exist; checkpoints kept: rounds {checkpoint_rounds(run)} "
                                "(a run with keep_checkpoints='last' keeps only the final one)")
    cfg: ExperimentConfig = info["config"]
    ctx = method_context(cfg, run_cards(run), cache_dir=run / "cache", work_dir=work_dir, device=device)
    m: Method = get_method(info["method"])(ctx)
    m.ctx.numerics = read_numerics(run, cfg)   # sampling runs as the run trained (bf16 or not)
    m.ctx.numerics.apply(m.modules().values())
    load_checkpoint(ckpt, m, device=ctx.device)
    if work_dir is None:
        weakref.finalize(m, shutil.rmtree, str(ctx.work_dir), True)
    m.loaded_from = {"run_dir": str(run), "round": r}
    return m
