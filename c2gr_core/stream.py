"""The continual stream runner (the workbench's main job, sec. 3.3 and 4.1.2).

For each round t: replay synthesis for past tasks -> prompts -> training on task t (+ replay)
-> evaluation of the segmentor on every seen task's test split -> row t of the DSC matrix ->
round t written atomically to the run directory (the resume point).

Run directory (DESIGN.md): config.json, stream.json, matrix.csv, metrics.json, per_class.json,
timings.json, environment.json, progress.json (the commit point of a round),
checkpoints/round_XX.pt, samples/round_XX/task_YY.npz (replayed pairs kept for inspection).
Its safety rules (lock, which folders a run may write into, what it may delete) live in
c2gr_core.rundir; everything a run can check is checked before it writes anything.

Under `torchrun` (see c2gr_core.distributed) run_stream opens the process group itself and closes
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
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from data_catalog.catalog import StreamEntry, entry_card, load_stream, load_task, parse_entry
from data_catalog.taskdata import TaskData

from . import distributed, rundir
from .access import TaskAccess
from .config import ExperimentConfig, config_diff, validate
from .losses import dice_per_class, task_dsc
from .methods import get_method
from .methods.base import Method, StreamContext
from .metrics import summarize
from .prompts import encode_tasks
from .text_encoders import get_text_encoder
from .trainer import TqdmCallback

N_INSPECT = 16  # replayed pairs per past task kept on disk for the replay inspector


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_entries(stream: str | os.PathLike | Sequence) -> list[StreamEntry]:
    if isinstance(stream, (str, os.PathLike)):
        return load_stream(stream)
    return [e if isinstance(e, StreamEntry) else parse_entry(e) for e in stream]


def load_stream_task(entries: list[StreamEntry], j: int, cfg: ExperimentConfig,
                     data_root: str | None = None) -> TaskData:
    """Task j of a stream as every round of a run sees it (seed + j: each task its own split draw).
    The one place this rule lives, so tools that re-read a run get the same data."""
    d = cfg.data
    return load_task(entries[j], image_size=d.image_size, seed=cfg.train.seed + j,
                     data_root=data_root or d.data_root, n_synthetic=(d.n_train, d.n_val, d.n_test))


def environment_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "git_commit": commit,
            "world_size": distributed.world_size()}  # processes that trained the run (torchrun/DDP)


@dataclass
class RunResult:
    out_dir: Path
    matrix: np.ndarray           # (T, T) DSC fractions, NaN above the diagonal
    metrics: dict
    method: Method


def evaluate(method: Method, test: TaskData, task: int, batch_size: int = 64) -> np.ndarray:
    """Per-class DSC of `method` on one task's whole test split (aggregated over the split)."""
    split = test.test
    preds = [method.predict(torch.from_numpy(np.asarray(split.images[s:s + batch_size])), task)
             for s in range(0, len(split), batch_size)]
    pred = torch.cat(preds)
    return np.asarray(dice_per_class(pred, torch.from_numpy(np.asarray(split.masks)).long(),
                                     test.card.n_classes), dtype=np.float64)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def run_stream(stream, method: str, cfg: ExperimentConfig, out_dir: str | os.PathLike, resume: bool = False,
               data_root: str | None = None, progress: bool = True, callbacks=(),
               keep_checkpoints: str = "all", max_rounds: int | None = None) -> RunResult:
    """Run `method` over `stream` (a stream name, a stream YAML, or a list of entries).

    max_rounds stops after that many rounds in total (used to simulate an interruption).
    Started by torchrun, the call trains with DDP over the torchrun processes (module doc).
    """
    created = distributed.init_from_env(cfg.train.device)
    try:
        return _run_stream(stream, method, cfg, out_dir, resume, data_root, progress, callbacks,
                           keep_checkpoints, max_rounds)
    finally:
        distributed.shutdown(created)


