"""Where the time of a C2GR round goes: torch.profiler by op for one coupled step (eq. 9: segmentor +
denoiser + prompt graph), one generator-only step (the rest of a round: the denoiser alone, replay
batch distilled from the frozen teacher as the bench preset does) and one replay-sampling call
(DDIM over `replay_per_task` pairs of one task), each before and after the speed changes of this
workbench (attention kernel by device, numerics chosen per run).

    python benchmarks/profile_step.py                  # bench preset, 2 threads (OMP_NUM_THREADS, else 2)
    python benchmarks/profile_step.py --preset cpu     # 64^2 networks of the cpu preset
    python benchmarks/profile_step.py --preset cpu --replay-pairs 16   # sampling of 16 pairs, not 200
    python benchmarks/profile_step.py --split --no-ops # each change of "after" alone, timed only

The sampling call is one batched reverse chain, so its cost grows with the number of pairs while the
op mix stays the same; --replay-pairs makes the profile affordable on a slow CPU (the cpu preset
samples all 200 training pairs of a task per call).

"before" = what every run did until these changes: torch's fused attention kernel, fp32, contiguous,
and one forward per batch (`coupled_loss(one_forward=False)`); "after" =
what a run of the preset chooses on this machine with train.amp_bf16 = "auto" (`training/numerics.py`,
measured here the same way: the setup, the attention kernel, one forward or two);
"fixed_kernels" = what runs did before the kernel and the forward batching were chosen per run (the
chosen setup with einsum attention and one forward, always). Ops are grouped (convolution, attention,
matmul, normalisation, elementwise, other) by their self CPU time. Writes
benchmarks/results/profile/<preset>.json (or --out): per call the wall time (min of --reps) and
the top ops with their share, before and after. --split adds one case per change, "before" plus that
change alone (einsum attention; one forward; the chosen numerics where they are not plain fp32), so a
speed-up or slow-down of "after" can be traced to its cause; --no-ops times without profiling by op.

The process's malloc keeps what a step frees, as in a run (`training/allocator.py`; `--default-malloc`
to measure without it): the run-time probe and the steps are timed in the allocator state a run has.
--probe-repeats N runs the kernel probe N times in a row (the first decides "after", as in a run) to
show how stable its choice is.
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from contextlib import nullcontext
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, add_threads_arg, write_json  # noqa: E402
from benchmarks.training_cost import Setup  # noqa: E402
from c2gr_core.config import preset  # noqa: E402
from c2gr_core.diffusion import sample_pairs  # noqa: E402
from c2gr_core.methods.coupled import coupled_loss  # noqa: E402
from c2gr_core.models.attention import fix_attention  # noqa: E402
from c2gr_core.training import allocator, numerics  # noqa: E402

GROUPS = [("convolution", ("conv",)), ("attention", ("attention", "softmax", "bmm", "baddbmm", "einsum")),
          ("matmul", ("mm", "addmm", "linear")), ("normalisation", ("group_norm", "layer_norm")),
          ("elementwise", ("silu", "gelu", "add", "mul", "sub", "div", "copy", "cat", "clone", "pow",
                           "sqrt", "fill", "zero", "neg", "clamp", "to_copy", "sum", "mean"))]


def group_of(op: str) -> str:
    name = op.lower()
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


SEPARATE = partial(coupled_loss, one_forward=False)   # one forward per batch, as before


class Case:
    """One configuration of the networks ("before" or "after") and the three profiled calls."""

    def __init__(self, setup: Setup, cfg, attention: str, layout: str, bf16: bool, loss=coupled_loss,
                 adam: dict | None = None):
        """`adam`: keyword arguments of torch.optim.Adam beyond the learning rate (foreach / fused)."""
        self.cfg, self.setup, self.bf16, self.loss = cfg, setup, bf16, loss
        fmt = torch.channels_last if layout == "fp32_channels_last" else torch.contiguous_format
        self.model = fix_attention(copy.deepcopy(setup.model), attention).train().to(memory_format=fmt)
        with torch.no_grad():
            self.z = self.model.prompts(setup.emb, 1)[1].detach()
        self.teacher = (copy.deepcopy(self.model.denoiser).eval().requires_grad_(False), self.z)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, **(adam or {}))

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _train(self, segmentor: bool) -> None:
        s = self.setup
        with self._autocast():
            out = self.loss(self.model, s.emb, 1, s.cur, s.rep, s.sched, s.n_classes, train_segmentor=segmentor,
                            train_prompt=segmentor, teacher=self.teacher)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(list(self.model.parameters()), 1.0)
        self.opt.step()

    def coupled_step(self) -> None:
        self._train(segmentor=True)

    def generator_step(self) -> None:
        self._train(segmentor=False)

    def replay_sampling(self) -> None:
        cfg = self.cfg
        sample_pairs(self.teacher[0], self.z[0], cfg.train.replay_per_task or cfg.data.n_train, cfg.data.image_size,
                     self.model.codec, cfg=cfg.diffusion, generator=torch.Generator().manual_seed(0), bf16=self.bf16)


def probe_like_a_run(setup: Setup, cfg) -> dict[str, float]:
    """numerics.probe on the batches a run of `cfg` probes (Method.probe_batch): current + replay
    through the segmentor, BJD's three terms of both through the denoiser."""
    return numerics.probe(run_networks(setup, cfg), torch.device("cpu"))


