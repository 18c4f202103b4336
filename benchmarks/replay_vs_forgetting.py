"""Does a past task's replay decide how much of it the segmentor keeps? Replay drift against forgetting.

    python benchmarks/replay_vs_forgetting.py benchmarks/results/segmentor_budget/replay_drift_*_amx.json \
        --out benchmarks/results/segmentor_budget/replay_vs_forgetting_amx

One point per (run, past task j) of every run in the given replay_drift.py files: the correspondence DSC of
task j's replay in the last round (drift[T-1][j]) and its drop since the task's first replay
(drift[j+1][j] - drift[T-1][j]; only for tasks replayed in two rounds or more, j < T-2), against the
run's final DSC on task j (matrix[T-1][j]) and its forgetting (matrix[j][j] - matrix[T-1][j]), both read
from the run's matrix.csv. All runs must have the same stream. Tasks differ in difficulty (a hard task has
both a weak replay and a low DSC), which alone would correlate the two, so the correlations that answer
the question are *within task*: each quantity minus its task's mean over the runs, pooled (Pearson and
Spearman, scipy.stats). The demeaning uses one degree of freedom per task, so the Pearson p-value is
taken with n - k - 1 degrees of freedom (k tasks); the points of one run share a segmentor and are not
independent either, so read p as a lower bound. The raw, across-task correlations are reported beside.
Writes OUT.json (points and correlations) and OUT.png (the two within-task scatter plots).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_json  # noqa: E402
from c2gr_core.experiment.rundir import read_matrix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

PAIRS = {  # name: (replay quantity, segmentation quantity)
    "last_replay_vs_final_dsc": ("replay_last", "final"),
    "replay_drop_vs_forgetting": ("replay_drop", "forgetting"),
}


def points(drift_files: list[Path]) -> list[dict]:
    out, seen, stream = [], {}, None
    for f in drift_files:
        if not f.is_file():
            raise SystemExit(f"{f}: no such replay_drift file")
        for key, r in json.loads(f.read_text())["runs"].items():
            run = Path(r["run"])
            if not run.is_absolute() and not run.exists():   # replay_drift.py records paths from the repo root
                run = ROOT / run
            if run.resolve() in seen:
                raise SystemExit(f"run {run} is in both {seen[run.resolve()]} and {f}: its points would count twice")
            seen[run.resolve()] = f
            if stream is not None and r["tasks"] != stream:
                raise SystemExit(f"{f}: run {key!r} has the stream {r['tasks']}, not {stream} as the runs before it")
            stream = r["tasks"]
            matrix_csv = run / "matrix.csv"
            if not matrix_csv.is_file():
                raise SystemExit(f"{f}: run {key!r} has no {matrix_csv} (its run directory is needed)")
            D = 100 * read_matrix(matrix_csv, r["tasks"])
            drift = np.array([[np.nan if v is None else 100 * v for v in row] for row in r["drift"]])
            T = len(r["tasks"])
            if np.isnan(D[-1]).any():
                raise SystemExit(f"{matrix_csv}: the run is not finished (last row has empty cells)")
            first = [drift[j + 1, j] for j in range(T - 1)]
            if np.isnan(drift[T - 1, :T - 1]).any() or np.isnan(first).any():
                raise SystemExit(f"{f}: run {key!r} lacks a scored first or last-round replay of a past task")
            for j in range(T - 1):
                out.append({"run": key, "file": str(f), "task": r["tasks"][j],
                            "replay_first": drift[j + 1, j], "replay_last": drift[T - 1, j],
                            # task T-2 is replayed in the last round only: no drop to measure
                            "replay_drop": drift[j + 1, j] - drift[T - 1, j] if j < T - 2 else None,
                            "own_round": D[j, j], "final": D[T - 1, j], "forgetting": D[j, j] - D[T - 1, j]})
    return out


def _within_task(pts: list[dict], field: str) -> np.ndarray:
    by_task = defaultdict(list)
    for p in pts:
        by_task[p["task"]].append(p[field])
    means = {t: np.mean(v) for t, v in by_task.items()}
    return np.array([p[field] - means[p["task"]] for p in pts])


def _within_task_p(r: float, n: int, k: int) -> float | None:
    df = n - k - 1
    if df < 1:
        return None
    t = r * np.sqrt(df / max(1 - r * r, 1e-300))
    return float(2 * stats.t.sf(abs(t), df))


def correlations(pts: list[dict]) -> dict:
    out = {}
    for name, (a, b) in PAIRS.items():
        use = [p for p in pts if p[a] is not None]
        x_raw, y_raw = np.array([p[a] for p in use]), np.array([p[b] for p in use])
        x_in, y_in = _within_task(use, a), _within_task(use, b)
        if len(use) < 2 or not (x_in.any() and y_in.any()):
            raise SystemExit(f"{name}: needs two points or more with within-task spread in both quantities "
                             f"(got {len(use)} points); add runs")
        r = float(stats.pearsonr(x_in, y_in).statistic)
        k = len({p["task"] for p in use})
        out[name] = {
            "n": len(use), "tasks": k,
            "within_task_pearson": r,
            "within_task_pearson_p": _within_task_p(r, len(use), k),
            "within_task_spearman": float(stats.spearmanr(x_in, y_in).statistic),
            "across_task_pearson": float(stats.pearsonr(x_raw, y_raw).statistic),
            # least-squares slope through the origin (both are centred): segmentation DSC points per replay point
            "within_task_slope": float(x_in @ y_in / (x_in @ x_in)),
        }
    return out


def plot(pts: list[dict], corr: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PAIRS), figsize=(5 * len(PAIRS), 4.2))
    tasks = sorted({p["task"] for p in pts})
    colors = {t: plt.cm.tab10(i % 10) for i, t in enumerate(tasks)}
    for ax, (name, (a, b)) in zip(axes, PAIRS.items()):
        use = [p for p in pts if p[a] is not None]
        x, y = _within_task(use, a), _within_task(use, b)
        ax.scatter(x, y, c=[colors[p["task"]] for p in use], s=22)
        c = corr[name]
        ax.set_title(f"{name}\nwithin task: r={c['within_task_pearson']:.2f}, rho={c['within_task_spearman']:.2f}, "
                     f"n={c['n']}", fontsize=9)
        ax.set_xlabel(f"{a} - task mean (DSC points)")
        ax.set_ylabel(f"{b} - task mean (DSC points)")
        ax.axhline(0, color="0.8", lw=0.8)
        ax.axvline(0, color="0.8", lw=0.8)
    axes[-1].legend(handles=[plt.Line2D([], [], ls="", marker="o", color=colors[t], label=t) for t in tasks],
                    fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("drift_files", nargs="+", help="JSON files written by benchmarks/replay_drift.py")
    ap.add_argument("--out", required=True, help="output path without suffix (OUT.json, OUT.png)")
    args = ap.parse_args(argv)
    pts = points([Path(f) for f in args.drift_files])
    if len({p["run"] for p in pts}) < 2:
        raise SystemExit("need at least two runs: within-task correlations compare runs on the same task")
    corr = correlations(pts)
    result = {"drift_files": args.drift_files, "correlations": corr, "points": pts}
    write_json(result, f"{args.out}.json")
    plot(pts, corr, Path(f"{args.out}.png"))
    for name, c in corr.items():
        p = "-" if c["within_task_pearson_p"] is None else f"{c['within_task_pearson_p']:.3f}"
        print(f"{name}: within task r={c['within_task_pearson']:.2f} (p={p}), "
              f"rho={c['within_task_spearman']:.2f}, slope {c['within_task_slope']:.2f}; "
              f"across tasks r={c['across_task_pearson']:.2f}; n={c['n']}")
    return result


if __name__ == "__main__":
    main()
