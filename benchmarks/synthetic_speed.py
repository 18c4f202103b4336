"""Synthetic-generator speed: image-mask pairs per second for every task's twin, on one thread.

    python benchmarks/synthetic_speed.py [--size 64] [--n 512] [--repeats 3]

Each task renders --n pairs --repeats times; the time is the thread's CPU time (time.thread_time:
pairs per core-second, not disturbed by other processes sharing the machine) and the best run
counts. Writes benchmarks/results/synthetic_speed.json
(or --out) and prints a table.
"""
from __future__ import annotations

import os

# One thread, set before numpy / torch load their thread pools.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_catalog.synthetic import TWINS, render_pairs  # noqa: E402


def measure(task: str, size: int, n: int, repeats: int) -> float:
    render_pairs(task, 16, size)  # warm caches (interpolation matrices, coordinate grids)
    best = float("inf")
    for r in range(repeats):
        t0 = time.thread_time()
        render_pairs(task, n, size, seed=r)
        best = min(best, time.thread_time() - t0)
    return n / best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=512, help="pairs per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synthetic_speed.json")
    args = p.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    rates = {task: measure(task, args.size, args.n, args.repeats) for task in TWINS}
    result = {
        "what": f"synthetic image-mask pairs per second at {args.size}^2, one thread, CPU time, best of {args.repeats}",
        "size": args.size, "n": args.n, "repeats": args.repeats,
        "pairs_per_s": {k: round(v, 1) for k, v in rates.items()},
        "mean_pairs_per_s": round(float(np.mean(list(rates.values()))), 1),
        "min_pairs_per_s": round(float(min(rates.values())), 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"{'task':<14}{'pairs/s':>10}")
    for task, rate in rates.items():
        print(f"{task:<14}{rate:>10.0f}")
    print(f"{'mean':<14}{result['mean_pairs_per_s']:>10.0f}\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
