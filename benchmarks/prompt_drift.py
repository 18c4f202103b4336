"""Is a past task's replay drift in its prompt or in the denoiser's weights? A factorial on a finished run.

    python benchmarks/prompt_drift.py RUN [--task 0] [--n 96] [--ref-steps 300] [--out FILE]

Round w+1 replays task j with the weights that sample the replay (the EMA) after round w, prompted
by task j's generator prompt after round w. Both move between rounds: the weights learn the new
task, and under RUPS task j's prompt is recomputed from a graph that now holds more nodes (and whose
parameters kept training). For every finished round w >= j and every p with j <= p <= w, this script
samples n pairs of task j with the weights of round w and task j's prompt of round p, the same noise
in every cell, and scores them with the correspondence DSC of replay_drift.py (a reference segmentor
trained on 400 pairs of the task's own seed). The diagonal p = w is what the run replayed. If a row
recovers at p = j, the prompt moved; if it stays low, the weights did.

Each cell also says which task the generated images look like: the share a logistic-regression
classifier on real images of every task of the stream (task_identity.py) names as each task. A
replay that corresponds less but still looks like its task has drifted within it; one named as a
sibling has been drawn towards the sibling.

Where in the chain the weights moved: for each later round w, task j's pairs as round j sampled them
are noised at timesteps k (the same noise for both) and the EMA after round w (with its prompt for j)
is compared with the EMA after round j (with its own): the squared difference relative to round j's
output, image and mask channels apart, beside the loss weight the recipe gives that timestep and,
with teacher targets, the weight of the distillation rows that keep task j after its round.

Beside it: the cosine of task j's prompt after each round with its prompt after its own round, and
with every other task's prompt in that round (a prompt drawn towards a sibling's).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import RESULTS, add_threads_arg, write_json  # noqa: E402
from benchmarks.generator_recipes import train_reference  # noqa: E402
from benchmarks.task_identity import pooled, task_classifier  # noqa: E402
from c2gr_core.analysis.quality import correspondence_dsc  # noqa: E402
from c2gr_core.diffusion import Teacher, add_noise, sample_pairs, timestep_weights  # noqa: E402
from c2gr_core.experiment.runs import load_method, read_run  # noqa: E402

TIMESTEPS = (10, 50, 100, 200, 300, 500, 700, 900)


@torch.no_grad()
def departure_by_timestep(before, z_before, after, z_after, x0, scheduler, diffusion_cfg, image_channels: int,
                          seed: int) -> list[dict]:
    """Relative squared difference of `after`'s outputs from `before`'s on x0 noised at each of TIMESTEPS."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k in TIMESTEPS:
        kk = torch.full((len(x0),), k, dtype=torch.long)
        xk = add_noise(scheduler, x0, torch.randn(x0.shape, generator=gen), kk)
        a = before(xk, kk, z_before.expand(len(x0), -1)).float()
        b = after(xk, kk, z_after.expand(len(x0), -1)).float()
        rel = lambda c: float(((b[:, c] - a[:, c]) ** 2).mean() / (a[:, c] ** 2).mean())  # noqa: E731
        row = {"k": k, "loss_weight": float(timestep_weights(scheduler, kk[:1], diffusion_cfg)[0])}
        if diffusion_cfg.replay_target == "teacher":   # after its round, task j is trained by these rows only
            row["distil_weight"] = float(timestep_weights(scheduler, kk[:1], diffusion_cfg, Teacher(before, z_before))[0])
        rows.append({**row, "image": rel(slice(0, image_channels)), "mask": rel(slice(image_channels, None))})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished C2GR-family run that kept every round's checkpoint")
    ap.add_argument("--task", type=int, default=0, help="the past task to follow (index in the stream)")
    ap.add_argument("--n", type=int, default=96, help="pairs per cell (default 96)")
    ap.add_argument("--ref-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="noise of the samples, the same in every cell")
    add_threads_arg(ap)
    ap.add_argument("--out", default=str(RESULTS / "prompt_drift.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    run, j = Path(args.run), args.task
    info = read_run(run)
    last = info["completed_rounds"] - 1
    if not 0 <= j < last:
        raise SystemExit(f"--task {j}: need a past task of {run}, i.e. 0..{last - 1} (finished rounds 0..{last})")
    methods = {r: load_method(run, round=r, device="cpu") for r in range(j, last + 1)}   # numpy below
    m0 = methods[j]
    if not hasattr(m0, "generator_prompts") or not getattr(m0, "generates_pairs", False):
        raise SystemExit(f"{run}: method {info['method']!r} does not generate image-mask pairs")
    cards, cfg = m0.ctx.cards, m0.ctx.cfg
    names = [c.name for c in cards]
    prompts = {r: m.generator_prompts(r) for r, m in methods.items()}   # (r + 1, P) after round r
    ref, ref_dsc = train_reference(m0.ctx, j, args.ref_steps, log)
    clf = task_classifier(cards, cfg.data.image_size)

    corr, named, own_pairs = {}, {}, None
    for w, m in methods.items():
        for p in range(j, w + 1):
            gen = torch.Generator().manual_seed(args.seed)
            images, labels = sample_pairs(m.replay_denoiser, prompts[p][j], args.n, cfg.data.image_size,
                                          m.model.codec, cfg=cfg.diffusion, generator=gen, bf16=m.ctx.numerics.bf16)
            labels[labels > cards[j].n_classes] = 0
            if w == j:
                own_pairs = torch.cat([images, m.model.codec.encode(labels)], 1)
            cell = f"w{w}_p{p}"
            corr[cell] = float(correspondence_dsc(images, labels, ref, j, cards[j].n_classes)["mean"])
            votes = clf.predict(pooled(images))
            named[cell] = {names[i]: float((votes == i).mean()) for i in range(len(names))}
            log(f"weights after round {w} ({names[w]}), prompt after round {p}: correspondence {corr[cell]:.3f}, "
                f"named " + ", ".join(f"{k} {v:.2f}" for k, v in named[cell].items() if v))

    moved = {}
    for w in range(j + 1, last + 1):
        moved[f"after_round_{w}"] = departure_by_timestep(
            m0.replay_denoiser, prompts[j][j], methods[w].replay_denoiser, prompts[w][j], own_pairs,
            m0.scheduler, cfg.diffusion, own_pairs.shape[1] - m0.model.codec.channels, args.seed)
        log(f"weights after round {w} vs after round {j}, relative squared difference (k: image / mask): " +
            ", ".join(f"{r['k']}: {r['image']:.4f} / {r['mask']:.4f}" for r in moved[f"after_round_{w}"]))

    own = prompts[j][j]
    cosine = {}
    for r, z in prompts.items():
        sims = F.cosine_similarity(z[j][None], z, dim=1)
        cosine[f"after_round_{r}"] = {"with_own_round": float(F.cosine_similarity(z[j], own, dim=0)),
                                      **{f"with_{names[i]}": float(sims[i]) for i in range(len(z)) if i != j}}
        log(f"prompt of {names[j]} after round {r}: " + ", ".join(f"{k} {v:.3f}" for k, v in cosine[f'after_round_{r}'].items()))
    out = write_json({"run": str(run), "method": info["method"], "task": names[j], "tasks": names, "n": args.n,
                      "seed": args.seed, "reference_test_dsc": ref_dsc, "reference_steps": args.ref_steps,
                      "correspondence": corr, "named_as": named,
                      "departure_by_timestep": moved, "prompt_cosine": cosine}, args.out)
    log(f"written: {out}")
    return {"correspondence": corr, "named_as": named, "departure_by_timestep": moved, "prompt_cosine": cosine}


if __name__ == "__main__":
    main()