def run_networks(setup: Setup, cfg) -> list:
    """The (network, inputs) a C2GR run of `cfg` probes (Method.probe_batch): current + replay rows
    through the segmentor, BJD's three terms of both through the denoiser (the default
    diffusion.term_sampling "all"; these benchmarks time that path)."""
    B = cfg.train.batch_size
    return [(setup.model.segmentor, setup.model.segmentor.example_inputs(2 * B, cfg.data.image_size)),
            (setup.model.denoiser, setup.model.denoiser.example_inputs(6 * B, cfg.data.image_size))]


def numerics_like_a_run(setup: Setup, cfg, fixed_setup: str | None = None) -> tuple[numerics.Numerics, float]:
    """What a C2GR run of `cfg` with train.amp_bf16 = "auto" would train with here, and the seconds
    its probe took (a run's start-up cost). `fixed_setup` skips the setup probe (a result already known
    on this CPU: bf16 takes minutes per timing where it is emulated) and probes only the kernels."""
    nets, cpu = run_networks(setup, cfg), torch.device("cpu")
    t0 = time.perf_counter()
    chosen = (numerics.resolve("auto", nets, cpu, one_forward_step=True) if fixed_setup is None else
              numerics.resolve_kernels(nets, fixed_setup, cpu, one_forward_step=True))
    return chosen, time.perf_counter() - t0


