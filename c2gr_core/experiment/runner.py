"""The continual stream runner (the workbench's main job, sec. 3.3 and 4.1.2).

For each round t: replay synthesis for past tasks -> prompts -> training on task t (+ replay)
-> evaluation of the segmentor on every seen task's test split -> row t of the DSC matrix ->
round t written atomically to the run directory (the resume point).

The run directory's format and safety rules (lock, which folders a run may write into, what it may
delete) live in `experiment.rundir`; everything a run can check is checked before it writes anything.
The steps of a run, in order: `_check_start` (method, config, stream, resume point, data),
`_claim` (lock, header files), `_prepare` (the method as round `start` begins), then per round
`_train_round` (replay + fit), `_evaluate_round` (row t of D) and `rundir.write_round` (commit).

Under `torchrun` (see c2gr_core.training.distributed) run_stream opens the process group itself and closes
it at the end; every rank trains on its shard and evaluates a share of the tasks, rank 0 alone
writes the run directory (with a barrier after each round, so the directory is complete before
any rank moves on), and every rank returns the same RunResult.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data_catalog.catalog import entry_card
from data_catalog.taskdata import TaskData

from ..config import ExperimentConfig, config_diff, validate
from ..losses import task_dsc
from ..methods import get_method
from ..methods.base import Method
from ..metrics import summarize
from ..training import allocator, distributed
from ..training.access import TaskAccess
from ..training.numerics import resolve as resolve_numerics
from ..training.trainer import TqdmCallback
from . import rundir
# Re-exported: their home before the run directory got its own module.
from .rundir import N_INSPECT, atomic_save, atomic_write, load_checkpoint, read_json, read_matrix  # noqa: F401
from .tasks import evaluate_split, load_stream_task, make_context, resolve_entries, task_embeddings  # noqa: F401


def environment_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "git_commit": commit,
            "world_size": distributed.world_size(),  # processes that trained the run (torchrun/DDP)
            "malloc_keeps_freed_memory": allocator.kept}


@dataclass
class RunResult:
    out_dir: Path
    matrix: np.ndarray           # (T, T) DSC fractions, NaN above the diagonal
    metrics: dict
    method: Method


def evaluate(method: Method, test: TaskData, task: int, batch_size: int = 64) -> np.ndarray:
    """Per-class DSC of `method` on one task's whole test split (aggregated over the split)."""
    return evaluate_split(lambda x: method.predict(x, task), test.test, test.card.n_classes, batch_size)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def run_stream(stream, method: str, cfg: ExperimentConfig, out_dir: str | os.PathLike, resume: bool = False,
               data_root: str | None = None, progress: bool = True, callbacks=(),
               keep_checkpoints: str = "all", max_rounds: int | None = None) -> RunResult:
    """Run `method` over `stream` (a stream name, a stream YAML, or a list of entries).

    max_rounds stops after that many rounds in total (used to simulate an interruption).
    Started by torchrun, the call trains with DDP over the torchrun processes (module doc).
    The process's malloc keeps what a step frees from here on (training/allocator.py).
    """
    allocator.keep_freed_memory()
    created = distributed.init_from_env(cfg.train.device)
    try:
        return _run_stream(stream, method, cfg, out_dir, resume, data_root, progress, callbacks,
                           keep_checkpoints, max_rounds)
    finally:
        distributed.shutdown(created)


@dataclass
class _Run:
    """What every step of one run reads: fixed once `_check_start` has passed."""
    out: Path
    method: str
    method_cls: type
    cfg: ExperimentConfig
    entries: list
    cards: list
    names: list[str]
    data_root: str | None
    progress: bool
    main: bool
    keep: str
    stream_info: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.entries)

    def load(self, j: int) -> TaskData:
        return load_stream_task(self.entries, j, self.cfg, self.data_root)


def _run_stream(stream, method, cfg, out_dir, resume, data_root, progress, callbacks, keep_checkpoints,
                max_rounds) -> RunResult:
    run, start = _check_start(stream, method, cfg, out_dir, resume, data_root, progress, keep_checkpoints)
    created = rundir.first_missing(run.out) if run.main else None
    before = set(os.listdir(run.out)) if run.main and created is None else set()
    # Every rank has read the directory's state before rank 0 writes anything into it.
    distributed.barrier()
    owned = False  # the lock is held and the folder re-checked: from here on a failed start is undone
    with contextlib.ExitStack() as held:
        try:
            if run.main:
                start = _claim(run, held, resume, start)
                owned = True
            distributed.barrier()  # the folder is rank 0's before any rank writes its scratch into it
            m, D, per_class, timings = _prepare(run, start)
            if run.main and start == 0:
                rundir.write_start(run.out, run.cfg, run.stream_info, environment_info(), m.ctx.numerics)
        except BaseException:
            if owned and start == 0 and not resume:
                held.close()
                rundir.rollback(run.out, created, before)  # a run that never started leaves nothing new
            raise
        return _rounds(run, m, D, per_class, timings, start, max_rounds, callbacks)


