"""Host-side overheads of a training step: the memory allocator and the Adam implementation.

The profile (`profile_step.py`) leaves 20-25 % of a bench step in small elementwise ops and the
kernel's page faults outside any op; two candidates are timed here side by side:

- **allocator**: glibc malloc as it comes ("default": blocks above the mmap threshold are mapped and
  unmapped every step, so their pages are faulted and zeroed again) against
  `training.allocator.keep_freed_memory()` ("keep": mmap off, no trimming), and jemalloc
  (LD_PRELOAD) where this machine has it, for comparison only;
- **Adam**: torch's per-parameter loop (the default on CPU) against `fused=True` (one kernel per
  parameter tensor).

An allocator acts on the whole process, so each allocator runs in child processes started
alternately (A, B, A, B, ...), each timing every call (coupled step, generator-only step, replay
sampling; each Adam) interleaved; the minimum over all children is reported, with the kernel's
minor page faults and system time per call. The networks run in the numerics a run of the preset
would choose here (`training/numerics.py`), or in --setup.

    python benchmarks/step_overheads.py                 # bench preset, 2 threads (OMP_NUM_THREADS, else 2)
    python benchmarks/step_overheads.py --preset cpu --reps 2 --rounds 2

Writes benchmarks/results/step_overheads[_<preset>].json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, add_threads_arg, write_json  # noqa: E402

CALLS = ("coupled_step", "generator_step", "replay_sampling")
ADAMS = {"loop": {"foreach": False}, "fused": {"fused": True}}
JEMALLOC = [Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"), Path("/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")]


def child(args) -> dict:
    """One process: every (call, Adam) timed interleaved, --reps times, after one warm-up each."""
    if args.malloc == "keep":
        from c2gr_core.training.allocator import keep_freed_memory
        if not keep_freed_memory():
            raise SystemExit("keep_freed_memory() found no glibc malloc here")
    import torch
    from benchmarks.profile_step import Case, probe_like_a_run
    from benchmarks.training_cost import Setup
    from c2gr_core.config import preset
    from c2gr_core.training import numerics

    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    if args.quick:
        cfg.train.batch_size, cfg.train.replay_per_task, cfg.diffusion.sample_steps = 2, 2, 2
    setup = Setup(cfg)
    chosen = args.setup if args.setup != "auto" else numerics.choose(probe_like_a_run(setup, cfg))
    cases = {a: Case(setup, cfg, "math", chosen, chosen == "bf16", adam=kw) for a, kw in ADAMS.items()}
    calls = [(c, a) for c in CALLS for a in cases if a == "loop" or c != "replay_sampling"]
    for c, a in calls:
        getattr(cases[a], c)()
    rows = {f"{c}/{a}": {"sec": [], "minflt": [], "sys_s": []} for c, a in calls}
    for _ in range(args.reps):
        for c, a in calls:
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            getattr(cases[a], c)()
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            row = rows[f"{c}/{a}"]
            row["sec"].append(t1 - t0)
            row["minflt"].append(r1.ru_minflt - r0.ru_minflt)
            row["sys_s"].append(r1.ru_stime - r0.ru_stime)
    return {"setup": chosen, "rows": rows, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def parent(args) -> dict:
    allocators = {"default": {}, "keep": {}}
    jemalloc = next((p for p in JEMALLOC if p.is_file()), None)
    if jemalloc and not args.quick:
        allocators["jemalloc"] = {"LD_PRELOAD": str(jemalloc)}
    runs: dict[str, list[dict]] = {a: [] for a in allocators}
    base = [sys.executable, __file__, "--child", "--preset", args.preset, "--threads", str(args.threads),
            "--reps", str(args.reps), "--setup", args.setup] + (["--quick"] if args.quick else [])
    for i in range(args.rounds):
        for alloc, env in allocators.items():
            print(f"round {i + 1}/{args.rounds}: {alloc}", flush=True)
            cmd = base + ["--malloc", "keep" if alloc == "keep" else "default"]
            out = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True).stdout
            runs[alloc].append(json.loads(out.strip().splitlines()[-1]))
    setups = {r["setup"] for rs in runs.values() for r in rs}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cpu": platform.processor() or platform.machine(), "threads": args.threads, "preset": args.preset,
              "setup": sorted(setups), "reps_per_child": args.reps, "children_per_allocator": args.rounds,
              "jemalloc": str(jemalloc) if "jemalloc" in allocators else None, "calls": {}}
    for key in runs["default"][0]["rows"]:
        entry = {}
        for alloc, rs in runs.items():
            secs = [s for r in rs for s in r["rows"][key]["sec"]]
            flts = [f for r in rs for f in r["rows"][key]["minflt"]]
            syss = [s for r in rs for s in r["rows"][key]["sys_s"]]
            entry[alloc] = {"sec_min": min(secs), "sec_median": sorted(secs)[len(secs) // 2],
                            "minflt_median": sorted(flts)[len(flts) // 2],
                            "sys_s_median": sorted(syss)[len(syss) // 2]}
        for alloc in runs:
            entry[alloc]["speedup_vs_default"] = entry["default"]["sec_min"] / entry[alloc]["sec_min"]
        result["calls"][key] = entry
    for call in CALLS:   # fused Adam against the loop, each allocator
        if f"{call}/fused" in result["calls"]:
            result["calls"][f"{call}/fused"]["speedup_vs_loop"] = {
                a: result["calls"][f"{call}/loop"][a]["sec_min"] / result["calls"][f"{call}/fused"][a]["sec_min"]
                for a in runs}
    result["maxrss_mib"] = {a: max(r["maxrss_mib"] for r in rs) for a, rs in runs.items()}
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", choices=["tiny", "bench", "cpu"])
    add_threads_arg(ap)
    ap.add_argument("--reps", type=int, default=6, help="timed calls per child, each call and Adam")
    ap.add_argument("--rounds", type=int, default=3, help="child processes per allocator, started alternately")
    ap.add_argument("--setup", default="auto", choices=["auto", "fp32", "fp32_channels_last", "bf16"])
    ap.add_argument("--quick", action="store_true", help="smoke: tiny preset, small batch, 1 rep, 1 round")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--malloc", default="default", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.reps, args.rounds = "tiny", 1, 1
    if args.child:
        result = child(args)
        print(json.dumps(result))
        return result
    result = parent(args)
    suffix = "" if args.preset == "bench" else f"_{args.preset}"
    out = write_json(result, args.out or RESULTS / f"step_overheads{suffix}.json")
    print(f"preset={args.preset} setup={result['setup']} threads={args.threads} (min over "
          f"{args.rounds} x {args.reps}; median page faults per call)")
    for key, e in result["calls"].items():
        print(f"{key:24s} " + "  ".join(f"{a} {v['sec_min']:.3f} s ({v['speedup_vs_default']:.2f}x, "
                                        f"{v['minflt_median']} flt)" for a, v in e.items() if isinstance(v, dict)
                                        and "sec_min" in v))
        if "speedup_vs_loop" in e:
            print(f"{'':24s} fused Adam vs loop: " + ", ".join(f"{a} {s:.2f}x" for a, s in e["speedup_vs_loop"].items()))
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
