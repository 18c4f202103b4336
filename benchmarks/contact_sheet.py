"""Contact sheet of the synthetic twins: every task's image with its mask overlaid.

    python benchmarks/contact_sheet.py runs/contact_sheet.png [--size 64] [--n 2] [--streams ...]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c2gr_core.interface.viz import contact_sheet  # noqa: E402
from data_catalog.catalog import get_card, load_stream  # noqa: E402
from data_catalog.synthetic import synthetic_task  # noqa: E402


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="PNG file to write")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument("--n", type=int, default=2, help="samples per task (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.45, help="mask opacity; 0 shows the bare images")
    p.add_argument("--streams", nargs="+", default=["synthetic-paper-20", "synthetic-downstream-5"])
    args = p.parse_args(argv)
    names = [e.name for s in args.streams for e in load_stream(s)]
    tasks = [synthetic_task(get_card(n), args.size, n_train=args.n, n_val=1, n_test=1, seed=args.seed)
             for n in names]
    fig = contact_sheet(tasks, n_per_task=args.n, ax_size=2.0, alpha=args.alpha, ncols=5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(tasks)} tasks, {args.size}^2)")
    return args.out


if __name__ == "__main__":
    main()
