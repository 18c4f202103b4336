"""The generator-only step by batch size: what fewer, larger generator steps would save per epoch.

    python benchmarks/gen_batch.py                          # bench preset, batches 16 24 48, fp32 and bf16
    python benchmarks/gen_batch.py --setups fp32 --batches 16 48

Past the coupled phase a C2GR round trains the generator alone (1104 of the bench preset's 1200 generator
steps; 504 of 600 in the preset that `gen_batch.json` was measured with, all three BJD terms per pair):
each step is BJD on `B` current pairs plus the distillation loss on `B` replayed ones, against
the frozen teacher (`profile_step.Case.generator_step`, the step a run takes). An epoch is the task's
training pairs once (`--pairs`, 48 at the bench preset), so a batch of B takes ceil(pairs / B) steps.
Steps of every (setup, batch) are timed interleaved in one process, min of `--reps`; the figure that
matters is `epoch_speedup`, the baseline's seconds per epoch (the first of `--batches`) over this
batch's: above 1x only if a larger step costs less than the steps it replaces. Where B does not divide
the pairs, the epoch's last, smaller step is counted at the full step's time (an upper bound), and the
work around a step (EMA update, drawing the batches) is left out. This is the first check of issue 13's
"half the steps at twice the batch": a larger batch is worth trying on a run (a recipe change, to be
judged by correspondence and Overall too) only where `epoch_speedup` is well above 1x. On the Intel Xeon
with AMX it is not (BENCHMARKS.md section 7), so the workbench has no separate generator batch.
`--teacher-share` times every step also with the replayed pairs' analytic targets instead of the teacher's
outputs (the step of `replay_target = "data"`): the ratio is what the teacher's forward adds to a step.
Writes benchmarks/results/gen_batch.json (or --out).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, add_threads_arg, cpu_model, write_json  # noqa: E402
from benchmarks.profile_step import Case  # noqa: E402
from benchmarks.training_cost import Setup  # noqa: E402
from c2gr_core.config import preset  # noqa: E402
from c2gr_core.methods.coupled import coupled_loss  # noqa: E402
from c2gr_core.training import allocator  # noqa: E402

SETUPS = {"fp32": ("fp32", False), "fp32_channels_last": ("fp32_channels_last", False), "bf16": ("fp32", True)}


def base_step(rows: list[dict], setup: str, batch: int) -> float:
    return next(r["sec_per_step"] for r in rows if (r["setup"], r["batch"], r["teacher"]) == (setup, batch, True))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", choices=["tiny", "bench", "cpu"])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 24, 48],
                    help="generator-only batch sizes; the first is the baseline")
    ap.add_argument("--setups", nargs="+", default=["fp32", "bf16"], choices=sorted(SETUPS),
                    help="bf16 is emulated, and minutes per step, on a CPU without bf16 instructions")
    ap.add_argument("--pairs", type=int, default=None, help="training pairs per epoch (default: the preset's data.n_train)")
    ap.add_argument("--reps", type=int, default=8)
    add_threads_arg(ap)
    ap.add_argument("--teacher-share", action="store_true",
                    help="also time each step with the replayed pairs' analytic targets instead of the teacher's "
                         "(replay_target 'data'): the difference is what the teacher's forward costs")
    ap.add_argument("--quick", action="store_true", help="smoke: tiny preset, batches 2 4, fp32, 1 rep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.batches, args.setups, args.reps = "tiny", [2, 4], ["fp32"], 1
    if (any(b < 1 for b in args.batches) or args.reps < 1 or args.threads < 1
            or (args.pairs is not None and args.pairs < 1)):
        ap.error("--batches, --reps, --threads and --pairs must be >= 1")
    torch.set_num_threads(args.threads)
    allocator.keep_freed_memory()   # a run's allocator state (training/allocator.py)
    pairs = args.pairs or preset(args.preset).data.n_train
    cases = {}
    for b in args.batches:
        cfg = preset(args.preset)
        cfg.train.batch_size = b
        setup = Setup(cfg)
        for name in args.setups:
            layout, bf16 = SETUPS[name]
            # einsum attention and one forward for current + replay: what "auto" picks on the CPUs measured
            for teacher in (True, False) if args.teacher_share else (True,):
                case = Case(setup, cfg, "math", layout, bf16, loss=partial(coupled_loss, one_forward=True))
                if not teacher:
                    case.teacher = None
                cases[(name, b, teacher)] = case
    for case in cases.values():   # warm-up: allocator, oneDNN kernels for each shape
        case.generator_step()
    times = {k: [] for k in cases}
    for _ in range(args.reps):
        for k, case in cases.items():
            t0 = time.perf_counter()
            case.generator_step()
            times[k].append(time.perf_counter() - t0)
    rows = []
    for (name, b, teacher), ts in times.items():
        steps = math.ceil(pairs / b)
        rows.append({"setup": name, "batch": b, "teacher": teacher, "sec_per_step": min(ts),
                     "sec_per_step_median": sorted(ts)[len(ts) // 2], "steps_per_epoch": steps,
                     "sec_per_epoch": steps * min(ts)})
    base = {(r["setup"], r["teacher"]): r["sec_per_epoch"] for r in rows if r["batch"] == args.batches[0]}
    for r in rows:
        r["epoch_speedup"] = base[(r["setup"], r["teacher"])] / r["sec_per_epoch"]
        if not r["teacher"]:   # the same step with the teacher, over this one
            r["teacher_cost"] = base_step(rows, r["setup"], r["batch"]) / r["sec_per_step"]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(),
              "preset": args.preset, "pairs_per_epoch": pairs, "reps": args.reps, "baseline_batch": args.batches[0],
              "rows": rows}
    out = write_json(result, args.out or RESULTS / "gen_batch.json")
    for r in rows:
        print(f"{r['setup']:18s} batch {r['batch']:3d}{'' if r['teacher'] else ' data targets'}: "
              f"{r['sec_per_step'] * 1e3:7.1f} ms/step x {r['steps_per_epoch']} = {r['sec_per_epoch'] * 1e3:7.1f} ms/epoch "
              f"({r['epoch_speedup']:.2f}x)" + (f"; the teacher's step is {r['teacher_cost']:.2f}x this" if not r["teacher"] else ""))
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
