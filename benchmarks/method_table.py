"""The method table (the paper's Table 1 at CPU scale): every method on one synthetic sub-stream.

    python benchmarks/method_table.py                       # all methods, bench preset, seed 0
    python benchmarks/method_table.py --methods c2gr joint  # a subset (the others are kept if present)
    python benchmarks/method_table.py --quick --out /tmp/t  # smoke: tiny preset, 2 tasks, 1 epoch
    python benchmarks/method_table.py --seed 1 --methods c2gr gr   # another seed (its own run dirs)
    python benchmarks/method_table.py --aggregate           # mean +- std over every seed finished

The sub-stream (STREAM) is 9 synthetic twins of the paper-20 stream that keep every kind of shift:
sites of one modality (fundus-a -> fundus-c), MR vendors (mms-a -> mms-b), MR sequences
(brats-t1 -> brats-flair), a change of objective within an anatomy (kits -> lits, abdominal CT)
and changes of modality (fundus -> MR -> CT -> ultrasound, busi).

Methods run one after the other in this process (never in parallel: the machine has 2 cores) into
OUT/runs/<method>-s<seed>/. A finished run is skipped and an interrupted one is resumed from its
last finished round, so re-running the command continues an interrupted table. At the end the
table is rebuilt from every finished run: OUT/method_table.json (Overall, BWT, TL per method, the
full C2GR matrix, C2GR/JointTrain ratio, timings) and the write_report files (summary.md,
matrices.png, ...) in OUT/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; without it a missing model hangs ~50 s

from c2gr_core.config import preset  # noqa: E402
from c2gr_core.methods import available_methods  # noqa: E402
from c2gr_core.analysis.report import write_report  # noqa: E402
from c2gr_core.experiment.runner import run_stream  # noqa: E402

STREAM = ["synthetic:fundus-a", "synthetic:fundus-c", "synthetic:mms-a", "synthetic:mms-b",
          "synthetic:brats-t1", "synthetic:brats-flair", "synthetic:kits", "synthetic:lits", "synthetic:busi"]
QUICK_STREAM = ["synthetic:fundus-a", "synthetic:mms-a"]
# C2GR and the JointTrain reference first, then the cheap segmentor-only methods, then the other
# generative ones (C2GR takes about 55 minutes at the bench preset on a 2-core EPYC), so that a table
# cut short still answers the main questions.
ORDER = ["c2gr", "joint", "finetune", "replay-buffer", "ewc", "distill", "individual", "gr", "c2gr-njd",
         "c2gr-norups", "cgr"]
RESULTS = Path(__file__).parent / "results"
# Table 1 of the paper (20 tasks, 256^2, GPU): Overall / BWT / TL in %.
PAPER = {"c2gr": (83.62, 98.16, 85.24), "joint": (86.06, 100.00, 86.06), "finetune": (25.23, 30.98, 84.50),
         "ewc": (26.74, 36.46, 81.07), "gr": (75.54, 93.78, 82.52), "cgr": (81.89, 96.14, 84.16),
         "individual": (85.80, 100.00, 85.80), "distill": (46.25, 68.03, 82.46)}  # distill ~ PLOP


def bench_config(quick: bool, seed: int):
    if quick:
        cfg = preset("tiny")
        cfg.prompt.encoder = "hash"   # smoke: no sentence-encoder load
        cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 8, 2, 4
        cfg.train.epochs, cfg.train.batch_size, cfg.train.replay_per_task = 1, 8, 4
        cfg.diffusion.sample_steps = 2
    else:
        cfg = preset("bench")
    cfg.train.seed = seed
    return cfg


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / f"{method}-s{seed}"


def is_complete(d: Path) -> bool:
    m = d / "metrics.json"
    return m.is_file() and json.loads(m.read_text()).get("complete", False)


def run_methods(methods, stream, cfg, out: Path, seed: int, log=print) -> None:
    for name in methods:
        d = run_dir(out, name, seed)
        if is_complete(d):
            log(f"[skip] {name}: finished run in {d}")
            continue
        resume = (d / "progress.json").is_file()
        log(f"[run ] {name} -> {d}{' (resuming)' if resume else ''}  {datetime.now():%H:%M:%S}")
        t0 = time.perf_counter()
        res = run_stream(stream, name, cfg, d, resume=resume, progress=False, keep_checkpoints="last")
        log(f"[done] {name}: Overall {100 * res.metrics['overall']:.2f} BWT {100 * res.metrics['bwt']:.2f} "
            f"TL {100 * res.metrics['tl']:.2f}  ({time.perf_counter() - t0:.0f} s)")


def build_table(out: Path, seed: int, methods) -> dict:
    done = [m for m in methods if is_complete(run_dir(out, m, seed))]
    if not done:
        raise SystemExit(f"no finished run under {out / 'runs'}")
    rows = write_report([run_dir(out, m, seed) for m in done], out)
    table = {}
    for r in rows:
        d = Path(r["run"])
        timings = json.loads((d / "timings.json").read_text())
        table[r["method"]] = {"overall": r["overall"], "bwt": r["bwt"], "tl": r["tl"],
                              "learnable_params": r["learnable_params"],
                              "privacy_preserving": r["privacy_preserving"],
                              "final_row": dict(zip(r["tasks"], (100 * np.asarray(r["matrix"][-1])).tolist())),
                              "wall_s": sum(t["replay_s"] + t["fit_s"] + t["eval_s"] for t in timings),
                              "paper_overall_bwt_tl": PAPER.get(r["method"]), "run": str(d)}
    first = run_dir(out, done[0], seed)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": seed,
              "config": json.loads((first / "config.json").read_text()),
              "tasks": json.loads((first / "stream.json").read_text())["tasks"],
              "environment": json.loads((first / "environment.json").read_text()),
              "methods": table, "missing": [m for m in methods if m not in done]}
    if "c2gr" in done:
        D = rows[[r["method"] for r in rows].index("c2gr")]["matrix"]
        result["c2gr_matrix_percent"] = [[None if np.isnan(v) else round(100 * v, 2) for v in row] for row in D]
    if "c2gr" in table and "joint" in table:
        result["c2gr_over_joint_overall"] = table["c2gr"]["overall"] / table["joint"]["overall"]
        result["paper_c2gr_over_joint_overall"] = 83.62 / 86.06
    tmp = out / "method_table.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "method_table.json")
    return result


def aggregate(out: Path, methods) -> dict:
    """Mean and sample std (ddof 1) of Overall / BWT / TL over the seeds finished for each method:
    OUT/seeds.json and OUT/seeds.md. A method with one seed gets no std."""
    rows = {}
    for m in methods:
        runs = sorted((out / "runs").glob(f"{m}-s[0-9]*"), key=lambda d: int(d.name.rsplit("-s", 1)[1]))
        done = [d for d in runs if d.name.rsplit("-s", 1)[0] == m and is_complete(d)]
        if not done:
            continue
        vals = {k: [100 * json.loads((d / "metrics.json").read_text())[k] for d in done] for k in ("overall", "bwt", "tl")}
        rows[m] = {"seeds": [int(d.name.rsplit("-s", 1)[1]) for d in done],
                   **{k: {"values": v, "mean": float(np.mean(v)),
                          "std": float(np.std(v, ddof=1)) if len(v) > 1 else None} for k, v in vals.items()}}
    joint = rows.get("joint", {}).get("overall", {}).get("mean")
    fmt = lambda r: f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else "")  # noqa: E731
    lines = ["| method | seeds | Overall | BWT | TL | % of JointTrain Overall |", "|---|---|---|---|---|---|"]
    for m, r in rows.items():
        share = f"{100 * r['overall']['mean'] / joint:.1f} %" if joint else "-"
        lines.append(f"| {m} | {', '.join(map(str, r['seeds']))} | {fmt(r['overall'])} | {fmt(r['bwt'])} | "
                     f"{fmt(r['tl'])} | {share} |")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "std": "sample (ddof 1)",
              "methods": rows}
    (out / "seeds.json").write_text(json.dumps(result, indent=2))
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=None, help=f"default: all, in this order: {ORDER}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "method_table"))
    ap.add_argument("--quick", action="store_true", help="smoke size: tiny preset, 2 tasks, 1 epoch")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on the shared 2-core machine 2 threads ran ~3x slower)")
    ap.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    ap.add_argument("--aggregate", action="store_true", help="only write mean +- std over the finished seeds")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = args.methods or ORDER
    unknown = sorted(set(methods) - set(available_methods()))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {available_methods()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.aggregate:
        return aggregate(out, list(dict.fromkeys(ORDER + methods)))
    stream = QUICK_STREAM if args.quick else STREAM
    if not args.table_only:
        run_methods(methods, stream, bench_config(args.quick, args.seed), out, args.seed)
    result = build_table(out, args.seed, list(dict.fromkeys(ORDER + methods)))
    for m, r in result["methods"].items():
        print(f"{m:14s} Overall {r['overall']:6.2f}  BWT {r['bwt']:6.2f}  TL {r['tl']:6.2f}  {r['wall_s']:6.0f} s")
    if "c2gr_over_joint_overall" in result:
        print(f"C2GR / JointTrain Overall = {100 * result['c2gr_over_joint_overall']:.1f} % (paper 97.2 %)")
    print(f"written: {out / 'method_table.json'}")
    return result


if __name__ == "__main__":
    main()
