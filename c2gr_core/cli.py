"""The `c2gr` command line: tasks, prepare (and run / report, see c2gr_core.stream)."""
from __future__ import annotations

import argparse
import os
import sys

# Nothing is downloaded at run time (DESIGN.md); open_clip / sentence-transformers obey these.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cmd_tasks(args: argparse.Namespace) -> int:
    from data_catalog.catalog import get_card, list_streams, list_tasks, load_stream

    for role in ("upstream", "downstream"):
        print(f"{role} tasks:")
        for name in list_tasks(role=role):
            c = get_card(name)
            site = f" [{c.site}]" if c.site else ""
            print(f"  {name:<12} {c.modality:<22} {c.anatomy:<14} {', '.join(c.classes)}{site}")
    print("streams:")
    for s in list_streams():
        print(f"  {s:<24} {len(load_stream(s))} tasks")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from data_catalog.preparers import prepare

    out = prepare(args.dataset, args.src, args.dst, seed=args.seed, overwrite=args.overwrite)
    print(f"prepared {args.dataset} -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2gr", description="C2GR continual segmentation workbench")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tasks", help="list catalog tasks and streams")
    t.set_defaults(func=_cmd_tasks)

    pr = sub.add_parser("prepare", help="turn a downloaded public dataset into the prepared format")
    pr.add_argument("dataset", help="catalog task name (e.g. brats-t1ce) or dataset id")
    pr.add_argument("src", help="folder holding the dataset in its official layout")
    pr.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    pr.add_argument("--overwrite", action="store_true")
    pr.set_defaults(func=_cmd_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # our errors name the file/parameter: show them plainly
        print(f"c2gr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
