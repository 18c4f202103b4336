"""Does the replay draw the past tasks' structures at their real size, and does the segmentor inherit
the error? From a finished generative-replay run:

    python benchmarks/foreground_share.py RUN_DIR [RUN_DIR ...] [--out benchmarks/results/foreground_share.json]

(a run of a method without generated replay, e.g. the replay buffer of real pairs, gives the
segmentor's figures alone, to compare with.)

- replay: the share of foreground pixels in the pairs each round replayed for each past task (the
  kept samples, samples/round_XX/task_YY.npz) against the share in that task's real training masks;
- segmentor: for every round whose checkpoint the run kept (by default only the last), each task's
  foreground share predicted on its real test split against the true share, with pixel precision
  and recall of foreground vs background.

A replay whose masks are too large teaches the segmentor to over-segment: the share it predicts
grows, precision falls while recall stays (BENCHMARKS.md section 4d).
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
from c2gr_core.analysis.inspection import load_pairs, replay_samples  # noqa: E402
from c2gr_core.experiment.runs import load_method, load_run_task, read_run  # noqa: E402


def pixel_scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Foreground (any class > 0) vs background: predicted and true shares, precision, recall."""
    p, t = pred > 0, true > 0
    tp = float((p & t).sum())
    return {"pred_share": float(p.mean()), "true_share": float(t.mean()),
            "precision": tp / max(float(p.sum()), 1.0), "recall": tp / max(float(t.sum()), 1.0)}


def run_shares(run: Path, log) -> dict:
    info = read_run(run)
    names = list(info["tasks"])
    T = len(names)
    kept = replay_samples(run)   # none for a method without generated replay (a baseline to compare with)
    tasks = [load_run_task(run, j) for j in range(T)]
    train_share = [float((np.asarray(d.train.masks) > 0).mean()) for d in tasks]
    replay = [[None] * T for _ in range(T)]
    for r, files in kept.items():
        for j, f in files.items():
            replay[r][j] = float((load_pairs(f)[1] > 0).mean())
    segmentor = {}
    for ckpt in sorted((run / "checkpoints").glob("round_[0-9]*.pt")):
        r = int(ckpt.stem.split("_")[1])
        m = load_method(run, round=r)
        rows = {}
        for j in range(r + 1):
            x = torch.as_tensor(np.asarray(tasks[j].test.images, np.float32))
            with torch.no_grad():
                pred = np.asarray(m.predict(x, j))
            rows[names[j]] = pixel_scores(pred, np.asarray(tasks[j].test.masks))
        segmentor[r] = rows
        log(f"{run.name} round {r + 1}: " + " ".join(f"{n} P {s['precision']:.2f} R {s['recall']:.2f}"
                                                     for n, s in rows.items()))
    return {"run": str(run), "method": info.get("method"), "tasks": names, "train_share": train_share,
            "replay_share": replay, "segmentor": segmentor}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run directories")
    add_threads_arg(ap)
    ap.add_argument("--out", default=str(RESULTS / "foreground_share.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    result = {"runs": {Path(run).name: run_shares(Path(run), log) for run in args.runs}}
    out = write_json(result, args.out)
    log(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
