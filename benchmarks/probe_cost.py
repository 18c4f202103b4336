"""Start-up cost of train.amp_bf16 = "auto": the run-time numerics probe (`training/numerics.py`) of a
C2GR run of a preset, timing bf16 on every CPU ("always", what runs did until 2026-12-07) against timing it
only where the CPU has bf16 kernels ("by_cpu", `numerics.bf16_kernels`), interleaved, with what each chose.

    python benchmarks/probe_cost.py                   # bench preset, 2 threads (OMP_NUM_THREADS, else 2), 3 reps
    python benchmarks/probe_cost.py --preset cpu --reps 2

On a CPU with bf16 kernels both cases are the same probe (a check that nothing changed there). Writes
benchmarks/results/profile/probe_cost_<preset>.json (or --out): each case's wall seconds per repetition,
and the setup, attention kernel and forward batching each repetition chose.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, add_threads_arg, cpu_model, write_json  # noqa: E402
from benchmarks.profile_step import Setup, run_networks  # noqa: E402
from c2gr_core.config import preset  # noqa: E402
from c2gr_core.training import allocator, numerics  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", choices=["tiny", "bench", "cpu"])
    add_threads_arg(ap)
    ap.add_argument("--reps", type=int, default=3, help="probes per case (interleaved)")
    ap.add_argument("--quick", action="store_true", help="smoke: tiny preset, batch 2, 1 rep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.reps = "tiny", 1
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    torch.set_num_threads(args.threads)
    allocator.keep_freed_memory()   # the allocator state a run probes in
    cfg = preset(args.preset)
    if args.quick:
        cfg.train.batch_size = 2
    nets, cpu = run_networks(Setup(cfg), cfg), torch.device("cpu")
    original = numerics.bf16_kernels
    cases = {"by_cpu": original, "always": lambda device: True}
    runs = {c: [] for c in cases}
    try:
        for rep in range(args.reps):
            # alternate which case goes first: the process's first probe also pays first-call costs
            for case, check in (cases.items() if rep % 2 == 0 else reversed(cases.items())):
                numerics.bf16_kernels = check
                t0 = time.perf_counter()
                n = numerics.resolve("auto", nets, cpu, one_forward_step=True)
                runs[case].append({"wall_s": time.perf_counter() - t0, "setup": n.setup, "attention": n.attention,
                                   "one_forward": n.one_forward, "probe_s": n.probe_s})
    finally:
        numerics.bf16_kernels = original
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "preset": args.preset,
              "batch_size": cfg.train.batch_size, "bf16_kernels": original(cpu), "reps": args.reps, "runs": runs,
              "wall_s_min": {c: min(r["wall_s"] for r in v) for c, v in runs.items()}}
    write_json(result, args.out or RESULTS / "profile" / f"probe_cost_{args.preset}.json")
    for case, v in runs.items():
        print(f"{case:7s} " + "  ".join(f"{r['wall_s']:.1f} s ({r['setup']}, {r['attention']}, one forward "
                                         f"{r['one_forward']})" for r in v))
    print(f"bf16 kernels on this CPU: {result['bf16_kernels']}")
    return result


if __name__ == "__main__":
    main()