def _check_start(stream, method, cfg, out_dir, resume, data_root, progress, keep) -> tuple[_Run, int]:
    """Everything that can be checked before anything is written: the method name, the config, the
    stream, the folder, the resume point and the data of every task still to come (a bad folder at
    position 3 fails now, not after two rounds of training; errors name the file)."""
    if keep not in ("all", "last"):
        raise ValueError(f"keep_checkpoints must be 'all' or 'last', got {keep!r}")
    method_cls = get_method(method)
    # config.json records what the method trains with (c2gr-norups: prompt.rups false), never the caller's cfg.
    cfg = validate(method_cls.resolve_config(copy.deepcopy(cfg)))
    entries = resolve_entries(stream)
    cards = [entry_card(e) for e in entries]
    names = [c.name for c in cards]
    if len(set(names)) != len(names):
        raise ValueError(f"stream has duplicate tasks: {names}")
    main = distributed.is_main()
    run = _Run(Path(out_dir), method, method_cls, cfg, entries, cards, names, data_root, progress and main, main,
               keep, {"entries": [str(e) for e in entries], "tasks": names, "method": method})
    start = _resume_point(run) if rundir.holds_run(run.out, resume) else 0
    for j in range(start, run.T):
        if entries[j].kind != "synthetic":
            run.load(j)
    return run, start


def _claim(run: _Run, held: contextlib.ExitStack, resume: bool, start: int) -> int:
    """Rank 0 takes the folder: creates it, holds its lock for the run; returns the resume point."""
    run.out.mkdir(parents=True, exist_ok=True)
    held.enter_context(rundir.lock(run.out))
    # Another run may have written here between the check and the lock.
    return _resume_point(run) if rundir.holds_run(run.out, resume) else start


def _resume_point(run: _Run) -> int:
    """The first round a resumed run trains; refuses a run made with another config or stream."""
    out = run.out
    diff = config_diff(ExperimentConfig.load(out / "config.json"), run.cfg)
    if diff:
        raise ValueError(f"{out / 'config.json'}: the run being resumed was made with another config "
                         f"(in the run vs now): {'; '.join(diff)}")
    if (out / "stream.json").is_file():
        info = read_json(out / "stream.json")
        diff = [f"{k}: {info.get(k)!r} vs {v!r}" for k, v in run.stream_info.items()
                if not isinstance(info, dict) or info.get(k) != v]
        if diff:
            raise ValueError(f"{out / 'stream.json'}: the stream or method differs from the run being resumed "
                             f"(in the run vs now): {'; '.join(diff)}")
    return rundir.read_progress(out, run.T)  # 0 when started and no round finished: round 0 again


def _prepare(run: _Run, start: int):
    """The method (and on resume its state and tables) as round `start` begins."""
    cfg, out, T = run.cfg, run.out, run.T
    _seed_everything(cfg.train.seed)
    # Rank 0 encodes (and fills the embedding cache); the others take its embeddings.
    emb = task_embeddings(cfg, run.cards, cache_dir=out / "cache") if run.main else None
    emb = distributed.broadcast_object(emb)
    # One scratch folder per rank: every rank synthesises its own replay copy (distributed module doc).
    work = out / "work" if distributed.world_size() == 1 else out / "work" / f"rank{distributed.rank()}"
    ctx = make_context(cfg, run.cards, emb, work, distributed.local_device(cfg.train.device), run.progress)
    m: Method = run.method_cls(ctx)
    _set_numerics(run, m, start)
    D = np.full((T, T), np.nan)
    per_class: dict = {}
    timings: list = []
    if start > 0:
        load_checkpoint(out / "checkpoints" / f"round_{start - 1:02d}.pt", m)
        # Rounds from `start` on may have been written before a crash hit their commit point: they re-run.
        D = read_matrix(out / "matrix.csv", run.names)
        D[start:] = np.nan
        per_class = {k: v for k, v in read_json(out / "per_class.json").items() if int(k) < start}
        timings = [r for r in read_json(out / "timings.json") if isinstance(r, dict) and r.get("round", T) < start]
    return m, D, per_class, timings


