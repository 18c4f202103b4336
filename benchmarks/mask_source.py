"""Where do C2GR's replayed masks hurt? C2GR with its generated masks replaced by the segmentor's.

GR (image-only replay, masks by the segmentor as it stood before the round) beats every image-mask
variant on the method table. The two differ in the mask source and in the generator. This run
changes one variable: `c2gr-relabel` is C2GR in every respect (joint denoiser, BJD, RUPS, the same
replayed images, the same seeds) except that each replayed image's mask is the segmentor's
prediction on it as that task, GR's labelling. Near GR: the generated masks are the cause; near
C2GR: the generated images are.

    python benchmarks/mask_source.py                     # 9-task stream, bench preset, seed 0
    python benchmarks/mask_source.py --quick --out DIR   # smoke: tiny preset, 2 tasks

Trains OUT/runs/c2gr-relabel-s<seed>/ (resumed if interrupted) and writes OUT/mask_source.json with
its Overall / BWT / TL / final row beside the method table's c2gr and gr runs of the same seed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import RESULTS, TABLE_RUNS, add_threads_arg, write_json  # noqa: E402
from benchmarks.method_table import QUICK_STREAM, STREAM, bench_config, is_complete  # noqa: E402
from c2gr_core.methods import register  # noqa: E402
from c2gr_core.methods.c2gr import C2GR  # noqa: E402
from c2gr_core.experiment.runs import read_run  # noqa: E402
from c2gr_core.experiment.runner import run_stream  # noqa: E402


@register("c2gr-relabel")
class C2GRRelabel(C2GR):
    """Diagnosis only (not a method of the paper): C2GR's replayed images, the segmentor's masks."""

    @torch.no_grad()
    def synthesise(self, t, j, n, generator):
        images, _ = super().synthesise(t, j, n, generator)
        images = images.clamp(-1.0, 1.0).half().float()  # the store keeps float16: label what is replayed
        masks = torch.cat([self.predict(images[s:s + 64], j) for s in range(0, len(images), 64)])
        return images, masks


def row(run: Path) -> dict:
    info = read_run(run)
    m = info["metrics"]
    return {"overall": 100 * m["overall"], "bwt": 100 * m["bwt"], "tl": 100 * m["tl"],
            "final_row": dict(zip(info["tasks"], (100 * info["matrix"][-1]).round(2).tolist())), "run": str(run)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=str(TABLE_RUNS), help="method-table runs to compare with")
    ap.add_argument("--out", default=str(RESULTS / "mask_source"))
    ap.add_argument("--quick", action="store_true", help="smoke size: tiny preset, 2 tasks, 1 epoch")
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    d = out / "runs" / f"c2gr-relabel-s{args.seed}"
    if not is_complete(d):
        run_stream(QUICK_STREAM if args.quick else STREAM, "c2gr-relabel", bench_config(args.quick, args.seed), d,
                   resume=(d / "progress.json").is_file(), progress=False, keep_checkpoints="last")
    rows = {"c2gr-relabel": row(d)}
    for name in ("c2gr", "gr"):
        ref = Path(args.runs) / f"{name}-s{args.seed}"
        if is_complete(ref):
            rows[name] = row(ref)
    result = {"seed": args.seed, "rows": rows}
    write_json(result, out / "mask_source.json")
    for name, r in rows.items():
        print(f"{name:13s} Overall {r['overall']:6.2f}  BWT {r['bwt']:6.2f}  TL {r['tl']:6.2f}")
    return result


if __name__ == "__main__":
    main()
