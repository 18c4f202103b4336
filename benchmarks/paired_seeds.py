"""Paired-seed comparison of segmentor_budget rows or of run folders: is a method above another on the same seeds
and machine?

    python benchmarks/paired_seeds.py --base c2gr_train.amp_bf16-false_amx \
        --vs cgr_train.amp_bf16-false_amx c2gr-norups_train.amp_bf16-false_amx \
        --out benchmarks/results/segmentor_budget/paired_amx

Seeds of one method differ by more than the gaps between methods (BENCHMARKS.md 4e), and a change of CPU
moves a run as much as a change of seed, so two methods are compared on the seeds both have, run for run.
For each row name given to --vs and each metric (test Overall, and the mean of the final row over the
previous tasks, i.e. all but the last), the table gives the per-seed figures, the paired differences
base - vs, their mean and sample std, and a two-sided paired t-test (scipy.stats.ttest_rel; no p with one
seed). Rows are read from segmentor_budget.json (keys NAME-sSEED); nothing is trained here.
Or pair finished run folders (`c2gr run` outputs, any stream), each one's seed read from its config:

    python benchmarks/paired_seeds.py --base-runs RUN_A_S0 RUN_A_S1 --vs-runs RUN_B_S0 RUN_B_S1 \
        --names ddpm25 ddim25 --out OUT

Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, write_json  # noqa: E402


def _seeds(rows: dict, name: str) -> dict[int, dict]:
    return {r["seed"]: r for r in rows.values() if r["name"] == name}


def _metrics(row: dict) -> dict[str, float]:
    final = list(row["test_final_row"].values())
    return {"overall": row["test_overall"], "previous": float(np.mean(final[:-1]))}


def rows_from_runs(dirs: list[str], name: str) -> dict[str, dict]:
    """segmentor_budget-style rows (percent) from finished run folders, keyed NAME-sSEED."""
    # Only metrics.json and config.json, not rundir.read_run: the copies kept in benchmarks/results are trimmed to
    # a run's tables and have no stream.json or progress.json.
    rows = {}
    for d in map(Path, dirs):
        metrics, config = d / "metrics.json", d / "config.json"
        if not metrics.is_file() or not config.is_file():
            raise SystemExit(f"{d}: lacks metrics.json or config.json: not a run folder")
        m = json.loads(metrics.read_text())
        if not m.get("complete"):
            raise SystemExit(f"{d}: the run is not finished ({m.get('completed_rounds')} rounds done)")
        seed = int(json.loads(config.read_text())["train"]["seed"])
        if f"{name}-s{seed}" in rows:
            raise SystemExit(f"{d}: a second run of seed {seed} for {name!r}")
        rows[f"{name}-s{seed}"] = {"name": name, "seed": seed, "run": str(d), "test_overall": 100 * m["overall"],
                                   "test_final_row": {k: 100 * v for k, v in m["final_row"].items()}}
    return rows


def compare(rows: dict, base: str, other: str) -> dict:
    a, b = _seeds(rows, base), _seeds(rows, other)
    if not a:
        raise SystemExit(f"--base {base!r}: no row of that name in the results file")
    if not b:
        raise SystemExit(f"--vs {other!r}: no row of that name in the results file")
    if base == other:
        raise SystemExit(f"--vs {other!r} is the --base row itself")
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        raise SystemExit(f"{base!r} (seeds {sorted(a)}) and {other!r} (seeds {sorted(b)}) share no seed")
    for s in seeds:
        if list(a[s]["test_final_row"]) != list(b[s]["test_final_row"]):
            raise SystemExit(f"{base}-s{s} and {other}-s{s} were trained on different streams: "
                             f"{list(a[s]['test_final_row'])} against {list(b[s]['test_final_row'])}")
    out = {"base": base, "vs": other, "seeds": seeds}
    for metric in ("overall", "previous"):
        x = np.array([_metrics(a[s])[metric] for s in seeds])
        y = np.array([_metrics(b[s])[metric] for s in seeds])
        d = x - y
        out[metric] = {
            "base": x.tolist(), "vs": y.tolist(), "diff": d.tolist(),
            "base_mean": float(x.mean()), "vs_mean": float(y.mean()), "diff_mean": float(d.mean()),
            "diff_std": float(d.std(ddof=1)) if len(d) > 1 else None,
            # no p from one seed, nor from differences without spread (t would be infinite)
            "p_two_sided": float(stats.ttest_rel(x, y).pvalue) if len(d) > 1 and d.std() > 0 else None,
            "base_ahead": int((d > 0).sum()),
        }
    return out


def to_markdown(results: list[dict]) -> str:
    lines = ["| base vs | metric | seeds | base | vs | base - vs, per seed | mean diff +- std | p (paired t) | base ahead |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for metric in ("overall", "previous"):
            m = r[metric]
            std = "" if m["diff_std"] is None else f" +- {m['diff_std']:.2f}"
            p = "-" if m["p_two_sided"] is None else f"{m['p_two_sided']:.2f}"
            lines.append(
                f"| {r['base']} vs {r['vs']} | {metric} | {', '.join(map(str, r['seeds']))} | "
                f"{' / '.join(f'{v:.2f}' for v in m['base'])} ({m['base_mean']:.2f}) | "
                f"{' / '.join(f'{v:.2f}' for v in m['vs'])} ({m['vs_mean']:.2f}) | "
                f"{' / '.join(f'{v:+.2f}' for v in m['diff'])} | {m['diff_mean']:+.2f}{std} | {p} | "
                f"{m['base_ahead']} of {len(r['seeds'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="row name of the method compared against the others")
    ap.add_argument("--vs", nargs="+", help="row names to pair with --base")
    ap.add_argument("--results", default=str(RESULTS / "segmentor_budget" / "segmentor_budget.json"))
    ap.add_argument("--base-runs", nargs="+", metavar="RUN", help="run folders of the base method (instead of rows)")
    ap.add_argument("--vs-runs", nargs="+", metavar="RUN", help="run folders of the method paired with them")
    ap.add_argument("--names", nargs=2, default=["base", "vs"], metavar=("BASE", "VS"),
                    help="labels of --base-runs and --vs-runs in the table")
    ap.add_argument("--out", required=True, help="output path without suffix (OUT.json, OUT.md)")
    args = ap.parse_args(argv)
    if args.base_runs or args.vs_runs:
        if not (args.base_runs and args.vs_runs) or args.base or args.vs:
            raise SystemExit("give --base-runs and --vs-runs together, without --base / --vs")
        if args.names[0] == args.names[1]:
            raise SystemExit(f"--names: the two labels must differ, got {args.names}")
        rows = {**rows_from_runs(args.base_runs, args.names[0]), **rows_from_runs(args.vs_runs, args.names[1])}
        source, results = "run folders", [compare(rows, *args.names)]
        for r in results:
            r["runs"] = {n: {s: rows[f"{n}-s{s}"]["run"] for s in r["seeds"]} for n in args.names}
    else:
        if not (args.base and args.vs):
            raise SystemExit("give --base and --vs (rows of --results), or --base-runs and --vs-runs")
        path = Path(args.results)
        if not path.is_file():
            raise SystemExit(f"--results {path}: no such file")
        rows = json.loads(path.read_text())["rows"]
        source, results = str(path), [compare(rows, args.base, other) for other in args.vs]
    write_json({"results_file": source, "comparisons": results}, f"{args.out}.json")
    md = Path(f"{args.out}.md")
    table = to_markdown(results)
    md.with_name(md.name + ".tmp").write_text(table)
    md.with_name(md.name + ".tmp").replace(md)
    print(table)
    return results


if __name__ == "__main__":
    main()
