"""The run directory: its format and its safety rules, in one place (README, "Run directory: what is
guaranteed"; docs/design.md, "Run directory"). The runner writes through this module and every tool
reads through it.

    config.json       the resolved ExperimentConfig (written last at start: it marks a run)
    stream.json       entries, task names, method name
    environment.json  versions, CPU, threads, git commit, world size
    numerics.json     fp32 / bf16, memory layout and kernels the run trains with (train.amp_bf16; "auto": measured)
    matrix.csv        D[i, j]: DSC on task j after round i (empty above the diagonal)
    metrics.json      Overall / BWT / TL of the finished rounds, final row, complete flag
    per_class.json    per-class DSC of every evaluation
    timings.json      replay / fit / eval seconds of each round
    progress.json     {"completed_rounds": n}: the commit point of a round
    checkpoints/round_XX.pt, samples/round_XX/task_YY.npz (replayed pairs kept for inspection),
    cache/ (text embeddings), work/ (replay shards while the run is going)

- One writer: `lock(out)` holds an exclusive flock on out/.c2gr.lock for the whole run; a second
  run into the same folder is refused, naming the holder (pid, host and start time, written into
  the file). The kernel drops a flock when its process dies, so a killed run leaves no stale lock.
- A run writes only into a folder that does not exist, is empty, or holds a run of its own
  (`holds_run`), and it deletes only files it made (`remove_scratch`, `rollback`).
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import torch

from ..config import ExperimentConfig
from ..training.numerics import Numerics
from ..training.numerics import fixed as numerics_fixed
from ..training.replay import is_scratch_file

LOCK_NAME = ".c2gr.lock"


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory's lock."""


def holds_run(out: Path, resume: bool) -> bool:
    """Whether `out` holds a run to continue (config.json written); raises for every folder this
    run must not write into. Only reads the disk."""
    if not out.exists():
        if resume:
            raise FileNotFoundError(f"--resume: run directory {out} does not exist (nothing to resume; "
                                    "without --resume a new run starts there)")
        return False
    if not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a run directory")
    started, committed = (out / "config.json").is_file(), (out / "progress.json").is_file()
    if resume:
        if not started:
            raise FileNotFoundError(f"--resume: {out} holds no run to resume (no config.json)")
        return True
    if committed:
        raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) or choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if others and not started:
        # Never write into a folder of the user's: the run would overwrite or, at its end, delete files in it.
        raise FileExistsError(f"{out} is not empty and holds no run (it has {others[:3]}); "
                              "choose a new or empty folder for --out")
    # Empty, or the leftovers of a run of ours that finished no round: a fresh start loses nothing.
    return False


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is just starting"


