"""Joint-diffusion speed: train-step throughput of NJD vs BJD (batched / unbatched), and sampling time.

    python benchmarks/diffusion_speed.py                      # tiny + cpu presets, fp32
    python benchmarks/diffusion_speed.py --bf16 --presets cpu

Train step = forward + backward + Adam step on one batch of cfg.train.batch_size pairs; img/s counts
image–mask pairs (a BJD step feeds each pair to the denoiser three times). Sampling time is per
generated pair, for DDPM with 200 reverse steps over K = 1000 (the paper's) and DDIM at 50/25/10.
Times are the minimum over repetitions; "cpu" is the process CPU time, which with --threads 1 stays
close to the uncontended wall time when other jobs share the machine.
Writes benchmarks/results/diffusion_speed.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

from c2gr_core.config import preset
from c2gr_core.diffusion import MaskCodec, bjd_loss, make_scheduler, njd_loss, sample_pairs
from c2gr_core.models.denoiser import Denoiser, count_parameters

MASK_LABELS = 4  # C_max + 1 for the paper stream
OBJECTIVES = {"njd": dict(objective="njd"), "bjd_batched": dict(objective="bjd", batched=True),
              "bjd_unbatched": dict(objective="bjd", batched=False)}
SAMPLERS = [("ddpm", 200), ("ddim", 50), ("ddim", 25), ("ddim", 10)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _denoiser(cfg, device):
    torch.manual_seed(0)
    return Denoiser(cfg.denoiser, mask_channels=MASK_LABELS, prompt_dim=cfg.prompt.node_dim,
                    n_tokens=cfg.prompt.n_tokens).to(device)


def bench_train(cfg, name: str, device: torch.device, bf16: bool, reps: int, warmup: int) -> dict:
    net = _denoiser(cfg, device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    sched = make_scheduler(cfg.diffusion, "ddpm")
    b, s = cfg.train.batch_size, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(b, 3, s, s, generator=g) * 2 - 1).to(device)
    y0 = MaskCodec(MASK_LABELS).encode(torch.randint(0, MASK_LABELS, (b, s, s), generator=g)).to(device)
    prompt = torch.randn(b, cfg.prompt.node_dim, generator=g).to(device)
    spec = OBJECTIVES[name]

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            if spec["objective"] == "njd":
                loss = njd_loss(net, x0, y0, prompt, sched, generator=g)
            else:
                loss = bjd_loss(net, x0, y0, prompt, sched, batched=spec["batched"], generator=g)
        loss.total.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # Minimum over repetitions (as timeit does): on a shared machine the slower runs measure other jobs.
    sec = min(times)
    return {"batch": b, "sec_per_step": sec, "img_per_s": b / sec, "reps": reps,
            "sec_per_step_median": sorted(times)[len(times) // 2], "cpu_sec_per_step": min(cpu)}


def bench_sampling(cfg, sampler: str, steps: int, n: int, device: torch.device, bf16: bool, reps: int = 1) -> dict:
    net = _denoiser(cfg, device)
    prompt = torch.randn(cfg.prompt.node_dim, device=device)
    codec = MaskCodec(MASK_LABELS)
    with _autocast(device, bf16):
        sample_pairs(net, prompt, n, cfg.data.image_size, codec, sampler="ddim", steps=2, cfg=cfg.diffusion)  # warm-up
        _sync(device)
        times, cpu = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            images, labels = sample_pairs(net, prompt, n, cfg.data.image_size, codec, sampler=sampler, steps=steps,
                                          cfg=cfg.diffusion, generator=torch.Generator().manual_seed(0), chunk_size=n)
            _sync(device)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    assert images.shape[0] == n and labels.max() < MASK_LABELS
    total = min(times)
    return {"pairs": n, "sec_total": total, "sec_per_pair": total / n, "reps": reps,
            "cpu_sec_per_pair": min(cpu) / n}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "cpu"], choices=["tiny", "cpu", "paper"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for train steps and sampling")
    ap.add_argument("--reps", type=int, default=3, help="timed train steps per objective (minimum reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sample-reps", type=int, default=1, help="timed runs per sampler (minimum reported)")
    ap.add_argument("--pairs", type=int, default=None, help="pairs sampled per sampler (default: 8 tiny, 4 cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "diffusion_speed.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "device": str(device), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "bf16": args.bf16, "mask_labels": MASK_LABELS,
              "presets": {}}
    rows = []
    for name in args.presets:
        cfg = preset(name)
        n_pairs = args.pairs or {"tiny": 8, "cpu": 4, "paper": 2}[name]
        entry = {"image_size": cfg.data.image_size, "denoiser_channels": list(cfg.denoiser.channels),
                 "denoiser_params": count_parameters(_denoiser(cfg, device)), "train": {}, "sampling": {}}
        for obj in OBJECTIVES:
            r = bench_train(cfg, obj, device, args.bf16, args.reps, args.warmup)
            entry["train"][obj] = r
            rows.append((name, f"train {obj}", f"{r['sec_per_step']:.3f} s/step", f"{r['img_per_s']:.1f} img/s",
                         f"cpu {r['cpu_sec_per_step']:.3f} s"))
        for sampler, steps in SAMPLERS:
            r = bench_sampling(cfg, sampler, steps, n_pairs, device, args.bf16, args.sample_reps)
            entry["sampling"][f"{sampler}-{steps}"] = r
            rows.append((name, f"sample {sampler}-{steps}", f"{r['sec_per_pair']:.3f} s/pair", f"n={n_pairs}",
                         f"cpu {r['cpu_sec_per_pair']:.3f} s"))
        tr = entry["train"]
        wall = tr["bjd_unbatched"]["sec_per_step"] / tr["bjd_batched"]["sec_per_step"]
        cpu = tr["bjd_unbatched"]["cpu_sec_per_step"] / tr["bjd_batched"]["cpu_sec_per_step"]
        entry["bjd_batched_speedup_vs_unbatched"] = {"wall": wall, "cpu": cpu}
        rows.append((name, "BJD batched vs unbatched", f"{wall:.2f}x speed", "", f"cpu {cpu:.2f}x"))
        result["presets"][name] = entry

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)

    print(f"device={device} threads={result['threads']} bf16={args.bf16} torch={torch.__version__}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
