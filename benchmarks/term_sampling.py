"""One BJD term per pair against all three: what `diffusion.term_sampling = "one"` saves per training step.

    python benchmarks/term_sampling.py                      # bench preset, fp32 and bf16
    python benchmarks/term_sampling.py --setups fp32 --reps 12

BJD (eq. 3) trains every pair on three terms, three denoiser rows a pair, and the distillation of a
replayed pair runs all three through the teacher too; with "one" each pair trains one term, weighted 3
(diffusion/losses.py `draw_terms`): a third of the rows for the same loss in expectation. Both steps of a
C2GR round are timed, the coupled step (segmentor + generator, the round's first `train.epochs`) and the
generator-only step (the rest of its `train.gen_epochs`), each on B current and B replayed pairs against
the frozen teacher (`profile_step.Case`, the steps a run takes). Every (setup, term_sampling, step) is
timed interleaved in one process, min of `--reps`; `speedup` is "all"'s seconds over "one"'s, same setup
and step; `denoiser_rows` counts the rows the trained denoiser sees in the step (the teacher, not
counted, sees a third of its "all" rows under "one" too). Whether the run learns as well is a separate question, answered by the runs of BENCHMARKS.md.
Writes benchmarks/results/term_sampling_step.json (or --out).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, add_threads_arg, cpu_model, write_json  # noqa: E402
from benchmarks.gen_batch import SETUPS  # noqa: E402
from benchmarks.profile_step import Case  # noqa: E402
from benchmarks.training_cost import Setup  # noqa: E402
from c2gr_core.config import TERM_SAMPLING, preset  # noqa: E402
from c2gr_core.methods.coupled import coupled_loss  # noqa: E402
from c2gr_core.training import allocator  # noqa: E402

STEPS = ("coupled_step", "generator_step")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", choices=["tiny", "bench", "cpu"])
    ap.add_argument("--setups", nargs="+", default=["fp32", "bf16"], choices=sorted(SETUPS),
                    help="bf16 is emulated, and minutes per step, on a CPU without bf16 instructions")
    ap.add_argument("--reps", type=int, default=8)
    add_threads_arg(ap)
    ap.add_argument("--quick", action="store_true", help="smoke: tiny preset, batch 4, fp32, 1 rep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.reps < 1 or args.threads < 1:
        ap.error("--reps and --threads must be >= 1")
    if args.quick:
        args.preset, args.setups, args.reps = "tiny", ["fp32"], 1
    torch.set_num_threads(args.threads)
    allocator.keep_freed_memory()   # a run's allocator state (training/allocator.py)
    cfg = preset(args.preset)
    if args.quick:
        cfg.train.batch_size = 4
    if cfg.diffusion.objective != "bjd":
        ap.error(f"the {args.preset} preset trains {cfg.diffusion.objective}, which has one term")
    setup = Setup(cfg)
    cases = {}
    for name in args.setups:
        layout, bf16 = SETUPS[name]
        for terms in TERM_SAMPLING:
            # einsum attention and one forward for current + replay: what "auto" picks on the CPUs measured
            case = Case(setup, cfg, "math", layout, bf16, loss=partial(coupled_loss, one_forward=True))
            case.model.diffusion_cfg.term_sampling = terms
            cases[(name, terms)] = case
    calls = [(key, step) for key in cases for step in STEPS]
    rows_seen = {}
    for key, step in calls:   # warm-up (allocator, oneDNN kernels for each shape), counting the denoiser's rows
        seen = []
        hook = cases[key].model.denoiser.register_forward_pre_hook(lambda mod, a: seen.append(a[0].shape[0]))
        getattr(cases[key], step)()
        hook.remove()
        rows_seen[(key, step)] = sum(seen)
    times = {c: [] for c in calls}
    for _ in range(args.reps):
        for key, step in calls:
            t0 = time.perf_counter()
            getattr(cases[key], step)()
            times[(key, step)].append(time.perf_counter() - t0)
    rows = [{"setup": name, "term_sampling": terms, "step": step, "denoiser_rows": rows_seen[((name, terms), step)],
             "sec": min(ts), "sec_median": sorted(ts)[len(ts) // 2]}
            for ((name, terms), step), ts in times.items()]
    sec = {(r["setup"], r["term_sampling"], r["step"]): r["sec"] for r in rows}
    for r in rows:
        r["speedup"] = sec[(r["setup"], "all", r["step"])] / r["sec"]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), "preset": args.preset, "batch": cfg.train.batch_size,
              "reps": args.reps, "rows": rows}
    out = write_json(result, args.out or RESULTS / "term_sampling_step.json")
    for r in rows:
        print(f"{r['setup']:18s} {r['step']:15s} terms {r['term_sampling']} ({r['denoiser_rows']} denoiser rows): "
              f"{r['sec'] * 1e3:7.1f} ms "
              f"({r['speedup']:.2f}x)")
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
