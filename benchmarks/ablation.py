"""The ablation of Fig. 5: C2GR vs w/o BJD (c2gr-njd) vs w/o RUPS (c2gr-norups), with FineTune and
GR as the paper's lower references, read from the method-table runs (nothing is trained here).

    python benchmarks/method_table.py                    # trains the runs (once)
    python benchmarks/ablation.py                        # reads them
    python benchmarks/ablation.py --runs DIR --out FILE  # other runs (the smoke test)

Per variant: Overall, BWT, TL, the mean final DSC over the previous tasks (all but the last, the
"Previous" block of Table 1 and the bars of Fig. 5) and the final DSC per task.
Writes benchmarks/results/ablation.json (or --out) and ablation.png beside it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, TABLE_RUNS, finished_run, write_json  # noqa: E402
from c2gr_core.experiment.runs import read_run  # noqa: E402

VARIANTS = ["c2gr", "c2gr-njd", "c2gr-norups"]
REFERENCES = ["finetune", "gr", "joint"]


def variant_row(run: Path) -> dict:
    info = read_run(run)
    D, m = info["matrix"], info["metrics"]
    last = 100 * D[-1]
    return {"overall": 100 * m["overall"], "bwt": 100 * m["bwt"], "tl": 100 * m["tl"],
            "previous_mean": float(np.mean(last[:-1])), "final_row": dict(zip(info["tasks"], last.tolist())),
            "run": str(run)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(TABLE_RUNS), help="folder of <method>-s<seed> runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "ablation.json"))
    args = ap.parse_args(argv)
    rows = {"c2gr": variant_row(finished_run(args.runs, "c2gr", args.seed))}
    missing = []
    for name in [*VARIANTS[1:], *REFERENCES]:  # shown when the table has them, listed as missing if not
        try:
            rows[name] = variant_row(finished_run(args.runs, name, args.seed))
        except SystemExit:
            missing.append(name)
    drop = {f"drop_without_{what}": rows["c2gr"]["overall"] - rows[v]["overall"] if v in rows else None
            for what, v in (("bjd", "c2gr-njd"), ("rups", "c2gr-norups"))}
    result = {"seed": args.seed, "runs": args.runs, "variants": rows, "missing": missing, **drop}
    out = write_json(result, args.out)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(rows["c2gr"]["final_row"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tasks) + 2), 3.6))
    w = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows.items()):
        ax.bar(np.arange(len(tasks)) + i * w, [r["final_row"][t] for t in tasks], w,
               label=f"{name} (Overall {r['overall']:.1f})")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - w / 2, tasks, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("final DSC (%)")
    ax.set_title("Ablation (Fig. 5): DSC on each task after the last round")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    for name, r in rows.items():
        print(f"{name:12s} Overall {r['overall']:6.2f}  BWT {r['bwt']:6.2f}  TL {r['tl']:6.2f}  "
              f"previous tasks {r['previous_mean']:6.2f}")
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
