"""Shared helpers of the benchmark scripts: atomic JSON output and the method-table run layout."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TABLE_RUNS = RESULTS / "method_table" / "runs"


def write_json(obj, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)
    return path


def finished_run(runs: str | os.PathLike, method: str, seed: int = 0) -> Path:
    """The method-table run of `method`; a clear error when it is missing or unfinished."""
    d = Path(runs) / f"{method}-s{seed}"
    m = d / "metrics.json"
    if not m.is_file() or not json.loads(m.read_text()).get("complete", False):
        raise SystemExit(f"{d}: no finished {method!r} run; run `python benchmarks/method_table.py "
                         f"--methods {method}` first (or pass --runs)")
    return d


def put_row(path: str | os.PathLike, key: str, row: dict) -> Path:
    """Set one row of a `{"rows": {key: row}}` results file, keeping the others (resumable sweeps)."""
    path = Path(path)
    rows = json.loads(path.read_text())["rows"] if path.is_file() else {}
    rows[key] = row
    return write_json({"rows": rows}, path)


def default_threads() -> int:
    """torch threads of a benchmark given no --threads: OMP_NUM_THREADS when set (the Makefile exports 2;
    `make test` runs two workers of 1, and a smoke test at 2 would oversubscribe the cores), else 2, the
    2-core machines the figures are measured on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return 2


def add_threads_arg(ap) -> None:
    """The --threads option every training or sampling benchmark takes (default: `default_threads`)."""
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="torch threads (default: OMP_NUM_THREADS, else 2)")


def run_wall_s(run: str | os.PathLike) -> float:
    """Seconds a finished run spent replaying, training and evaluating, from its timings.json."""
    timings = json.loads((Path(run) / "timings.json").read_text())
    return sum(t["replay_s"] + t["fit_s"] + t["eval_s"] for t in timings)


def cpu_model() -> str:
    # platform.processor() is empty or "x86_64" on Linux, and a VM's model name often hides the
    # generation: the bf16 instructions decide what bf16 gains, so they are named too.
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if name and flags:
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    return f"{name} ({', '.join(bf16)})" if bf16 else name
