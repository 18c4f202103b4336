"""`c2gr report`: a Table-1-style comparison of run directories.

Writes, into the output folder: summary.csv (method, Overall, BWT, TL, privacy, params, ...),
final_rows.csv (the last matrix row per run, one column per task), matrices.png (one heatmap per
run), matrices.html (the same, interactive, plotly) and summary.md (a markdown table).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np


def summarize_runs(run_dirs) -> list[dict]:
    from ..experiment.runs import read_run

    out = []
    for d in map(Path, run_dirs):
        if not (d / "matrix.csv").exists():
            raise FileNotFoundError(f"{d / 'matrix.csv'}: not a run directory (no matrix.csv); run `c2gr run` first")
        run = read_run(d)
        tasks, D, m, cfg = run["tasks"], run["matrix"], run["metrics"], run["config"]
        out.append({"run": str(d), "method": m["method"], "preset": cfg.preset, "seed": cfg.train.seed,
                    "rounds": f"{m['completed_rounds']}/{len(tasks)}", "overall": 100 * m["overall"],
                    "bwt": 100 * m["bwt"], "tl": 100 * m["tl"], "privacy_preserving": m["privacy_preserving"],
                    "learnable_params": m["learnable_params"], "tasks": tasks, "matrix": D})
    return out


def _markdown(rows: list[dict]) -> str:
    lines = ["| method | preset | seed | rounds | Overall | BWT | TL | params | privacy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        priv = "yes" if r["privacy_preserving"] else "**no** (reads/stores real past data)"
        lines.append(f"| {r['method']} | {r['preset']} | {r['seed']} | {r['rounds']} | {r['overall']:.2f} | "
                     f"{r['bwt']:.2f} | {r['tl']:.2f} | {r['learnable_params']:,} | {priv} |")
    return "\n".join(lines) + "\n"


def matrix_figure(rows: list[dict]):
    import matplotlib.pyplot as plt

    n = len(rows)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.2 * cols, 3.8 * math.ceil(n / cols)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        im = ax.imshow(100 * r["matrix"], vmin=0, vmax=100, cmap="viridis")
        ax.set_title(f"{r['method']}  Overall {r['overall']:.1f}", fontsize=9)
        T = len(r["tasks"])
        ax.set_xticks(range(T), r["tasks"], rotation=90, fontsize=6)
        ax.set_yticks(range(T), r["tasks"], fontsize=6)
        ax.set_xlabel("evaluated task j", fontsize=7)
        ax.set_ylabel("after round i", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, label="DSC (%)")
    fig.tight_layout()
    return fig


def matrix_heatmaps_html(rows: list[dict]) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(rows), subplot_titles=[r["method"] for r in rows])
    for i, r in enumerate(rows, start=1):
        fig.add_trace(go.Heatmap(z=100 * r["matrix"], x=r["tasks"], y=r["tasks"], zmin=0, zmax=100,
                                 colorscale="Viridis", showscale=i == len(rows),
                                 hovertemplate="after %{y}<br>on %{x}<br>DSC %{z:.1f}<extra></extra>"),
                      row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_layout(title="DSC matrix D[i, j] (%): row = after round i, column = task j",
                      height=450, width=max(500, 420 * len(rows)))
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_report(run_dirs, out_dir: str | Path) -> list[dict]:
    rows = summarize_runs(run_dirs)
    if not rows:
        raise ValueError("c2gr report: give at least one run directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["method", "preset", "seed", "rounds", "overall", "bwt", "tl", "learnable_params", "privacy_preserving", "run"]
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tasks = rows[0]["tasks"]
    with (out / "final_rows.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", *tasks, "Overall", "BWT", "TL"])
        for r in rows:
            last = r["matrix"][-1] if r["tasks"] == tasks else [np.nan] * len(tasks)
            w.writerow([r["method"], *(f"{100 * v:.2f}" for v in last), f"{r['overall']:.2f}",
                        f"{r['bwt']:.2f}", f"{r['tl']:.2f}"])
    (out / "summary.md").write_text(_markdown(rows))
    fig = matrix_figure(rows)
    fig.savefig(out / "matrices.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    (out / "matrices.html").write_text(matrix_heatmaps_html(rows))
    return rows