def _run_stream(stream, method, cfg, out_dir, resume, data_root, progress, callbacks, keep_checkpoints,
                max_rounds) -> RunResult:
    if keep_checkpoints not in ("all", "last"):
        raise ValueError(f"keep_checkpoints must be 'all' or 'last', got {keep_checkpoints!r}")
    method_cls = get_method(method)   # fail on a bad name before touching the disk
    # config.json records what the method trains with (c2gr-norups: prompt.rups false), never the caller's cfg.
    cfg = validate(method_cls.resolve_config(copy.deepcopy(cfg)))
    entries = resolve_entries(stream)
    cards = [entry_card(e) for e in entries]
    names = [c.name for c in cards]
    if len(set(names)) != len(names):
        raise ValueError(f"stream has duplicate tasks: {names}")
    T = len(entries)
    out = Path(out_dir)
    main = distributed.is_main()
    progress = progress and main
    stream_info = {"entries": [str(e) for e in entries], "tasks": names, "method": method}

    def load(j: int) -> TaskData:
        return load_stream_task(entries, j, cfg, data_root)

    # Everything that can be checked is checked before anything is written: the folder, the
    # resume point, and the data of every task still to come (a bad folder at position 3 fails now,
    # not after two rounds of training; errors name the file).
    start = _resume_point(out, cfg, stream_info, T) if rundir.holds_run(out, resume) else 0
    for j in range(start, T):
        if entries[j].kind != "synthetic":
            load(j)
    created = rundir.first_missing(out) if main else None
    before = set(os.listdir(out)) if main and created is None else set()
    # Every rank has read the directory's state before rank 0 writes anything into it.
    distributed.barrier()
    owned = False  # the lock is held and the folder re-checked: from here on a failed start is undone
    with contextlib.ExitStack() as held:
        try:
            if main:
                out.mkdir(parents=True, exist_ok=True)
                held.enter_context(rundir.lock(out))
                # Another run may have written here between the check above and the lock.
                if rundir.holds_run(out, resume):
                    start = _resume_point(out, cfg, stream_info, T)
                owned = True
            distributed.barrier()  # the folder is rank 0's before any rank writes its scratch into it
            m, D, per_class, timings = _prepare(out, method_cls, cfg, cards, names, start, progress, main)
            if main and start == 0:
                # config.json last: it marks the folder as a run that `--resume` continues.
                atomic_write(out / "stream.json", json.dumps(stream_info, indent=2))
                atomic_write(out / "environment.json", json.dumps(environment_info(), indent=2))
                atomic_write(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
                (out / "checkpoints").mkdir(exist_ok=True)
        except BaseException:
            if owned and start == 0 and not resume:
                held.close()
                rundir.rollback(out, created, before)  # a run that never started leaves nothing new
            raise
        return _rounds(out, m, D, per_class, timings, start, T, max_rounds, entries, cfg, data_root, cards,
                       names, method, callbacks, progress, main, keep_checkpoints)


def _resume_point(out: Path, cfg: ExperimentConfig, stream_info: dict, T: int) -> int:
    """The first round a resumed run trains; refuses a run made with another config or stream."""
    from .runs import read_json  # runs imports this module; import at use

    saved = ExperimentConfig.load(out / "config.json")
    diff = config_diff(saved, cfg)
    if diff:
        raise ValueError(f"{out / 'config.json'}: the run being resumed was made with another config "
                         f"(in the run vs now): {'; '.join(diff)}")
    if (out / "stream.json").is_file():
        info = read_json(out / "stream.json")
        diff = [f"{k}: {info.get(k)!r} vs {v!r}" for k, v in stream_info.items()
                if not isinstance(info, dict) or info.get(k) != v]
        if diff:
            raise ValueError(f"{out / 'stream.json'}: the stream or method differs from the run being resumed "
                             f"(in the run vs now): {'; '.join(diff)}")
    if not (out / "progress.json").is_file():
        return 0  # started, no round finished: round 0 again
    done = read_json(out / "progress.json")
    done = done.get("completed_rounds") if isinstance(done, dict) else None
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= T:
        raise ValueError(f"{out / 'progress.json'}: completed_rounds must be an integer in 0..{T}, got {done!r}")
    return done


def load_checkpoint(path: Path, method: Method, device=None) -> None:
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


def _prepare(out, method_cls, cfg, cards, names, start, progress, main):
    """The method (and on resume its state and tables) as round `start` begins."""
    from .runs import read_json, read_matrix

    device = distributed.local_device(cfg.train.device)
    _seed_everything(cfg.train.seed)
    # Rank 0 encodes (and fills the embedding cache); the others take its embeddings.
    emb = encode_tasks(cards, get_text_encoder(cfg.prompt), cache_dir=out / "cache") if main else None
    emb = distributed.broadcast_object(emb)
    # One scratch folder per rank: every rank synthesises its own replay copy (distributed module doc).
    work = out / "work" if distributed.world_size() == 1 else out / "work" / f"rank{distributed.rank()}"
    ctx = StreamContext(cfg=cfg, cards=cards, emb=emb, work_dir=work, device=device, progress=progress)
    m: Method = method_cls(ctx)
    T = len(names)
    D = np.full((T, T), np.nan)
    per_class: dict = {}
    timings: list = []
    if start > 0:
        load_checkpoint(out / "checkpoints" / f"round_{start - 1:02d}.pt", m)
        # Rounds from `start` on may have been written before a crash hit their commit point: they re-run.
        D = read_matrix(out / "matrix.csv", names)
        D[start:] = np.nan
        per_class = {k: v for k, v in read_json(out / "per_class.json").items() if int(k) < start}
        timings = [r for r in read_json(out / "timings.json") if isinstance(r, dict) and r.get("round", T) < start]
    return m, D, per_class, timings


def _rounds(out, m, D, per_class, timings, start, T, max_rounds, entries, cfg, data_root, cards, names, method,
            callbacks, progress, main, keep_checkpoints) -> RunResult:
    ctx = m.ctx

    def load(j: int) -> TaskData:
        return load_stream_task(entries, j, cfg, data_root)

    access = TaskAccess(cards, load, privileged=m.reads_past_data)
    tests: dict[int, TaskData] = {}
    stop = T if max_rounds is None else min(T, max_rounds)
    rounds = tqdm(range(start, stop), desc=f"{method} rounds", initial=start, total=T, disable=not progress)
    for t in rounds:
        _seed_everything(ctx.round_seed(t))
        access.begin_round(t)
        t0 = time.perf_counter()
        m.before_round(t, access)
        store = m.replay(t)
        n_replay = len(store) if store is not None else 0  # before fit/after_round may add to the store
        t1 = time.perf_counter()
        if store is not None and main:
            _keep_samples(store, out / "samples" / f"round_{t:02d}")
        cbs = list(callbacks) + ([TqdmCallback(desc=f"train {names[t]}")] if progress else [])
        history = m.fit(t, access, store, callbacks=cbs) or {}
        t2 = time.perf_counter()
        m.after_round(t, access)
        mine = {}  # under DDP the ranks split the evaluation by task and share the results
        for j in range(distributed.rank(), t + 1, distributed.world_size()):
            if j not in tests:
                tests[j] = load(j)  # the evaluation alone reads test splits
            mine[j] = evaluate(m, tests[j], j)
        row = distributed.gather_dict(mine)
        for j in range(t + 1):
            dsc = row[j]
            D[t, j] = task_dsc(torch.from_numpy(dsc), cards[j].n_classes)
            per_class.setdefault(str(t), {})[names[j]] = {
                c: (None if np.isnan(v) else float(v)) for c, v in zip(cards[j].classes, dsc)}
        t3 = time.perf_counter()
        timings.append({"round": t, "task": names[t], "replay_s": t1 - t0, "fit_s": t2 - t1, "eval_s": t3 - t2,
                        "replay_pairs": n_replay,
                        "final_loss": history.get("loss", [float("nan")])[-1] if history else None})
        if main:
            _write_round(out, t, m, D, names, per_class, timings, keep_checkpoints)
        distributed.barrier()  # round t is on disk before any rank goes on (or reads metrics.json)
        if main:
            rounds.write(f"round {t + 1}/{T} {names[t]}: DSC {100 * D[t, t]:.1f} on it, "
                         f"{100 * np.nanmean(D[t, :t + 1]):.1f} mean over {t + 1} seen | replay "
                         f"{timings[-1]['replay_pairs']} pairs {t1 - t0:.1f}s, fit {t2 - t1:.1f}s")
    if main and start == T:
        _tidy(out, T - 1, keep_checkpoints, T)  # a crash may have hit between the last commit and its tidying
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    return RunResult(out, D, metrics, m)


def _keep_samples(store, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for j in store.tasks():
        x, y = store.get(j)
        tmp = dst / f"task_{j:02d}.tmp.npz"
        np.savez_compressed(tmp, images=np.asarray(x[:N_INSPECT]), masks=np.asarray(y[:N_INSPECT]))
        os.replace(tmp, dst / f"task_{j:02d}.npz")


def _write_round(out: Path, t: int, m: Method, D: np.ndarray, names: list[str], per_class: dict,
                 timings: list, keep: str) -> None:
    T = len(names)
    atomic_save(m.state_dict(), out / "checkpoints" / f"round_{t:02d}.pt")
    rows = ["round," + ",".join(names)]
    for i in range(T):
        rows.append(names[i] + "," + ",".join("" if np.isnan(v) else repr(float(v)) for v in D[i]))
    atomic_write(out / "matrix.csv", "\n".join(rows) + "\n")
    done = D[: t + 1, : t + 1]
    metrics = {"completed_rounds": t + 1, "tasks": names, "method": m.name,
               "privacy_preserving": m.privacy_preserving, "learnable_params": m.n_learnable_params(),
               **summarize(done), "final_row": dict(zip(names[: t + 1], map(float, done[-1])))}
    metrics["complete"] = t + 1 == T
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write(out / "per_class.json", json.dumps(per_class, indent=2))
    atomic_write(out / "timings.json", json.dumps(timings, indent=2))
    # The commit point: a crash before this line re-runs round t on resume, from round t-1's checkpoint,
    # so older checkpoints go only now (and every older one: a crash may have left one behind).
    atomic_write(out / "progress.json", json.dumps({"completed_rounds": t + 1, "total_rounds": T}))
    _tidy(out, t, keep, T)


def _tidy(out: Path, t: int, keep: str, T: int) -> None:
    """What follows round t's commit (and is redone by a resume that finds nothing left to train)."""
    if keep == "last":
        for old in (out / "checkpoints").glob("round_*.pt"):
            if old.stem[6:].isdigit() and int(old.stem[6:]) < t:
                old.unlink()
    if t + 1 == T:
        rundir.remove_scratch(out / "work")