def by_op(fn, top: int) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        g = group_of(e.key)
        groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {"self_cpu_s": total / 1e6,
            "groups": {g: {"s": v / 1e6, "share": v / total} for g, v in sorted(groups.items(), key=lambda x: -x[1])},
            "top_ops": [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
                         "share": e.self_cpu_time_total / total} for e in events[:top]]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", choices=["tiny", "bench", "cpu"])
    add_threads_arg(ap)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per case and call (interleaved; min reported)")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--replay-pairs", type=int, default=None,
                    help="pairs per replay-sampling call (default: the preset's train.replay_per_task or data.n_train)")
    ap.add_argument("--split", action="store_true",
                    help="also time each change of 'after' alone on top of 'before'")
    ap.add_argument("--no-ops", action="store_true", help="time only: no profile by op")
    ap.add_argument("--setup", choices=numerics.SETUPS, default=None,
                    help="take this setup instead of probing it (the kernels are still probed)")
    ap.add_argument("--probe-repeats", type=int, default=1,
                    help="run the run-time probe this many times (the first decides 'after'; default 1)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc malloc as it comes (runs keep freed memory: training/allocator.py)")
    ap.add_argument("--quick", action="store_true", help="smoke: tiny preset, small batch, 1 rep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.reps = "tiny", 1
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    if args.quick:
        cfg.train.batch_size, cfg.train.replay_per_task, cfg.diffusion.sample_steps = 2, 2, 2
    if args.replay_pairs is not None:
        if args.replay_pairs < 1:
            ap.error(f"--replay-pairs must be >= 1, got {args.replay_pairs}")
        cfg.train.replay_per_task = args.replay_pairs
    if args.probe_repeats < 1:
        ap.error(f"--probe-repeats must be >= 1, got {args.probe_repeats}")
    if not args.default_malloc:
        allocator.keep_freed_memory()
    setup = Setup(cfg)
    run_numerics, probe_wall = numerics_like_a_run(setup, cfg, args.setup)
    repeats = [numerics_like_a_run(setup, cfg, args.setup)[0] for _ in range(args.probe_repeats - 1)]
    probe_s, chosen = run_numerics.probe_s, run_numerics.setup
    cases = {"before": Case(setup, cfg, "sdpa", "fp32", False, loss=SEPARATE),
             "after": Case(setup, cfg, run_numerics.attention or "math", chosen, chosen == "bf16",
                           loss=partial(coupled_loss, one_forward=run_numerics.one_forward)),
             "fixed_kernels": Case(setup, cfg, "math", chosen, chosen == "bf16")}
    if args.split:
        cases["einsum_attention_only"] = Case(setup, cfg, "math", "fp32", False, loss=SEPARATE)
        cases["one_forward_only"] = Case(setup, cfg, "sdpa", "fp32", False)
        if chosen != "fp32":
            cases[f"{chosen}_only"] = Case(setup, cfg, "sdpa", chosen, chosen == "bf16", loss=SEPARATE)
    calls = ("coupled_step", "generator_step", "replay_sampling")
    for case in cases.values():  # warm-up (allocator, oneDNN kernels)
        for c in calls:
            getattr(case, c)()
    times = {(k, c): [] for k in cases for c in calls}
    for _ in range(args.reps):
        for c in calls:
            for k, case in cases.items():
                t0 = time.perf_counter()
                getattr(case, c)()
                times[(k, c)].append(time.perf_counter() - t0)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "preset": args.preset, "image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size,
              "replay_pairs_sampled": cfg.train.replay_per_task or cfg.data.n_train,
              "sampler": f"{cfg.diffusion.sampler}-{cfg.diffusion.sample_steps}",
              "numerics_probe_s": probe_s, "numerics_probe_wall_s": round(probe_wall, 1), "after_setup": chosen,
              "setup_probed": args.setup is None, "malloc_keeps_freed_memory": allocator.kept,
              "probe_repeats": [{"probe_s": n.probe_s, "setup": n.setup, "attention": n.attention,
                                 "one_forward": n.one_forward} for n in [run_numerics, *repeats]],
              "after_attention": run_numerics.attention, "after_one_forward": run_numerics.one_forward,
              "reps": args.reps, "calls": {}}
    for c in calls:
        entry = {}
        for k, case in cases.items():
            entry[k] = {"sec_min": min(times[(k, c)]), "sec_median": sorted(times[(k, c)])[args.reps // 2],
                        **({} if args.no_ops else by_op(getattr(case, c), args.top))}
        # each case's speed against "before" (min over reps); "speedup" is the whole change, kept by its old name
        entry["speedup_over_before"] = {k: entry["before"]["sec_min"] / entry[k]["sec_min"] for k in cases if k != "before"}
        entry["speedup"] = entry["speedup_over_before"]["after"]
        result["calls"][c] = entry
    out = write_json(result, args.out or RESULTS / "profile" / f"{args.preset}.json")
    print(f"preset={args.preset} threads={result['threads']} after = {chosen}, attention {run_numerics.attention}, "
          f"one forward {run_numerics.one_forward}; probe ({probe_wall:.0f} s) {probe_s}")
    for i, n in enumerate(repeats, 2):
        print(f"probe {i}: {n.setup}, attention {n.attention}, one forward {n.one_forward}; {n.probe_s}")
    for c, e in result["calls"].items():
        print(f"{c:16s} before {e['before']['sec_min']:.3f} s  " + "  ".join(
            f"{k} {e[k]['sec_min']:.3f} s ({x:.2f}x)" for k, x in e["speedup_over_before"].items()))
        for k in cases:
            if "groups" in e[k]:
                print(f"    {k:6s} " + ", ".join(f"{g} {100 * v['share']:.0f}%" for g, v in e[k]["groups"].items()))
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
