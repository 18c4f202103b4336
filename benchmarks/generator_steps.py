"""Diagnostic for the method table: how many BJD training steps does the bench-preset denoiser need
before its replay is usable? (The table gives C2GR's denoiser 24 steps per round.)

    python benchmarks/generator_steps.py                          # fundus-a, checkpoints 24/96/384 steps
    python benchmarks/generator_steps.py --task mms-a --steps 24 200

One fresh bench-preset C2GR model; its denoiser alone is trained with the BJD loss (eq. 3) on one
task's training split, at the table's batch size and learning rate. At each checkpoint it samples
pairs with the table's sampler (DDIM-10) and reports the correspondence DSC against the method
table's JointTrain run, the feature-FID (JointTrain segmentor features) against the real test
images, and the label histogram of the generated masks (a denoiser that has learnt nothing decodes
noise into roughly uniform labels over the C_max + 1 one-hot channels).
Writes benchmarks/results/generator_steps.json (or --out).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, TABLE_RUNS, finished_run, write_json  # noqa: E402
from c2gr_core.coupled import C2GRModel  # noqa: E402
from c2gr_core.diffusion import bjd_loss, make_scheduler, sample_pairs  # noqa: E402
from c2gr_core.quality import FEATURE_FID_LABEL, SegmentorFeatures, correspondence_dsc, feature_fid  # noqa: E402
from c2gr_core.runs import load_method, load_run_task  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(TABLE_RUNS), help="folder of <method>-s<seed> runs (needs joint)")
    ap.add_argument("--task", default="fundus-a")
    ap.add_argument("--steps", nargs="+", type=int, default=[24, 96, 384], help="checkpoints (training steps)")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="default: the run's lr")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "generator_steps.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref_run = finished_run(args.runs, "joint")
    ref = load_method(ref_run)
    names = [c.name for c in ref.ctx.cards]
    if args.task not in names:
        raise SystemExit(f"--task {args.task!r} not in the joint run's tasks {names}")
    k = names.index(args.task)
    card = ref.ctx.cards[k]
    cfg = ref.ctx.cfg
    data = load_run_task(ref_run, k)
    torch.manual_seed(0)
    model = C2GRModel(cfg, ref.ctx.c_max, ref.ctx.emb)
    with torch.no_grad():
        zeta = model.prompts(ref.ctx.emb, k)[1][k].detach()  # fixed prompt: only the denoiser learns here
    den = model.denoiser.train()
    opt = torch.optim.Adam(den.parameters(), lr=args.lr or cfg.train.lr)
    sched = make_scheduler(cfg.diffusion, "ddpm")
    x_all = torch.from_numpy(np.asarray(data.train.images))
    y_all = torch.from_numpy(np.asarray(data.train.masks)).long()
    rng = np.random.default_rng(0)
    B = cfg.train.batch_size
    rows, step, t_train = [], 0, 0.0
    for target in sorted(args.steps):
        t0 = time.perf_counter()
        while step < target:
            idx = rng.choice(len(x_all), size=min(B, len(x_all)), replace=False)
            x, y = x_all[idx], y_all[idx]
            loss = bjd_loss(den, x, model.codec.encode(y), zeta.expand(len(x), -1), sched).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
            opt.step()
            step += 1
        t_train += time.perf_counter() - t0
        images, labels = sample_pairs(den, zeta, args.pairs, cfg.data.image_size, model.codec, cfg=cfg.diffusion,
                                      generator=torch.Generator().manual_seed(1))
        den.train()
        labels[labels > card.n_classes] = 0
        hist = np.bincount(labels.flatten().numpy(), minlength=ref.ctx.c_max + 1) / labels.numel()
        real_hist = np.bincount(data.train.masks.flatten(), minlength=ref.ctx.c_max + 1) / data.train.masks.size
        corr = correspondence_dsc(images, labels, ref, k, card.n_classes)["mean"]
        fid = feature_fid(data.test.images, images, SegmentorFeatures(ref, k))
        rows.append({"steps": step, "loss": float(loss.detach()), "correspondence_dsc": corr, FEATURE_FID_LABEL: fid,
                     "generated_label_fractions": hist.tolist(), "real_label_fractions": real_hist.tolist(),
                     "train_s": t_train})
        print(f"{step:5d} steps  loss {float(loss.detach()):.3f}  correspondence DSC {100 * corr:5.1f}  "
              f"feature-FID {fid:8.2f}  "
              f"labels gen {np.round(hist, 2).tolist()} real {np.round(real_hist, 2).tolist()}", flush=True)
    result = {"task": args.task, "reference": str(ref_run), "pairs": args.pairs, "lr": args.lr or cfg.train.lr,
              "batch_size": B, "sampler": f"{cfg.diffusion.sampler}-{cfg.diffusion.sample_steps}", "rows": rows}
    out = write_json(result, args.out)
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
