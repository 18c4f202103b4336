"""One-variable C2GR runs on the method table's 9-task stream: what moves C2GR's Overall?

    python benchmarks/c2gr_variants.py --name rups-row-res --set prompt.relation_norm=row --set prompt.residual=true
    python benchmarks/c2gr_variants.py --name gen100 --set train.gen_epochs=100
    python benchmarks/c2gr_variants.py --quick --name x --out DIR        # smoke: tiny preset, 2 tasks

Each variant is the bench preset (seed --seed) with the given `--set` overrides, trained as C2GR
(or --method) into OUT/runs/<name>-s<seed>/ (resumed if interrupted, skipped if finished). One row
per variant is kept in OUT/c2gr_variants.json: the overrides, Overall / BWT / TL, the matrix, the
wall time, and how distinct the final task prompts are (off-diagonal cosine similarity of the
segmentor's zeta over all tasks: Fig. 7 of the paper shows RUPS prompts that tell tasks apart).
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
from c2gr_core.interface.cli import apply_overrides  # noqa: E402
from c2gr_core.experiment.runs import load_method, read_run  # noqa: E402
from c2gr_core.experiment.runner import run_stream  # noqa: E402


def prompt_separation(run: Path) -> dict:
    m = load_method(run)
    z, _ = m.model.prompts(m.ctx.emb, len(m.ctx.cards) - 1)
    z = torch.nn.functional.normalize(z.detach(), dim=1)
    s = (z @ z.T).numpy()
    off = s[~np.eye(len(s), dtype=bool)]
    return {"min": float(off.min()), "mean": float(off.mean()), "max": float(off.max()),
            "names": [c.name for c in m.ctx.cards], "matrix": s.round(3).tolist()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="variant name (its run folder and row)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--method", default="c2gr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "c2gr_variants"))
    ap.add_argument("--quick", action="store_true", help="smoke size: tiny preset, 2 tasks, 1 epoch")
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(bench_config(args.quick, args.seed), args.overrides)
    out = Path(args.out)
    d = out / "runs" / f"{args.name}-s{args.seed}"
    if not is_complete(d):
        run_stream(QUICK_STREAM if args.quick else STREAM, args.method, cfg, d,
                   resume=(d / "progress.json").is_file(), progress=False, keep_checkpoints="last")
    info = read_run(d)
    m = info["metrics"]
    row = {"name": args.name, "method": args.method, "seed": args.seed, "overrides": args.overrides,
           "overall": 100 * m["overall"], "bwt": 100 * m["bwt"], "tl": 100 * m["tl"],
           "final_row": dict(zip(info["tasks"], (100 * info["matrix"][-1]).round(2).tolist())),
           "matrix_percent": [[None if np.isnan(v) else round(100 * v, 2) for v in r] for r in info["matrix"]],
           "wall_s": run_wall_s(d),
           "prompt_cosine_offdiag": prompt_separation(d) if args.method.startswith("c2gr") else None,
           "run": str(d)}
    path = out / "c2gr_variants.json"
    put_row(path, f"{args.name}-s{args.seed}", row)
    print(f"{args.name}: Overall {row['overall']:.2f} BWT {row['bwt']:.2f} TL {row['tl']:.2f} "
          f"({row['wall_s']:.0f} s); prompt cosine {row['prompt_cosine_offdiag']}")
    return row


if __name__ == "__main__":
    main()
