"""The segmentor's budget per round, chosen on the validation split: how much of the gap between the
replay buffer and JointTrain is too few segmentor steps?

    python benchmarks/segmentor_budget.py --method replay-buffer --set train.epochs=16 --seed 0
    python benchmarks/segmentor_budget.py --quick --method replay-buffer --out DIR      # smoke
    python benchmarks/segmentor_budget.py --method c2gr --n-tasks 6 ...                  # the first six tasks only

Each variant is the bench preset with the `--set` overrides and a larger validation split
(`--n-val`, 64 by default: the synthetic twins draw every split from its own indices, so train and
test stay the pairs the method table uses). The stream is trained as in the method table; then the
final model is scored on every task's validation split. The choice of a budget reads the
validation columns only; the test figures (the run's matrix) are recorded beside them so that the
chosen setting's effect can be reported, never to choose it.

One row per variant and seed in OUT/segmentor_budget.json: overrides, validation Overall (mean
over tasks of the final model's DSC) and per task, test Overall / BWT / TL and final row, wall time.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import RESULTS, add_threads_arg, put_row, run_wall_s  # noqa: E402
from benchmarks.method_table import QUICK_STREAM, STREAM, bench_config, is_complete  # noqa: E402
from c2gr_core.experiment.runner import load_stream_task, resolve_entries, run_stream  # noqa: E402
from c2gr_core.experiment.runs import load_method, read_run  # noqa: E402
from c2gr_core.experiment.tasks import evaluate_split  # noqa: E402
from c2gr_core.interface.cli import apply_overrides  # noqa: E402
from c2gr_core.losses import task_dsc  # noqa: E402


def validation_row(run: Path, stream, cfg) -> dict[str, float]:
    """DSC (%) of the run's final model on each task's validation split."""
    m = load_method(run)
    entries = resolve_entries(stream)
    out = {}
    for j, card in enumerate(m.ctx.cards):
        data = load_stream_task(entries, j, cfg)
        per_class = evaluate_split(lambda x, j=j: m.predict(x, j), data.val, card.n_classes)
        out[card.name] = 100 * float(task_dsc(torch.from_numpy(per_class), card.n_classes))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="replay-buffer")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--name", help="row name (default: method and overrides)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-val", type=int, default=64, help="validation pairs per task (default 64)")
    ap.add_argument("--out", default=str(RESULTS / "segmentor_budget"))
    ap.add_argument("--quick", action="store_true", help="smoke size: tiny preset, 2 tasks, 1 epoch")
    add_threads_arg(ap)
    ap.add_argument("--n-tasks", type=int, default=None,
                    help="only the first N tasks of the stream (a shorter probe; the row name gets _tasks-N)")
    args = ap.parse_args(argv)
    if args.n_val < 1:
        raise SystemExit(f"--n-val must be >= 1, got {args.n_val}")
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(bench_config(args.quick, args.seed), args.overrides)
    cfg.data.n_val = args.n_val
    stream = QUICK_STREAM if args.quick else STREAM
    if args.n_tasks is not None:
        if not 1 <= args.n_tasks <= len(stream):
            raise SystemExit(f"--n-tasks must be in 1..{len(stream)}, got {args.n_tasks}")
        stream = stream[:args.n_tasks]
    name = args.name or "_".join([args.method, *(o.replace("=", "-") for o in args.overrides),
                                  *([f"tasks-{args.n_tasks}"] if args.n_tasks is not None else [])])
    out = Path(args.out)
    d = out / "runs" / f"{name}-s{args.seed}"
    if not is_complete(d):
        run_stream(stream, args.method, cfg, d, resume=(d / "progress.json").is_file(), progress=False,
                   keep_checkpoints="last")
    info = read_run(d)
    m = info["metrics"]
    val = validation_row(d, stream, cfg)
    row = {"name": name, "method": args.method, "seed": args.seed, "overrides": args.overrides,
           "n_val": args.n_val, "val_overall": float(np.mean(list(val.values()))), "val_final_row": val,
           "test_overall": 100 * m["overall"], "test_bwt": 100 * m["bwt"], "test_tl": 100 * m["tl"],
           "test_final_row": dict(zip(info["tasks"], (100 * info["matrix"][-1]).round(2).tolist())),
           "wall_s": run_wall_s(d), "run": str(d)}
    path = out / "segmentor_budget.json"
    put_row(path, f"{name}-s{args.seed}", row)
    print(f"{name} s{args.seed}: val {row['val_overall']:.2f} | test Overall {row['test_overall']:.2f} "
          f"BWT {row['test_bwt']:.2f} TL {row['test_tl']:.2f} ({row['wall_s']:.0f} s)")
    return row


if __name__ == "__main__":
    main()
