"""The run directory's safety rules, in one place (README, "Run directory: what is guaranteed").

- One writer: `lock(out)` holds an exclusive flock on out/.c2gr.lock for the whole run; a second
  run into the same folder is refused, naming the holder (pid, host and start time, written into
  the file). The kernel drops a flock when its process dies, so a killed run leaves no stale lock.
- A run writes only into a folder that does not exist, is empty, or holds a run of its own
  (`holds_run`), and it deletes only files it made (`remove_scratch`, `rollback`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .replay import is_scratch_file

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