@contextlib.contextmanager
def lock(out: Path):
    """Hold out/.c2gr.lock exclusively while the block runs (out must exist)."""
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryBusy(f"{out}: another run is writing into this run directory ({_holder(path)}); "
                                   "one writer per run directory: wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def first_missing(path: Path) -> Path | None:
    """The topmost folder of `path` that does not exist yet (what mkdir(parents=True) will create)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def rollback(out: Path, created: Path | None, before: set[str]) -> None:
    """Undo a start that failed before its first round: remove what this run created, nothing else."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for name in set(os.listdir(out)) - before:
        p = out / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def remove_scratch(work: Path) -> None:
    """Remove the replay shards a finished run kept under `work`, then the folders left empty.
    Anything else found there (not made by the workbench) is kept."""
    if not work.is_dir():
        return
    for dirpath, _, files in os.walk(work, topdown=False):
        for f in files:
            if is_scratch_file(f):
                os.unlink(os.path.join(dirpath, f))
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # only succeeds when empty


# ------------------------------------------------------------------------------ writing
N_INSPECT = 16  # replayed pairs per past task kept on disk for the replay inspector


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_start(out: Path, cfg: ExperimentConfig, stream_info: dict, environment: dict, numerics: Numerics) -> None:
    """The files of a new run; config.json last: it marks the folder as a run `--resume` continues."""
    atomic_write(out / "stream.json", json.dumps(stream_info, indent=2))
    atomic_write(out / "environment.json", json.dumps(environment, indent=2))
    atomic_write(out / "numerics.json", json.dumps(numerics.to_dict(), indent=2))
    atomic_write(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
    (out / "checkpoints").mkdir(exist_ok=True)


def read_numerics(out: Path, cfg: ExperimentConfig) -> Numerics:
    """What the run in `out` trains with. Runs made before numerics.json existed trained as their
    train.amp_bf16 says (then always true or false)."""
    path = out / "numerics.json"
    if not path.is_file():
        if cfg.train.amp_bf16 == "auto":
            raise FileNotFoundError(f"{path}: missing; the run's train.amp_bf16 is \"auto\", so its precision "
                                    "was measured at its start and recorded there")
        return numerics_fixed(bool(cfg.train.amp_bf16))
    try:
        return Numerics.from_dict(read_json(path))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a numerics record of this workbench ({e})") from e


def write_samples(store, dst: Path) -> None:
    """The first N_INSPECT replayed pairs of every past task, for the replay inspector."""
    dst.mkdir(parents=True, exist_ok=True)
    for j in store.tasks():
        x, y = store.get(j)
        tmp = dst / f"task_{j:02d}.tmp.npz"
        np.savez_compressed(tmp, images=np.asarray(x[:N_INSPECT]), masks=np.asarray(y[:N_INSPECT]))
        os.replace(tmp, dst / f"task_{j:02d}.npz")


def write_round(out: Path, t: int, state: dict, D: np.ndarray, names: list[str], metrics: dict, per_class: dict,
                timings: list, keep: str) -> None:
    """Round t's checkpoint and tables, then progress.json: the commit point."""
    T = len(names)
    atomic_save(state, out / "checkpoints" / f"round_{t:02d}.pt")
    rows = ["round," + ",".join(names)]
    for i in range(T):
        rows.append(names[i] + "," + ",".join("" if np.isnan(v) else repr(float(v)) for v in D[i]))
    atomic_write(out / "matrix.csv", "\n".join(rows) + "\n")
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write(out / "per_class.json", json.dumps(per_class, indent=2))
    atomic_write(out / "timings.json", json.dumps(timings, indent=2))
    # The commit point: a crash before this line re-runs round t on resume, from round t-1's checkpoint,
    # so older checkpoints go only now (and every older one: a crash may have left one behind).
    atomic_write(out / "progress.json", json.dumps({"completed_rounds": t + 1, "total_rounds": T}))
    tidy(out, t, keep, T)


def tidy(out: Path, t: int, keep: str, T: int) -> None:
    """What follows round t's commit (and is redone by a resume that finds nothing left to train)."""
    if keep == "last":
        for old in (out / "checkpoints").glob("round_*.pt"):
            if old.stem[6:].isdigit() and int(old.stem[6:]) < t:
                old.unlink()
    if t + 1 == T:
        remove_scratch(out / "work")


# ------------------------------------------------------------------------------ reading
REQUIRED = ("config.json", "stream.json", "progress.json")


def run_path(run_dir: str | os.PathLike) -> Path:
    """`run_dir` as a Path, after checking it holds a run with at least one finished round."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    missing = [f for f in REQUIRED if not (run / f).is_file()]
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
    run = run_path(run_dir)
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


def read_progress(out: Path, T: int) -> int:
    """completed_rounds of progress.json (0 when there is none), checked to lie in 0..T."""
    if not (out / "progress.json").is_file():
        return 0
    done = read_json(out / "progress.json")
    done = done.get("completed_rounds") if isinstance(done, dict) else None
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= T:
        raise ValueError(f"{out / 'progress.json'}: completed_rounds must be an integer in 0..{T}, got {done!r}")
    return done


def checkpoint_rounds(run_dir: str | os.PathLike) -> list[int]:
    run = Path(run_dir)
    return sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("round_[0-9]*.pt"))


def load_checkpoint(path: Path, method, device=None) -> None:
    """Load checkpoints/round_XX.pt into `method`; a missing, truncated, foreign or malicious file is
    one error naming it (weights_only=True: a pickle never runs code)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        method.load_state_dict(state)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint missing; cannot resume from it") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file; all mean the same here
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{path}: not a loadable checkpoint of this run ({type(e).__name__}: {first})") from e
