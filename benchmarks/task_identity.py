"""Does the generator keep sibling tasks apart? Task identity of generated pairs, trained jointly.

    python benchmarks/task_identity.py [--tasks fundus-a fundus-c mms-a mms-b] [--steps 300 600]
        [--set denoiser.prompt_in_timestep=true] [--prompts random] --out benchmarks/results/task_identity/NAME.json

Two tasks of one family (two fundus sites, two M&Ms vendors, BraTS T1 and FLAIR) differ in how every
pixel looks, and their prompts are close (text cosine 0.84-0.96). A generator that cannot tell the
prompts apart draws one average of the two, and the replay of each teaches the segmentor the other's
look. Here the preset's denoiser learns all `--tasks` at once (balanced batches, the preset's recipe,
prompts fixed as the untrained prompt module gives them: only the prompt's path through the denoiser
is under test, no continual learning). At each of `--steps`, the EMA samples `--pairs` per task and a
logistic-regression classifier trained on real images of the same tasks (400 pairs per task, a seed of
their own; 8x8-pooled pixels) names the task of each generated image: identity[j] is the share of
task j's pairs it names j. Real test images give the classifier's own accuracy, the ceiling.
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
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from benchmarks._common import RESULTS, add_threads_arg, write_json  # noqa: E402
from c2gr_core.config import preset  # noqa: E402
from c2gr_core.diffusion import joint_loss, make_ema, make_scheduler, sample_pairs  # noqa: E402
from c2gr_core.experiment.runs import method_context  # noqa: E402
from c2gr_core.interface.cli import apply_overrides  # noqa: E402
from c2gr_core.methods.coupled import C2GRModel  # noqa: E402
from data_catalog.catalog import get_card  # noqa: E402
from data_catalog.synthetic import synthetic_task  # noqa: E402

CLASSIFIER_SEED = 7   # the classifier's real pairs: neither the generator's training seed nor the test's


def pooled(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 3, H, W) -> (N, 192): 8x8 average-pooled pixels, what a task's look is made of."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return F.adaptive_avg_pool2d(x, 8).flatten(1).numpy()


def task_classifier(cards, image_size: int):
    """A logistic regression naming the task (index into `cards`) of an image from its pooled pixels,
    trained on 400 real images per task of a seed of their own."""
    ref = [synthetic_task(c, image_size, 400, 1, 1, seed=CLASSIFIER_SEED) for c in cards]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return clf.fit(np.concatenate([pooled(r.train.images) for r in ref]),
                   np.concatenate([np.full(len(r.train), j) for j, r in enumerate(ref)]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["fundus-a", "fundus-c", "mms-a", "mms-b", "brats-t1", "brats-flair"])
    ap.add_argument("--steps", nargs="+", type=int, default=[300, 600])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a preset value, as `c2gr run --set`")
    ap.add_argument("--prompts", choices=["module", "random"], default="module",
                    help="module: the untrained prompt module's zeta (as in a stream); random: Gaussian prompts of "
                         "the same norm, nearly orthogonal - tells prompt similarity apart from the denoiser's prompt path")
    ap.add_argument("--pairs", type=int, default=32, help="generated pairs per task at each checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    add_threads_arg(ap)
    ap.add_argument("--out", default=str(RESULTS / "task_identity" / "task_identity.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    cfg = apply_overrides(preset(args.preset), args.set)
    cfg.prompt.encoder = "minilm"
    cards = [get_card(t) for t in args.tasks]
    ctx = method_context(cfg, cards)
    T, s = len(cards), cfg.data.image_size
    data = [synthetic_task(c, s, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test, seed=cfg.train.seed + j)
            for j, c in enumerate(cards)]
    clf = task_classifier(cards, s)
    real_acc = [float((clf.predict(pooled(d.test.images)) == j).mean()) for j, d in enumerate(data)]
    log(f"classifier on real test images: {dict(zip(args.tasks, np.round(real_acc, 3)))}")

    torch.manual_seed(args.seed)
    model = C2GRModel(cfg, ctx.c_max, ctx.emb)
    with torch.no_grad():
        zeta = model.prompts(ctx.emb, T - 1)[1].detach()
    if args.prompts == "random":
        g = torch.randn(zeta.shape, generator=torch.Generator().manual_seed(args.seed))
        zeta = g * (zeta.norm(dim=1, keepdim=True) / g.norm(dim=1, keepdim=True))
    den = model.denoiser.train()
    ema = make_ema(den, cfg.diffusion.ema_decay)
    opt = torch.optim.AdamW(den.parameters(), lr=cfg.train.gen_lr or cfg.train.lr)
    sched = make_scheduler(cfg.diffusion, "ddpm")
    rng = np.random.default_rng(args.seed)
    x = [torch.from_numpy(d.train.images) for d in data]
    y = [torch.from_numpy(d.train.masks).long() for d in data]
    per = max(1, cfg.train.batch_size // T)  # a balanced batch: every task in every step
    result = {"preset": args.preset, "overrides": args.set, "tasks": args.tasks, "seed": args.seed,
              "threads": args.threads, "pairs": args.pairs, "prompts": args.prompts, "classifier_real_accuracy": real_acc,
              "prompt_cosine": torch.nn.functional.cosine_similarity(zeta[:, None], zeta[None], dim=-1).tolist(),
              "prompt_norm": zeta.norm(dim=1).tolist(),
              "checkpoints": []}
    step, t_train = 0, 0.0
    bar = tqdm(total=max(args.steps), desc="generator steps")
    for target in sorted(args.steps):
        t0 = time.perf_counter()
        while step < target:
            idx = [rng.choice(len(xj), per, replace=False) for xj in x]
            xb = torch.cat([xj[i] for xj, i in zip(x, idx)])
            yb = model.codec.encode(torch.cat([yj[i] for yj, i in zip(y, idx)]))
            kb = torch.arange(T).repeat_interleave(per)
            loss = joint_loss(cfg.diffusion, den, xb, yb, zeta[kb], sched).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
            opt.step()
            if ema is not None:
                ema.update_parameters(den)
            step += 1
            bar.update()
        t_train += time.perf_counter() - t0
        row = {"steps": step, "train_s": round(t_train, 1), "identity": {}, "named_as": {}, "mean_abs_to_real": {}}
        net = ema.module if ema is not None else den
        for j, name in enumerate(args.tasks):
            images, _ = sample_pairs(net, zeta[j], args.pairs, s, model.codec, cfg=cfg.diffusion,
                                     generator=torch.Generator().manual_seed(1000 + j))
            named = clf.predict(pooled(images))
            row["identity"][name] = float((named == j).mean())
            row["named_as"][name] = {args.tasks[i]: int((named == i).sum()) for i in np.unique(named)}
            # distance of the generated mean image to each real task's mean image
            g = images.float().mean(0)
            row["mean_abs_to_real"][name] = {args.tasks[i]: round(float((g - torch.from_numpy(d.train.images).mean(0))
                                                                       .abs().mean()), 4) for i, d in enumerate(data)}
        den.train()
        row["mean_identity"] = float(np.mean(list(row["identity"].values())))
        result["checkpoints"].append(row)
        log(f"{step} steps ({t_train:.0f} s): identity " + "  ".join(f"{k} {v:.2f}" for k, v in row["identity"].items())
            + f"  mean {row['mean_identity']:.3f}")
    out = write_json(result, args.out)
    log(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
