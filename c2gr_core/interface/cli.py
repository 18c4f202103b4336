"""The `c2gr` command line: tasks, prepare, run, report."""
from __future__ import annotations

import argparse
import os
import sys

from ..config import PRESETS, apply_overrides  # noqa: F401 (apply_overrides: re-exported, its old home)
from .runtime import use_offline_environment


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

    options = {}
    for item in args.option or []:
        if "=" not in item:
            raise ValueError(f"--option expects KEY=VALUE (e.g. sequence=t1ce), got {item!r}")
        k, v = item.split("=", 1)
        options[k] = v
    card = None
    if args.card:
        from data_catalog.schema import load_card

        card = load_card(args.card)
    out = prepare(args.dataset, args.src, args.dst, card=card, seed=args.seed, overwrite=args.overwrite, **options)
    print(f"prepared {args.dataset} -> {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ..config import preset
    from ..methods import available_methods
    from ..experiment.runner import run_stream

    if args.method not in available_methods():
        raise ValueError(f"unknown --method {args.method!r}; choose one of {available_methods()}")
    cfg = preset(args.preset)
    cfg.train.seed = args.seed
    if args.device:
        cfg.train.device = args.device
    if args.bf16:
        cfg.train.amp_bf16 = True
    apply_overrides(cfg, args.set)
    result = run_stream(args.stream, args.method, cfg, args.out, resume=args.resume, data_root=args.data_root,
                        progress=not args.quiet)
    from ..training import distributed

    m = result.metrics
    if m and distributed.is_main():
        print(f"{args.method} on {args.stream}: Overall {100 * m['overall']:.2f}  BWT {100 * m['bwt']:.2f}  "
              f"TL {100 * m['tl']:.2f}  -> {args.out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..analysis.report import write_report

    out = args.out or "report"
    rows = write_report(args.runs, out)
    for r in rows:
        print(f"{r['method']:<14} Overall {r['overall']:6.2f}  BWT {r['bwt']:6.2f}  TL {r['tl']:6.2f}  ({r['run']})")
    print(f"report written to {out}/ (summary.csv, summary.md, final_rows.csv, matrices.png, matrices.html)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="c2gr", description="C2GR continual segmentation workbench")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tasks", help="list catalog tasks and streams")
    t.set_defaults(func=_cmd_tasks)

    pr = sub.add_parser("prepare", help="turn a downloaded public dataset into the prepared format")
    pr.add_argument("dataset", help="catalog task name (e.g. brats-t1ce) or dataset id")
    pr.add_argument("src", help="folder holding the dataset in its official layout")
    pr.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    pr.add_argument("--seed", type=_seed, default=0, help="seed of the train/val/test split")
    pr.add_argument("--overwrite", action="store_true")
    pr.add_argument("--card", default=None, help="card YAML to use instead of the catalog's (dataset ids only)")
    pr.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="preparer option, e.g. sequence=t1ce, vendor=B, site=2 (repeatable)")
    pr.set_defaults(func=_cmd_prepare)

    r = sub.add_parser("run", help="run a task stream with a continual method")
    r.add_argument("--stream", required=True, help="stream name (see `c2gr tasks`) or a stream YAML file")
    r.add_argument("--method", required=True, help="continual method, e.g. c2gr, finetune, joint")
    r.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--seed", type=_seed, default=0, help="seed of data splits, initialisation and replay (>= 0)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from its last round")
    r.add_argument("--data-root", default=None, help="folder with prepared real tasks (else $C2GR_DATA_ROOT)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    r.add_argument("--bf16", action="store_true", help="bf16 autocast for training")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="Table-1-style comparison of run directories")
    rep.add_argument("runs", nargs="+", help="run directories")
    rep.add_argument("--out", default=None, help="output folder (default ./report)")
    rep.set_defaults(func=_cmd_report)

    from .batch import add_arguments, run_from_args

    nb = sub.add_parser("notebook", help="run a notebook with papermill into runs/<date>_<name>_<tag>/")
    add_arguments(nb)
    nb.set_defaults(func=run_from_args)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    use_offline_environment()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (already printed) or --help
        return e.code if isinstance(e.code, int) else 2
    from ..experiment.rundir import RunDirectoryBusy

    try:
        return args.func(args)
    except BrokenPipeError:  # `c2gr tasks | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except (ValueError, OSError, RunDirectoryBusy) as e:  # our errors name the file/parameter: show them plainly
        print(f"c2gr {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"c2gr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug of ours: still one line, the traceback on request
        if os.environ.get("C2GR_TRACEBACK"):
            raise
        print(f"c2gr {args.command}: error: {type(e).__name__}: {_one_line(e)} "
              "(set C2GR_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
