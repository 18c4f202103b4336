"""Generator diagnostic: does the bench-size denoiser learn, and under which training recipe?

    python benchmarks/generator_recipes.py                        # the full grid (about an hour on 2 cores)
    python benchmarks/generator_recipes.py --tasks fundus-a --recipes v/min_snr --objectives bjd --steps 250

For each task, one reference segmentor is trained on 400 synthetic pairs that no generator sees (its
own seed) and scored on 64 real test pairs. Then, for each objective (BJD, eq. 3; NJD, eq. 1) and
recipe (prediction eps|v x weighting uniform|min-SNR-5), the bench-preset denoiser is trained alone
on the task's 48 training pairs (batch 16, AdamW at the preset's generator lr, grad-clip 1, fixed
prompt), with an EMA (decay --ema) of its weights kept alongside. At every checkpoint both the raw
and the EMA weights sample --pairs pairs with the preset's sampler and are scored:

- correspondence DSC: the reference's prediction on the generated image vs the generated mask;
- feature-FID on the reference's pooled bottleneck features, generated vs real test images;
- the fractions of each label in the generated masks (real ones beside them);
- the copy ratio: how near the generated images lie to the training pairs, relative to real test
  images (`analysis.quality.copy_ratio`; near 0 = the generator replays its training set).

`--seed S` draws another generator (training pairs, initial weights, batch order, diffusion and sampling noise)
while the references keep their seed, so seeds are compared with one ruler.

A "noise" floor is measured too: pairs of uniform noise images with masks drawn from the real label
fractions. Writes benchmarks/results/generator_recipes.json (rows are appended as they finish, and a
re-run skips finished rows) and generator_recipes.png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import RESULTS, add_threads_arg, write_json  # noqa: E402
from c2gr_core.interface.cli import apply_overrides  # noqa: E402
from c2gr_core.config import preset  # noqa: E402
from c2gr_core.methods.coupled import C2GRModel  # noqa: E402
from c2gr_core.diffusion import bjd_loss, make_ema, make_scheduler, njd_loss, sample_pairs  # noqa: E402
from c2gr_core.losses import seg_loss  # noqa: E402
from c2gr_core.methods.finetune import FineTune  # noqa: E402
from c2gr_core.analysis.quality import SegmentorFeatures, copy_ratio, correspondence_dsc, feature_fid  # noqa: E402
from c2gr_core.experiment.runs import method_context  # noqa: E402
from c2gr_core.experiment.runner import evaluate  # noqa: E402
from c2gr_core.models.attention import ATTENTION_KINDS, fix_attention  # noqa: E402
from data_catalog.catalog import get_card  # noqa: E402
from data_catalog.synthetic import synthetic_task  # noqa: E402

TASKS = ["fundus-a", "mms-a", "brats-flair", "kits"]
RECIPES = ["eps/uniform", "eps/min_snr", "v/uniform", "v/min_snr"]
REF_SEED = 1000   # the reference's pairs: another seed, so never the generator's training pairs


def train_reference(ctx, k: int, steps: int, log) -> tuple[FineTune, float]:
    """The preset's prompted segmentor trained for task k alone on 400 pairs of its own seed (batch 32)."""
    cfg = ctx.cfg
    card = ctx.cards[k]
    data = synthetic_task(card, cfg.data.image_size, 400, 1, 64, seed=REF_SEED)
    torch.manual_seed(0)
    ref = FineTune(ctx)
    params = [p for m in ref.modules().values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    x_all, y_all = torch.from_numpy(data.train.images), torch.from_numpy(data.train.masks).long()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.choice(len(x_all), 32, replace=False)
        prompts = ref.seg_prompts(len(ctx.cards) - 1)
        loss = ref.seg_loss_on(x_all[idx], y_all[idx], torch.full((32,), k), prompts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dsc = float(np.nanmean(evaluate(ref, data, k)))
    log(f"reference {card.name}: test DSC {dsc:.3f} ({steps} steps)")
    return ref, dsc


def score(images, labels, ref, k, n_classes, real_test, feats, c_max, real_train) -> dict:
    labels = labels.clone()
    labels[labels > n_classes] = 0
    corr = correspondence_dsc(images, labels, ref, k, n_classes)
    fid = feature_fid(real_test, images, feats)
    hist = np.bincount(labels.flatten().numpy(), minlength=c_max + 1) / labels.numel()
    return {"corr_dsc": corr["mean"], "corr_dsc_per_class": np.round(corr["per_class"], 4).tolist(),
            "feature_fid": fid, "label_fractions": hist.round(4).tolist(),
            "copy_ratio": copy_ratio(images, real_train, real_test)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    ap.add_argument("--objectives", nargs="+", default=["bjd", "njd"], choices=["bjd", "njd"])
    ap.add_argument("--steps", nargs="+", type=int, default=[125, 250, 500, 1000])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--ema", type=float, nargs="+", default=[0.995],
                    help="EMA decays kept side by side; the first is reported as 'ema', others as 'ema_<decay>'")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--gen-lr", type=float, default=None, help="default: the preset's train.gen_lr (else lr)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a preset value, as `c2gr run --set` (e.g. denoiser.channels=[16,32,32])")
    ap.add_argument("--ref-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0,
                    help="the generator's seed: its training pairs, initial weights, batch order, diffusion noise and "
                         "sampling noise (the reference segmentors keep theirs, so every seed is scored by one ruler)")
    add_threads_arg(ap)
    ap.add_argument("--attention", choices=ATTENTION_KINDS, default="math",
                    help="the denoiser's attention kernel (models/attention.py). math: the CPU default, what every "
                         "recorded row used; sdpa: the same maths by torch's fused kernel, which a run's numerics "
                         "probe picks where it is faster (BENCHMARKS.md, 'Not done': BJD vs NJD at 128^2)")
    ap.add_argument("--out", default=str(RESULTS / "generator_recipes.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": [], "references": {}, "noise": {}}
    done = {(r["task"], r["objective"], r["recipe"]) for r in result["rows"]}
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    base = apply_overrides(preset(args.preset), args.set)
    if any(s.startswith("train.seed=") for s in args.set):
        raise SystemExit("--set train.seed: use --seed, which seeds the generator's weights and noise too")
    base.train.seed = args.seed
    base.prompt.encoder = "minilm"
    if args.gen_lr is not None:
        base.train.gen_lr = args.gen_lr
    cards = [get_card(t) for t in args.tasks]
    ctx = method_context(base, cards)
    c_max = ctx.c_max
    result["config"] = {"preset": args.preset, "overrides": args.set, "denoiser_channels": list(base.denoiser.channels),
                        "lr": base.train.gen_lr or base.train.lr, "batch_size": base.train.batch_size,
                        "sampler": f"{base.diffusion.sampler}-{base.diffusion.sample_steps}", "ema": args.ema[0],
                        "ema_alternatives": args.ema[1:],
                        "pairs": args.pairs, "seed": base.train.seed, "snr_gamma": base.diffusion.snr_gamma,
                        "threads": args.threads, "attention": args.attention,
                        "steps": sorted(args.steps)}
    for k, card in enumerate(cards):
        data = synthetic_task(card, base.data.image_size, base.data.n_train, base.data.n_val, base.data.n_test,
                              seed=base.train.seed)
        ref, ref_dsc = train_reference(ctx, k, args.ref_steps, log)
        feats = SegmentorFeatures(ref, k)
        real_test = torch.from_numpy(data.test.images)
        n_cls = card.n_classes
        g = np.random.default_rng(0)
        real_frac = np.bincount(data.train.masks.flatten(), minlength=c_max + 1) / data.train.masks.size
        noise_x = torch.from_numpy(g.uniform(-1, 1, (args.pairs, 3, *real_test.shape[2:])).astype(np.float32))
        noise_y = torch.from_numpy(g.choice(c_max + 1, (args.pairs, *real_test.shape[2:]), p=real_frac))
        result["references"][card.name] = {"test_dsc": ref_dsc, "train_pairs": 400, "seed": REF_SEED,
                                           "generator_train_pairs": len(data.train.images),
                                           "real_label_fractions": real_frac.round(4).tolist()}
        x_all = torch.from_numpy(data.train.images)
        y_all = torch.from_numpy(data.train.masks).long()
        result["noise"][card.name] = score(noise_x, noise_y, ref, k, n_cls, real_test, feats, c_max, x_all)
        log(f"noise floor {card.name}: {result['noise'][card.name]}")
        for objective in args.objectives:
            for recipe in args.recipes:
                if (card.name, objective, recipe) in done:
                    continue
                cfg = copy.deepcopy(base)
                cfg.diffusion.prediction, cfg.diffusion.loss_weighting = recipe.split("/")
                torch.manual_seed(args.seed)
                model = C2GRModel(cfg, c_max, ctx.emb, objective=objective)
                fix_attention(model.denoiser, args.attention)   # before the EMA copies it
                with torch.no_grad():
                    zeta = model.prompts(ctx.emb, len(cards) - 1)[1][k].detach()  # fixed: only the denoiser learns
                den = model.denoiser.train()
                emas = {("ema" if i == 0 else f"ema_{d}"): make_ema(den, d) for i, d in enumerate(args.ema)}
                opt = torch.optim.AdamW(den.parameters(), lr=cfg.train.gen_lr or cfg.train.lr)
                sched = make_scheduler(cfg.diffusion, "ddpm")
                loss_fn = bjd_loss if objective == "bjd" else njd_loss
                rng = np.random.default_rng(args.seed)
                B, step, t_train, checkpoints = cfg.train.batch_size, 0, 0.0, []
                for target in sorted(args.steps):
                    t0 = time.perf_counter()
                    while step < target:
                        idx = rng.choice(len(x_all), size=min(B, len(x_all)), replace=False)
                        loss = loss_fn(den, x_all[idx], model.codec.encode(y_all[idx]), zeta.expand(len(idx), -1),
                                       sched, cfg=cfg.diffusion).total
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
                        opt.step()
                        for ema in emas.values():
                            ema.update_parameters(den)
                        step += 1
                    t_train += time.perf_counter() - t0
                    row = {"steps": step, "loss": float(loss.detach()), "train_s": round(t_train, 1)}
                    for name, net in (("raw", den), *((k, e.module) for k, e in emas.items())):
                        images, labels = sample_pairs(net, zeta, args.pairs, cfg.data.image_size, model.codec,
                                                      cfg=cfg.diffusion,
                                                      generator=torch.Generator().manual_seed(args.seed + 1))
                        row[name] = score(images, labels, ref, k, n_cls, real_test, feats, c_max, x_all)
                    den.train()
                    checkpoints.append(row)
                    log(f"{card.name} {objective} {recipe} {step:5d} steps ({t_train:.0f} s)  corr-DSC " +
                        "  ".join(f"{w} {row[w]['corr_dsc']:.3f}" for w in ("raw", *emas)) + "  feature-FID " +
                        "  ".join(f"{w} {row[w]['feature_fid']:.1f}" for w in ("raw", *emas)) + "  copy ratio " +
                        "  ".join(f"{w} {row[w]['copy_ratio']:.2f}" for w in ("raw", *emas)))
                result["rows"].append({"task": card.name, "objective": objective, "recipe": recipe,
                                       "checkpoints": checkpoints})
                write_json(result, out)
    write_json(result, out)
    plot(result, out.with_suffix(".png"))
    log(f"written: {out}")
    return result


def plot(result: dict, path: Path) -> None:
    """One figure: correspondence DSC vs steps, a panel per task, a line per objective/recipe/weights."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    if fig is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)


def figure(result: dict):
    """The figure `plot` writes (None without rows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = list(dict.fromkeys(r["task"] for r in result["rows"]))
    if not tasks:
        return None
    n_lines = 1 + 2 * sum(r["task"] == tasks[0] for r in result["rows"])   # the first panel's: ema, raw, noise
    # A legend entry at fontsize 7 is about 1.6 in wide: as many columns as the figure's width holds,
    # and the figure grows by the legend's rows, so a single panel's legend is not cropped.
    width = 4.2 * len(tasks)
    ncol = max(1, min(6, int(width / 1.6)))
    legend_h = 0.17 * -(-n_lines // ncol) + 0.15
    fig, axes = plt.subplots(1, len(tasks), figsize=(width, 3.6 + legend_h), squeeze=False, sharey=True)
    colors = dict(zip(RECIPES, ["tab:grey", "tab:brown", "tab:blue", "tab:red"]))
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in result["rows"] if r["task"] == task):
            steps = [c["steps"] for c in r["checkpoints"]]
            for weights, style in (("ema", "-"), ("raw", ":")):
                ax.plot(steps, [c[weights]["corr_dsc"] for c in r["checkpoints"]],
                        style if r["objective"] == "bjd" else style.replace("-", "--"),
                        color=colors[r["recipe"]], marker="o" if r["objective"] == "bjd" else "x", ms=3,
                        label=f"{r['objective'].upper()} {r['recipe']} {weights}")
        noise = result["noise"].get(task, {}).get("corr_dsc")
        if noise is not None:
            ax.axhline(noise, color="k", lw=0.8, ls="-.", label="noise pairs")
        ax.set_xscale("log")
        # Label only the measured budgets: log-axis minor labels overlap at these few steps.
        measured = sorted({c["steps"] for r in result["rows"] if r["task"] == task for c in r["checkpoints"]})
        ax.set_xticks(measured, [str(s) for s in measured])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{task} (reference DSC {result['references'][task]['test_dsc']:.2f})")
        ax.set_xlabel("denoiser training steps")
    axes[0][0].set_ylabel("correspondence DSC")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (3.6 + legend_h), 1, 1))
    return fig


if __name__ == "__main__":
    main()
