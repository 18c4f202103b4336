"""Memory: peak RSS of stream runs and how it grows with the number of tasks.

    python benchmarks/memory.py                         # tiny runs of 2, 4, 8 tasks + a short cpu run
    python benchmarks/memory.py --tasks 2 4 --no-cpu    # fewer runs

Each run is a fresh subprocess (so peaks do not mix) of run_stream with C2GR on the first n tasks of
the synthetic paper-20 stream; the child reports ru_maxrss (peak resident set) after importing
everything and encoding the prompts (the floor) and after the run. Replay pairs are kept on disk
(ReplayStore, memory-mapped), so the peak should stay flat as the stream grows; what does grow
is the test sets held for evaluation (n_test images per seen task).
The cpu-preset run is cut to `--cpu-rounds` rounds of 1 epoch with 32 replay pairs per past task
(the full preset takes hours here): its peak is the networks and activations at 64^2, not the length.
It runs twice: with the preset's numerics ("auto", training/numerics.py) and forced to fp32.

Where the cpu preset's peak comes from (`--steps`): one call per fresh subprocess at the cpu preset,
in fp32 and in bf16 autocast: a segmentor step, a generator step (BJD on a current and a replay
batch, the replay batch distilled from the teacher) and the coupled step of eq. 9, plus one replay
sampling call (64 pairs, one chunk). For each: the peak RSS the call adds, and the bytes of the
tensors autograd saves for the backward pass (torch.autograd.graph.saved_tensors_hooks), which is
what a training step must hold at once.
Writes benchmarks/results/memory.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, write_json  # noqa: E402

STREAM = "synthetic-paper-20"


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(spec: dict) -> dict:
    import torch

    from c2gr_core.config import preset
    from c2gr_core.experiment.runner import run_stream
    from data_catalog.catalog import load_stream

    torch.set_num_threads(spec["threads"])
    cfg = preset(spec["preset"])
    for section, values in spec.get("overrides", {}).items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    entries = load_stream(STREAM)[: spec["n_tasks"]]
    floor = _maxrss_mib()
    t0 = time.perf_counter()
    res = run_stream(entries, spec["method"], cfg, spec["out"], progress=False, keep_checkpoints="last")
    return {"rss_after_imports_mib": floor, "peak_rss_mib": _maxrss_mib(), "wall_s": time.perf_counter() - t0,
            "overall": res.metrics.get("overall")}


def step_child(spec: dict) -> dict:
    """Peak RSS added by one call at the cpu preset, and the bytes autograd saves for its backward."""
    import copy

    import torch

    from benchmarks.training_cost import Setup
    from c2gr_core.config import preset
    from c2gr_core.diffusion import sample_pairs
    from c2gr_core.methods.coupled import coupled_loss

    torch.set_num_threads(spec["threads"])
    cfg = preset(spec["preset"])
    setup = Setup(cfg)
    model = setup.model.train()
    with torch.no_grad():
        z = model.prompts(setup.emb, 1)[1].detach()
    teacher = (copy.deepcopy(model.denoiser).eval().requires_grad_(False), z)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    before = _maxrss_mib()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
        if spec["call"] == "sampling":
            sample_pairs(model.denoiser, z[0], 64, cfg.data.image_size, model.codec, cfg=cfg.diffusion, steps=2,
                         generator=torch.Generator().manual_seed(0), bf16=spec["bf16"])
        else:
            seg, gen = {"segmentor": (True, False), "generator": (False, True), "coupled": (True, True)}[spec["call"]]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = coupled_loss(model, setup.emb, 1, setup.cur, setup.rep, setup.sched, setup.n_classes,
                                   train_segmentor=seg, train_generator=gen, teacher=teacher if gen else None)
            out["loss"].backward()
    return {"rss_before_mib": before, "peak_added_mib": _maxrss_mib() - before, "saved_for_backward_mib": saved[0] / 2**20}


def measure_step(spec: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--step-child", json.dumps(spec)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(spec["threads"])})
    if r.returncode != 0:
        raise RuntimeError(f"memory step child {spec} failed:\n{r.stderr[-3000:]}")
    return {**spec, **json.loads(r.stdout.strip().splitlines()[-1])}


def measure(spec: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(spec["threads"])})
    if r.returncode != 0:
        raise RuntimeError(f"memory child {spec} failed:\n{r.stderr[-3000:]}")
    return {**{k: v for k, v in spec.items() if k != "out"}, **json.loads(r.stdout.strip().splitlines()[-1])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", type=int, default=[2, 4, 8], help="tiny-run stream lengths")
    ap.add_argument("--method", default="c2gr")
    ap.add_argument("--cpu-rounds", type=int, default=2)
    ap.add_argument("--no-cpu", action="store_true", help="skip the cpu-preset run")
    ap.add_argument("--quick", action="store_true", help="smoke: 1-epoch tiny runs, no cpu run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "memory.json"))
    ap.add_argument("--steps", action="store_true", help="only the per-call breakdown at --steps-preset")
    ap.add_argument("--steps-preset", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--step-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    if args.step_child:
        print(json.dumps(step_child(json.loads(args.step_child))))
        return {}
    if args.steps:
        calls = ["segmentor", "generator", "coupled", "sampling"]
        cases = [(c, bf16) for c in calls for bf16 in (False, True)]
        if args.quick:   # each case is a fresh process (~15 s of imports): one per call kind, both precisions
            cases = [("generator", False), ("sampling", True)]
        rows = []
        for call, bf16 in cases:
            rows.append(measure_step({"preset": "tiny" if args.quick else args.steps_preset, "call": call,
                                      "bf16": bf16, "threads": args.threads}))
            r = rows[-1]
            print(f"{call:10s} {'bf16' if bf16 else 'fp32'}: peak +{r['peak_added_mib']:7.1f} MiB, saved for "
                  f"backward {r['saved_for_backward_mib']:7.1f} MiB", flush=True)
        out = Path(args.out)
        previous = json.loads(out.read_text()) if out.is_file() else {}
        result = write_json({**previous, "steps": rows}, out)
        print(f"written: {result}")
        return {"steps": rows}
    runs = []
    with tempfile.TemporaryDirectory(prefix="c2gr-mem-") as tmp:
        tiny = {"train": {"epochs": 1, "replay_per_task": 4}, "prompt": {"encoder": "hash"},
                "data": {"n_train": 8, "n_val": 2, "n_test": 4}, "diffusion": {"sample_steps": 2}} if args.quick else {}
        for n in args.tasks:
            spec = {"preset": "tiny", "n_tasks": n, "method": args.method, "threads": args.threads,
                    "overrides": tiny, "out": f"{tmp}/tiny-{n}"}
            runs.append(measure(spec))
            print(f"tiny  {n:2d} tasks: peak RSS {runs[-1]['peak_rss_mib']:7.1f} MiB "
                  f"(after imports {runs[-1]['rss_after_imports_mib']:.1f}) {runs[-1]['wall_s']:.0f} s", flush=True)
        if not (args.no_cpu or args.quick):
            for amp in ("auto", False):
                spec = {"preset": "cpu", "n_tasks": args.cpu_rounds, "method": args.method, "threads": args.threads,
                        "overrides": {"train": {"epochs": 1, "replay_per_task": 32, "amp_bf16": amp}},
                        "out": f"{tmp}/cpu-{amp}"}
                runs.append(measure(spec))
                runs[-1]["numerics"] = json.loads(Path(f"{tmp}/cpu-{amp}/numerics.json").read_text())["setup"]
                print(f"cpu   {args.cpu_rounds:2d} tasks, {runs[-1]['numerics']}: peak RSS {runs[-1]['peak_rss_mib']:7.1f} "
                      f"MiB (after imports {runs[-1]['rss_after_imports_mib']:.1f}) {runs[-1]['wall_s']:.0f} s", flush=True)
    import torch

    tiny_runs = [r for r in runs if r["preset"] == "tiny"]
    out = Path(args.out)
    kept = {k: v for k, v in (json.loads(out.read_text()) if out.is_file() else {}).items() if k == "steps"}
    result = {"stream": STREAM, "method": args.method, "torch": torch.__version__, "runs": runs, **kept}
    if len(tiny_runs) >= 2:
        a, b = tiny_runs[0], tiny_runs[-1]
        result["tiny_growth_mib_per_task"] = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (b["n_tasks"] - a["n_tasks"])
        print(f"tiny peak RSS growth: {result['tiny_growth_mib_per_task']:.2f} MiB per added task")
    out = write_json(result, args.out)
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
