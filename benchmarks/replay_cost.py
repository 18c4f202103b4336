"""Replay cost (sec. 4.4.5 / issue 6): wall time per generated pair and correspondence DSC of the
paper's sampler (DDPM, 200 reverse steps over K = 1000) vs DDIM at 50/25/10 steps, all from the
same trained C2GR checkpoint (the method table's final c2gr round), judged by its JointTrain run.

    python benchmarks/replay_cost.py                       # after benchmarks/method_table.py
    python benchmarks/replay_cost.py --pairs 16 --tasks fundus-a mms-a

For each task the four samplers start from the same seed; time is the wall time of the whole
sampling call divided by the pairs (one process, one after the other, so the ratios are fair even
when other jobs share the machine). The answer is the fewest DDIM steps whose mean correspondence
DSC is within one point (1 % DSC) of DDPM-200's, among DDIM settings and among all (strided DDPM too,
e.g. `--samplers ddpm-200 ddpm-50 ddim-25`). A DDIM sampler may carry its eta (Song et al. eq. 16:
0 deterministic, the default; 1 the ancestral DDPM's variance): `ddim-25-eta1`, `ddim-25-eta0.5`. A spec
without -etaE is eta 0 whatever the run's `diffusion.ddim_eta`, so a label means one sampler in every results
file; the run's own eta is recorded (`run_ddim_eta`) and named when it is not 0.
Writes benchmarks/results/replay_cost.json (or --out).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, TABLE_RUNS, finished_run, write_json  # noqa: E402
from c2gr_core.diffusion import sample_pairs  # noqa: E402
from c2gr_core.analysis.quality import correspondence_dsc  # noqa: E402
from c2gr_core.experiment.runs import load_method  # noqa: E402

SAMPLERS = [("ddpm", 200), ("ddim", 50), ("ddim", 25), ("ddim", 10)]


SPEC = re.compile(r"(ddpm|ddim)-(\d+)(?:-eta(\d+(?:\.\d*)?))?")


def parse_sampler(spec: str) -> tuple[str, int, float]:
    """'ddim-25-eta0.5' -> ('ddim', 25, 0.5); eta is 0 unless given, and only DDIM has one."""
    m = SPEC.fullmatch(spec)
    if not m or (m[3] and (m[1] != "ddim" or float(m[3]) > 1.0)):
        raise SystemExit(f"--samplers: {spec!r} is not sampler-steps[-etaE] with sampler ddpm|ddim and "
                         f"0 <= E <= 1 for DDIM only (e.g. ddim-25, ddim-25-eta1)")
    return m[1], int(m[2]), float(m[3] or 0.0)


def label(kind: str, steps: int, eta: float) -> str:
    return f"{kind}-{steps}" + (f"-eta{eta:g}" if eta else "")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(TABLE_RUNS), help="folder of <method>-s<seed> runs")
    ap.add_argument("--method", default="c2gr", help="the generative run to sample from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=32, help="pairs per task and sampler")
    ap.add_argument("--tasks", nargs="+", default=None, help="task names (default: every task of the run)")
    ap.add_argument("--samplers", nargs="+", default=[f"{s}-{k}" for s, k in SAMPLERS],
                    help="sampler-steps[-etaE], e.g. ddpm-200 ddim-10 ddim-25-eta1 (eta: DDIM only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "replay_cost.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    samplers = [parse_sampler(s) for s in args.samplers]
    labels = [label(*x) for x in samplers]
    twice = sorted({k for k in labels if labels.count(k) > 1})
    if twice:
        raise SystemExit(f"--samplers: {twice} given twice (eta 0 is the plain DDIM)")
    gen_run = finished_run(args.runs, args.method, args.seed)
    m = load_method(gen_run)
    ref = load_method(finished_run(args.runs, "joint", args.seed))
    names = [c.name for c in m.ctx.cards]
    ref_names = [c.name for c in ref.ctx.cards]
    tasks = args.tasks or names
    bad = [t for t in tasks if t not in names or t not in ref_names]
    if bad:
        raise SystemExit(f"--tasks: {bad} not in both runs; tasks: {names}")
    cfg = m.ctx.cfg
    if cfg.diffusion.ddim_eta and any(kind == "ddim" and not eta for kind, _, eta in samplers):
        print(f"note: {gen_run} samples its replay with DDIM eta {cfg.diffusion.ddim_eta:g}; the specs here "
              f"without -etaE run eta 0", flush=True)
    m.model.eval()
    with torch.no_grad():
        _, z_gen = m.model.prompts(m.ctx.emb, len(names) - 1)
    per: dict = {label(*s): {"per_task": {}} for s in samplers}
    for task in tasks:
        j = names.index(task)
        for kind, steps, eta in samplers:
            key = label(kind, steps, eta)
            gen = torch.Generator().manual_seed(1000 + j)
            t0 = time.perf_counter()
            images, labels = sample_pairs(m.replay_denoiser, z_gen[j], args.pairs, cfg.data.image_size, m.model.codec,
                                          sampler=kind, steps=steps, cfg=cfg.diffusion, generator=gen, eta=eta)
            sec = time.perf_counter() - t0
            labels[labels > m.ctx.cards[j].n_classes] = 0  # as C2GR.replay does
            corr = correspondence_dsc(images, labels, ref, ref_names.index(task), m.ctx.cards[j].n_classes)
            per[key]["per_task"][task] = {"sec_per_pair": sec / args.pairs,
                                                        "correspondence_dsc": corr["mean"]}
            print(f"{task:12s} {key:<13s} {1000 * sec / args.pairs:8.1f} ms/pair  "
                  f"correspondence DSC {100 * corr['mean']:5.1f}", flush=True)
    for v in per.values():
        v["sec_per_pair"] = float(np.mean([r["sec_per_pair"] for r in v["per_task"].values()]))
        v["correspondence_dsc"] = float(np.nanmean([r["correspondence_dsc"] for r in v["per_task"].values()]))
    result = {"run": str(gen_run), "reference": str(finished_run(args.runs, "joint", args.seed)),
              "pairs_per_task": args.pairs, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "run_ddim_eta": cfg.diffusion.ddim_eta, "samplers": per}
    base = per.get("ddpm-200")
    if base is not None:
        # Strided DDPM is the paper's own sampler with fewer steps, so it competes with DDIM for the answer.
        within = sorted((k, e, s) for (s, k, e) in samplers if (s, k, e) != ("ddpm", 200, 0.0) and
                        100 * (base["correspondence_dsc"] - per[label(s, k, e)]["correspondence_dsc"]) <= 1.0)
        ddim = [k for k, e, s in within if s == "ddim"]
        result["fewest_ddim_steps_within_1_point_of_ddpm200"] = ddim[0] if ddim else None
        result["fewest_steps_within_1_point_of_ddpm200"] = label(within[0][2], within[0][0], within[0][1]) \
            if within else None
        for k, v in per.items():
            v["speedup_vs_ddpm200"] = base["sec_per_pair"] / v["sec_per_pair"]
    out = write_json(result, args.out)
    for k, v in per.items():
        print(f"{k:13s} {1000 * v['sec_per_pair']:8.1f} ms/pair  "
              f"correspondence DSC {100 * v['correspondence_dsc']:5.1f}"
              + (f"  {v['speedup_vs_ddpm200']:5.1f}x faster than ddpm-200" if "speedup_vs_ddpm200" in v else ""))
    if "fewest_ddim_steps_within_1_point_of_ddpm200" in result:
        print("fewest DDIM steps within 1 DSC point of DDPM-200:",
              result["fewest_ddim_steps_within_1_point_of_ddpm200"])
        print("fewest steps of any sampler within 1 DSC point of DDPM-200:",
              result["fewest_steps_within_1_point_of_ddpm200"])
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