def _set_numerics(run: _Run, m: Method, start: int) -> None:
    """fp32 or bf16, the memory layout and the kernels (training/numerics.py): a resumed run takes what its start
    recorded (bit-equal resume); a new one resolves train.amp_bf16, rank 0 measuring for all ranks."""
    if start > 0:
        numerics = rundir.read_numerics(run.out, run.cfg)
    else:
        numerics = (resolve_numerics(run.cfg.train.amp_bf16, m.probe_networks(), m.ctx.device, m.one_forward_step)
                    if run.main else None)
        numerics = distributed.broadcast_object(numerics)
    m.ctx.numerics = numerics
    numerics.apply(m.modules().values())


def _train_round(run: _Run, m: Method, t: int, access: TaskAccess, callbacks) -> dict:
    """Replay for the past tasks, then fit on task t (+ replay); returns the round's timing record."""
    _seed_everything(m.ctx.round_seed(t))
    access.begin_round(t)
    t0 = time.perf_counter()
    m.before_round(t, access)
    store = m.replay(t)
    n_replay = len(store) if store is not None else 0  # before fit/after_round may add to the store
    t1 = time.perf_counter()
    if store is not None and run.main:
        rundir.write_samples(store, run.out / "samples" / f"round_{t:02d}")
    cbs = list(callbacks) + ([TqdmCallback(desc=f"{run.method}: train {run.names[t]}")] if run.progress else [])
    history = m.fit(t, access, store, callbacks=cbs) or {}
    t2 = time.perf_counter()
    m.after_round(t, access)
    return {"round": t, "task": run.names[t], "replay_s": t1 - t0, "fit_s": t2 - t1, "eval_s": None,
            "replay_pairs": n_replay,
            "final_loss": history.get("loss", [float("nan")])[-1] if history else None}


def _evaluate_round(run: _Run, m: Method, t: int, tests: dict, D: np.ndarray, per_class: dict) -> None:
    """Row t of D and its per-class DSC; under DDP the ranks split the tasks and share the results."""
    mine = {}
    for j in range(distributed.rank(), t + 1, distributed.world_size()):
        if j not in tests:
            tests[j] = run.load(j)  # the evaluation alone reads test splits
        mine[j] = evaluate(m, tests[j], j)
    row = distributed.gather_dict(mine)
    for j in range(t + 1):
        card = run.cards[j]
        D[t, j] = task_dsc(torch.from_numpy(row[j]), card.n_classes)
        per_class.setdefault(str(t), {})[run.names[j]] = {
            c: (None if np.isnan(v) else float(v)) for c, v in zip(card.classes, row[j])}


def _round_metrics(m: Method, t: int, D: np.ndarray, names: list[str]) -> dict:
    done = D[: t + 1, : t + 1]
    return {"completed_rounds": t + 1, "tasks": names, "method": m.name,
            "privacy_preserving": m.privacy_preserving, "learnable_params": m.n_learnable_params(),
            **summarize(done), "final_row": dict(zip(names[: t + 1], map(float, done[-1]))),
            "complete": t + 1 == len(names)}


def _rounds(run: _Run, m: Method, D, per_class, timings, start, max_rounds, callbacks) -> RunResult:
    T, names = run.T, run.names
    access = TaskAccess(run.cards, run.load, privileged=m.reads_past_data)
    tests: dict[int, TaskData] = {}
    stop = T if max_rounds is None else min(T, max_rounds)
    rounds = tqdm(range(start, stop), desc=f"{run.method} rounds", initial=start, total=T, disable=not run.progress)
    for t in rounds:
        timing = _train_round(run, m, t, access, callbacks)
        t2 = time.perf_counter()
        _evaluate_round(run, m, t, tests, D, per_class)
        timing["eval_s"] = time.perf_counter() - t2
        timings.append(timing)
        if run.main:
            rundir.write_round(run.out, t, m.state_dict(), D, names, _round_metrics(m, t, D, names), per_class,
                               timings, run.keep)
        distributed.barrier()  # round t is on disk before any rank goes on (or reads metrics.json)
        if run.main:
            rounds.write(f"{run.method} round {t + 1}/{T} {names[t]}: DSC {100 * D[t, t]:.1f} % on it, "
                         f"{100 * np.nanmean(D[t, :t + 1]):.1f} % mean over {t + 1} seen | replay "
                         f"{timing['replay_pairs']} pairs {timing['replay_s']:.1f}s, fit {timing['fit_s']:.1f}s")
    if run.main and start == T:
        rundir.tidy(run.out, T - 1, run.keep, T)  # a crash may have hit between the last commit and its tidying
    metrics = json.loads((run.out / "metrics.json").read_text()) if (run.out / "metrics.json").exists() else {}
    return RunResult(run.out, D, metrics, m)
