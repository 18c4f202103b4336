"""Drift of a generator through its own replay, round by round, from a finished run.

    python benchmarks/replay_drift.py RUN_DIR [RUN_DIR ...] [--out benchmarks/results/replay_drift.json]

A generative method's generator learns round t from the current task plus pairs it generated itself
for the earlier tasks; errors it makes are learnt again and can grow. The run keeps a sample of every
round's replay (samples/round_XX/task_YY.npz, the pairs the segmentor trained on). Each kept set is
scored by the correspondence DSC against a per-task reference segmentor trained on 400 pairs of its
own seed (as in generator_recipes.py): drift[r][j] for past task j at round r (drift_per_class[r][j]:
one DSC per foreground class). A generator that keeps a task has a flat column; drift shows as a
column falling with r.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import RESULTS, add_threads_arg, write_json  # noqa: E402
from benchmarks.generator_recipes import train_reference  # noqa: E402
from c2gr_core.analysis.inspection import load_pairs, replay_samples  # noqa: E402
from c2gr_core.analysis.quality import correspondence_dsc  # noqa: E402
from c2gr_core.experiment.runs import method_context, read_run, run_cards  # noqa: E402
from c2gr_core.config import ExperimentConfig  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run directories of generative methods")
    ap.add_argument("--ref-steps", type=int, default=400)
    add_threads_arg(ap)
    ap.add_argument("--out", default=str(RESULTS / "replay_drift.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    refs: dict = {}   # (stream, task, image size) -> reference: shared by runs of one stream
    result = {"reference_pairs": 400, "runs": {}}
    for run in map(Path, args.runs):
        info = read_run(run)
        cfg = ExperimentConfig.load(run / "config.json")
        cards = run_cards(run)
        ctx = method_context(cfg, cards, cache_dir=run / "cache")
        kept = replay_samples(run)
        if not kept:
            raise SystemExit(f"{run}: no samples/round_XX folders: not a generative-replay run")
        names = [c.name for c in cards]
        T = len(names)
        drift = [[None] * T for _ in range(T)]
        per_class = [[None] * T for _ in range(T)]   # a mean hides a small structure the generator stopped drawing
        ref_dsc = {}
        for j in range(T - 1):
            key = (tuple(names), j, cfg.data.image_size)
            if key not in refs:
                refs[key] = train_reference(ctx, j, args.ref_steps, log)
            ref, ref_dsc[names[j]] = refs[key]
            for r, files in kept.items():
                if j in files:
                    images, masks = load_pairs(files[j])
                    corr = correspondence_dsc(images, masks, ref, j, cards[j].n_classes)
                    drift[r][j] = corr["mean"]
                    per_class[r][j] = np.round(corr["per_class"], 4).tolist()
            log(f"{run.name} {names[j]}: " + " ".join(f"{d:.2f}" for d in (drift[r][j] for r in range(T))
                                                      if d is not None))
        per_round = [float(np.nanmean([d for d in row if d is not None])) if any(d is not None for d in row)
                     else None for row in drift]
        result["runs"][run.name] = {"run": str(run), "method": info.get("method"), "tasks": names,
                                    "reference_test_dsc": ref_dsc, "drift": drift, "drift_per_class": per_class,
                                    "mean_over_past_tasks_per_round": per_round}
    out = write_json(result, args.out)
    log(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
