"""Training cost: images/s of the coupled C2GR step (eq. 9: one loss, one Adam step over segmentor,
denoiser and prompt graph) against the same MONAI networks trained one after the other in a plain
loop (segmentor step on L_seg, then denoiser step on the BJD loss, each with its own Adam and the
prompts held fixed), on the same batch in the same process, in fp32 and bf16 autocast, with torch's
fused attention kernel ("sdpa") or MONAI's einsum path ("math"), in contiguous or channels-last
memory layout (the coupled step in all eight combinations). Achieved
FLOP/s (FLOPs of one forward+backward from torch.utils.flop_counter.FlopCounterMode) as a fraction
of this machine's matmul peak, measured here with the same thread count (best of many
single matmuls timed between the steps).

    python benchmarks/training_cost.py                  # bench preset (32^2)
    python benchmarks/training_cost.py --preset cpu     # 64^2 networks of the cpu preset
    python benchmarks/training_cost.py --set data.image_size=128 --only ...   # bench networks at 128^2

A step sees one current-task batch and one replay batch of cfg.train.batch_size pairs each, as a
C2GR round does from round 1 on; img/s counts those 2B image-mask pairs. The variants are timed
interleaved (A, B, A, B, ...) and the minimum per variant is reported (as timeit does): other jobs
on a shared machine only slow runs down, so the minimum is the closest to the uncontended cost and
the interleaving keeps the comparison side by side. The process's malloc keeps what a step frees, as
in a run (`training/allocator.py`; `--default-malloc` to measure without it).
Writes benchmarks/results/training_cost.json (or --out).
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, write_json  # noqa: E402
from c2gr_core.config import apply_overrides, preset  # noqa: E402
from c2gr_core.methods.coupled import C2GRModel, PairBatch, coupled_loss  # noqa: E402
from c2gr_core.diffusion import bjd_loss, make_scheduler  # noqa: E402
from c2gr_core.training import allocator  # noqa: E402
from c2gr_core.losses import seg_loss  # noqa: E402
from c2gr_core.models.attention import fix_attention  # noqa: E402
from c2gr_core.prompting.prompts import encode_tasks  # noqa: E402
from c2gr_core.prompting.text_encoders import get_text_encoder  # noqa: E402
from data_catalog.catalog import entry_card, parse_entry  # noqa: E402

TASKS = ["synthetic:fundus-a", "synthetic:mms-a"]   # round 1 of a stream: task 1 current, task 0 replayed


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


class MatmulPeak:
    """FLOP/s of an n x n matmul (2 n^3 FLOPs) per dtype, best of every `measure()` call: timed
    between the training steps, so a moment when other jobs leave the core free is caught."""

    def __init__(self, n: int):
        self.n = n
        self.mats = {d: (torch.randn(n, n, dtype=d), torch.randn(n, n, dtype=d))
                     for d in (torch.float32, torch.bfloat16)}
        self.best = {d: float("inf") for d in self.mats}
        self.measure()

    def measure(self) -> None:
        for d, (a, b) in self.mats.items():
            t0 = time.perf_counter()
            a @ b
            self.best[d] = min(self.best[d], time.perf_counter() - t0)

    def flop_per_s(self) -> dict:
        return {"fp32" if d == torch.float32 else "bf16": 2 * self.n ** 3 / t for d, t in self.best.items()}


class Setup:
    """Model, batch and both step functions; each variant gets its own deep copy of the model."""

    def __init__(self, cfg):
        cards = [entry_card(parse_entry(e)) for e in TASKS]
        cfg.prompt.encoder = "hash"  # the cost of a step does not depend on the text encoder
        self.emb = encode_tasks(cards, get_text_encoder(cfg.prompt))
        self.n_classes = torch.tensor([c.n_classes for c in cards])
        torch.manual_seed(0)
        self.model = C2GRModel(cfg, int(self.n_classes.max()), self.emb)
        self.sched = make_scheduler(cfg.diffusion, "ddpm")
        B, s = cfg.train.batch_size, cfg.data.image_size
        g = torch.Generator().manual_seed(0)
        mk = lambda t: PairBatch(torch.rand(B, 3, s, s, generator=g) * 2 - 1,  # noqa: E731
                                 torch.randint(0, int(self.n_classes[t]) + 1, (B, s, s), generator=g),
                                 torch.full((B,), t, dtype=torch.long))
        self.cur, self.rep = mk(1), mk(0)
        self.pairs = 2 * B
        self.lr = cfg.train.lr

    def _copy(self, attention: str, layout: str):
        model = copy.deepcopy(self.model).train()
        fix_attention(model, attention)
        return model.to(memory_format=torch.channels_last) if layout == "channels_last" else model

    def coupled(self, attention: str = "sdpa", layout: str = "contiguous"):
        model = self._copy(attention, layout)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)

        def step(bf16: bool):
            with _autocast(bf16):
                loss = coupled_loss(model, self.emb, 1, self.cur, self.rep, self.sched, self.n_classes)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def sequential(self, attention: str = "sdpa", layout: str = "contiguous"):
        """The same segmentor and denoiser, one after the other, prompts fixed (no coupling)."""
        model = self._copy(attention, layout)
        with torch.no_grad():
            z_seg, z_gen = model.prompts(self.emb, 1)
        z_seg, z_gen = z_seg.detach(), z_gen.detach()
        opt_s = torch.optim.Adam(model.segmentor.parameters(), lr=self.lr)
        opt_d = torch.optim.Adam(model.denoiser.parameters(), lr=self.lr)
        x = torch.cat([self.cur.images, self.rep.images])
        y = torch.cat([self.cur.masks, self.rep.masks])
        k = torch.cat([self.cur.tasks, self.rep.tasks])

        def step(bf16: bool):
            with _autocast(bf16):
                ls = seg_loss(model.segmentor(x, z_seg[k]), y, self.n_classes[k], groups=k)
            opt_s.zero_grad(set_to_none=True)
            ls.backward()
            opt_s.step()
            with _autocast(bf16):
                ld = bjd_loss(model.denoiser, x, model.codec.encode(y), z_gen[k], self.sched, cfg=model.diffusion_cfg).total
            opt_d.zero_grad(set_to_none=True)
            ld.backward()
            opt_d.step()
        return step


def flops_of(step, bf16: bool) -> int:
    with FlopCounterMode(display=False) as fc:
        step(bf16)
    return int(fc.get_total_flops())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench", choices=["tiny", "bench", "cpu"])
    ap.add_argument("--reps", type=int, default=6, help="timed steps per variant (interleaved; minimum reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--only", nargs="+", metavar="VARIANT",
                    help="time only these variants, e.g. coupled_bf16_math_contiguous sequential_bf16_math_contiguous")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc malloc as it comes (runs keep freed memory: training/allocator.py)")
    ap.add_argument("--quick", action="store_true", help="smoke: tiny preset, 2 reps, small matmul")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a preset value, as `c2gr run --set` (e.g. data.image_size=128)")
    ap.add_argument("--out", default=str(RESULTS / "training_cost.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.reps, args.matmul_n = "tiny", 1, 256
    if not args.default_malloc:
        allocator.keep_freed_memory()
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(preset(args.preset), args.set)
    if args.quick:
        cfg.train.batch_size = 2
    setup = Setup(cfg)
    # (step, precision, attention kernel, memory layout): the coupled step in every combination, the
    # sequential baseline with the attention kernel each precision would use.
    keys = [("coupled", p, a, lay) for p in ("fp32", "bf16") for a in ("sdpa", "math")
            for lay in ("contiguous", "channels_last")]
    keys += [("sequential", p, a, lay) for p in ("fp32", "bf16") for a in ("sdpa", "math")
             for lay in ("contiguous", "channels_last")]
    if args.quick:
        keys = [k for k in keys if k[3] == "contiguous" and k[2] == "math"]
    name_of = lambda k: "_".join(k)  # noqa: E731
    if args.only:
        unknown = sorted(set(args.only) - set(map(name_of, keys)))
        if unknown:
            ap.error(f"--only: unknown variant(s) {unknown}; known: {list(map(name_of, keys))}")
        keys = [k for k in keys if name_of(k) in args.only]
    variants = {k: getattr(setup, k[0])(k[2], k[3]) for k in keys}
    for (name, prec, _, _), step in variants.items():  # warm-up (allocator, oneDNN kernels)
        step(prec == "bf16")
    times = {key: [] for key in variants}
    peak = MatmulPeak(args.matmul_n)
    for _ in range(args.reps):
        for _ in range(3):
            peak.measure()
        for key, step in variants.items():
            t0 = time.perf_counter()
            step(key[1] == "bf16")
            times[key].append(time.perf_counter() - t0)
    peaks = peak.flop_per_s()
    rows = {}
    for key, step in variants.items():
        sec, prec = min(times[key]), key[1]
        fl = flops_of(step, prec == "bf16")
        rows[name_of(key)] = {"step": key[0], "precision": prec, "attention": key[2], "layout": key[3],
                              "sec_per_step": sec, "sec_per_step_median": sorted(times[key])[args.reps // 2],
                              "img_per_s": setup.pairs / sec, "flops_per_step": fl, "flop_per_s": fl / sec,
                              "fraction_of_matmul_peak": fl / sec / peaks[prec]}
    speed = lambda a, b: rows[a]["img_per_s"] / rows[b]["img_per_s"]  # noqa: E731
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "malloc_keeps_freed_memory": allocator.kept,
              "preset": args.preset, "overrides": args.set, "image_size": cfg.data.image_size,
              "pairs_per_step": setup.pairs,
              "segmentor_params": sum(p.numel() for p in setup.model.segmentor.parameters()),
              "denoiser_params": sum(p.numel() for p in setup.model.denoiser.parameters()),
              "matmul_n": args.matmul_n, "matmul_peak_flop_per_s": peaks, "variants": rows,
              "coupled_over_sequential_speed": {f"{p}_{a}": speed(f"coupled_{p}_{a}_contiguous",
                                                                  f"sequential_{p}_{a}_contiguous")
                                                for p in ("fp32", "bf16") for a in ("sdpa", "math")
                                                if {f"{step}_{p}_{a}_contiguous" for step in ("coupled", "sequential")}
                                                <= rows.keys()},
              "best": min((k for k in rows if rows[k]["step"] == "coupled"),   # None when --only times no coupled step
                          key=lambda k: rows[k]["sec_per_step"], default=None),
              "baseline": "coupled_fp32_sdpa_contiguous"}
    if result["best"] and result["baseline"] in rows:
        result["best_over_baseline_speed"] = speed(result["best"], result["baseline"])
    # Without native bf16 (no AVX512-BF16/AMX) a plain bf16 matmul runs a slow reference kernel while
    # autocast convolutions go through oneDNN, which converts to fp32 and can beat it: then the bf16
    # matmul is no peak at all, and the row says so instead of reporting > 100 %.
    result["matmul_below_achieved"] = sorted({r["precision"] for r in rows.values()
                                              if r["fraction_of_matmul_peak"] > 1})
    out = write_json(result, args.out)
    print(f"preset={args.preset} {cfg.data.image_size}^2 threads={result['threads']} pairs/step={setup.pairs} "
          f"matmul peak fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    for k, r in rows.items():
        print(f"{k:38s} {r['sec_per_step']:.3f} s/step  {r['img_per_s']:7.1f} img/s  "
              f"{r['flop_per_s'] / 1e9:6.1f} GFLOP/s = {100 * r['fraction_of_matmul_peak']:.1f} % of peak")
    for prec in result["matmul_below_achieved"]:
        print(f"note: the {prec} matmul ran slower than the training step itself, so it is not this "
              f"machine's {prec} peak (no native {prec} kernels for matmul here); read its fractions as ratios only")
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
