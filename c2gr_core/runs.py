"""Reading a finished (or interrupted) run directory back: its tables, its tasks, its model.

The run directory is the one `stream.run_stream` writes (see its module docstring). Everything
here only reads it; rebuilding a method mirrors what `run_stream` does before round 0 (config,
stream, frozen text embeddings from the run's own cache) and then loads a round's checkpoint.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from data_catalog.catalog import entry_card
from data_catalog.schema import TaskCard
from data_catalog.taskdata import TaskData

from .config import ExperimentConfig
from .methods import get_method
from .methods.base import Method, StreamContext
from .prompts import encode_tasks
from .stream import load_checkpoint, load_stream_task, resolve_entries
from .text_encoders import get_text_encoder

_REQUIRED = ("config.json", "stream.json", "progress.json")


def _run_path(run_dir: str | os.PathLike) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    missing = [f for f in _REQUIRED if not (run / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run} is not a run directory (or no round has finished yet): missing {missing}")
    return run


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from e


def read_matrix(path: str | os.PathLike, tasks: list[str]) -> np.ndarray:
    """matrix.csv -> (T, T) float array, NaN for the empty cells (rounds before a task arrived)."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][1:] != tasks:
        raise ValueError(f"{path}: header {rows[0] if rows else []} does not list the run's tasks {tasks}")
    T = len(tasks)
    D = np.full((T, T), np.nan)
    for i, row in enumerate(rows[1:T + 1]):
        if len(row) != T + 1:
            raise ValueError(f"{path}: row {i + 1} has {len(row) - 1} values, expected {T}")
        D[i] = [float(v) if v.strip() else np.nan for v in row[1:]]
    return D


def read_run(run_dir: str | os.PathLike) -> dict:
    """The tables of a run: config (ExperimentConfig), metrics, matrix ((T, T), NaN above the
    diagonal and for unfinished rounds), per_class, timings, tasks (names), entries, method (name),
    completed_rounds."""
    run = _run_path(run_dir)
    stream = read_json(run / "stream.json")
    tasks = list(stream["tasks"])
    opt = lambda name, default: read_json(run / name) if (run / name).is_file() else default  # noqa: E731
    return {
        "config": ExperimentConfig.load(run / "config.json"),
        "metrics": opt("metrics.json", {}),
        "matrix": read_matrix(run / "matrix.csv", tasks) if (run / "matrix.csv").is_file()
        else np.full((len(tasks),) * 2, np.nan),
        "per_class": opt("per_class.json", {}),
        "timings": opt("timings.json", []),
        "tasks": tasks,
        "entries": list(stream["entries"]),
        "method": stream["method"],
        "completed_rounds": int(read_json(run / "progress.json")["completed_rounds"]),
    }


def run_cards(run_dir: str | os.PathLike) -> list[TaskCard]:
    run = _run_path(run_dir)
    return [entry_card(e) for e in resolve_entries(read_json(run / "stream.json")["entries"])]


def load_run_task(run_dir: str | os.PathLike, task: int | str, data_root: str | None = None) -> TaskData:
    """Task `task` (stream index or name) of a run, materialised exactly as `run_stream` loads it."""
    run = _run_path(run_dir)
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


def checkpoint_rounds(run_dir: str | os.PathLike) -> list[int]:
    run = Path(run_dir)
    return sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("round_[0-9]*.pt"))


def method_context(cfg: ExperimentConfig, cards: list[TaskCard], cache_dir: str | os.PathLike | None = None,
                   work_dir: str | os.PathLike | None = None, device: str | None = None,
                   progress: bool = False) -> StreamContext:
    """A StreamContext built as `run_stream` builds it. Without work_dir a temporary folder is
    used; the caller owns it (load_method removes it with the method)."""
    encoder = get_text_encoder(cfg.prompt)
    emb = encode_tasks(cards, encoder, cache_dir=cache_dir)
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="c2gr-method-"))
    return StreamContext(cfg=cfg, cards=list(cards), emb=emb, work_dir=work,
                         device=torch.device(device or cfg.train.device), progress=progress)


def load_method(run_dir: str | os.PathLike, round: int | None = None, device: str | None = None,
                work_dir: str | os.PathLike | None = None) -> Method:
    """Rebuild the run's method and load checkpoints/round_XX.pt (default: the last finished round).

    The text embeddings come from the run's cache (`cache/`), so a run made with a slow or
    checkpoint-backed encoder reloads without it. The run directory is never written to: the
    method's scratch space is a temporary folder removed when the method is garbage-collected
    (or `work_dir`, kept).
    """
    run = _run_path(run_dir)
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
    load_checkpoint(ckpt, m, device=ctx.device)
    if work_dir is None:
        weakref.finalize(m, shutil.rmtree, str(ctx.work_dir), True)
    m.loaded_from = {"run_dir": str(run), "round": r}  # provenance for reports
    return m
