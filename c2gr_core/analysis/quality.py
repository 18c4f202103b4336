"""Quality and cost of the replay (sec. 4.4.2 and 4.4.5 of the paper).

- Correspondence DSC (sec. 4.4.2): do the generated masks match the generated images? Judged by
  a reference segmentor (the paper uses the JointTrain model): DSC between the generated masks
  and the reference's predictions on the generated images.
- Image realism (sec. 4.4.2): the paper's FID uses ImageNet Inception-v3 features, which cannot
  be downloaded here. The default is therefore a *feature-FID on the reference segmentor's pooled
  bottleneck features* (MONAI's FIDMetric is feature-agnostic), always labelled
  FEATURE_FID_LABEL; it is not comparable with published FID numbers. The Inception FID is
  computed only when the user gives a local torchvision inception_v3 state dict.
- Copies: does a generator trained on few pairs replay its training set? (`copy_ratio`)
- Cost (Fig. 9): learnable parameters of a method built on a stream.
"""
from __future__ import annotations

import os
import copy
import tempfile
import warnings
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric
from torch import nn

from data_catalog.catalog import entry_card

from ..config import ExperimentConfig, validate
from ..experiment.runs import load_method, load_run_task, method_context, read_run
from ..experiment.tasks import resolve_entries
from ..losses import dice_counts
from ..methods import get_method
from ..methods.base import Method
from ..training.access import TaskAccess

FEATURE_FID_LABEL = "feature-FID (reference segmentor features)"
INCEPTION_FID_LABEL = "Inception FID (user-supplied Inception-v3 weights)"
CORRESPONDENCE_LABEL = "correspondence DSC"
COPY_LABEL = "copy ratio"

# torchvision's inception_v3 ImageNet weights expect ImageNet-normalised input (with transform_input).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


# ------------------------------------------------------------------------- correspondence DSC
@torch.no_grad()
def correspondence_dsc(generated_images, generated_masks, reference: Method, task: int, n_classes: int,
                       batch_size: int = 64) -> dict:
    """DSC between generated masks and `reference.predict(generated_images, task)` (sec. 4.4.2).

    `task` is the task's index in the *reference's* stream. Both sides are predictions, so the
    DSC is taken symmetric: per class 2|A & B| / (|A| + |B|) pooled over the images, NaN only
    where both are empty (a class the generator draws but the reference never sees scores 0).
    Returns {"per_class": (n_classes,) array, "mean": NaN-ignoring mean over classes}.
    """
    x = _as_tensor(generated_images, torch.float32)
    y = _as_tensor(generated_masks).long()
    if x.ndim != 4 or y.ndim != 3 or len(x) != len(y) or x.shape[-2:] != y.shape[-2:] or len(x) == 0:
        raise ValueError(f"correspondence_dsc: need images (N, C, H, W) and masks (N, H, W) with the same N >= 1 "
                         f"and size, got {tuple(x.shape)} and {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) > n_classes:
        raise ValueError(f"correspondence_dsc: generated masks hold labels {int(y.min())}..{int(y.max())}, "
                         f"outside 0..{n_classes} of the task")
    pred = torch.cat([reference.predict(x[s:s + batch_size], task) for s in range(0, len(x), batch_size)])
    inter, p, g = dice_counts(pred.long(), y, n_classes, c_max=n_classes).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        dsc = np.where(p + g > 0, 2 * inter / (p + g), np.nan)
    mean = float(np.nanmean(dsc)) if np.isfinite(dsc).any() else float("nan")
    return {"per_class": dsc, "mean": mean}


# ---------------------------------------------------------------------------- features & FID
class FeatureExtractor(Protocol):
    """images (N, 3, H, W) in [-1, 1] -> features (N, F); `label` names the FID it gives."""
    label: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def segmentor_features(method: Method, images: torch.Tensor, task: int) -> torch.Tensor:
    """Pooled prompt-modulated bottleneck features of a method's segmentor for `task`.

    (`Method.features`: the segmentor prompted as `task`, as its `predict` does.)
    """
    return method.features(images, task)


class SegmentorFeatures:
    """Features of a reference method's segmentor for one of its tasks (FEATURE_FID_LABEL)."""
    label = FEATURE_FID_LABEL

    def __init__(self, method: Method, task: int, batch_size: int = 64):
        self.method, self.task, self.batch_size = method, int(task), batch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _as_tensor(images, torch.float32)
        return torch.cat([segmentor_features(self.method, x[s:s + self.batch_size], self.task)
                          for s in range(0, len(x), self.batch_size)])


class InceptionFeatures:
    """2048-d pool3 features of torchvision's inception_v3 loaded from a local state dict.

    Nothing is downloaded: `weights_path` is a file the user saved, e.g. with
    `torch.save(inception_v3(weights="IMAGENET1K_V1").state_dict(), path)` on a connected machine.
    Images go [-1, 1] -> [0, 1] -> ImageNet normalisation, resized to 299 (bilinear), and the
    network is built with transform_input=True exactly as torchvision builds it for its weights.
    """
    label = INCEPTION_FID_LABEL

    def __init__(self, weights_path: str | os.PathLike | None, device: str = "cpu", batch_size: int = 32):
        path = Path(weights_path) if weights_path else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {weights_path!r}: Inception-v3 weights are not downloaded by the "
                "workbench and must be given as a local file (a torchvision inception_v3 state_dict saved with "
                "torch.save). Without them use the feature-FID on reference segmentor features.")
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ValueError(f"{path}: cannot read Inception weights ({e})") from e
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected an inception_v3 state_dict, got {type(state).__name__}")
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("AuxLogits.")]  # the aux head is unused
        if missing or unexpected:
            raise ValueError(f"{path}: not a torchvision inception_v3 state_dict (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        net.fc = nn.Identity()   # the pooled 2048-d vector (pool3) instead of ImageNet logits
        self.net = net.eval().to(device)
        self.device, self.batch_size = torch.device(device), batch_size
        self.mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _as_tensor(images, torch.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"InceptionFeatures: images must be (N, 3, H, W), got {tuple(x.shape)}")
        out = []
        for s in range(0, len(x), self.batch_size):
            b = F.interpolate(x[s:s + self.batch_size], size=(299, 299), mode="bilinear", align_corners=False)
            b = ((b.clamp(-1, 1) + 1) / 2 - self.mean) / self.std
            out.append(self.net(b.to(self.device)).float().cpu())
        return torch.cat(out)


def feature_fid(real_images, fake_images, extractor: FeatureExtractor) -> float:
    """Fréchet distance between Gaussians fitted to extractor features of two image sets
    (MONAI FIDMetric). Name the result by `extractor.label`, never as plain "FID".

    Few images per set (the run keeps 16 replayed pairs per task) give a biased, noisy estimate:
    compare numbers computed with the same set sizes only.
    """
    feats = []
    for what, imgs in (("real_images", real_images), ("fake_images", fake_images)):
        if len(imgs) < 2:
            raise ValueError(f"feature_fid: {what} needs at least 2 images for a covariance, got {len(imgs)}")
        f = _as_tensor(extractor(_as_tensor(imgs, torch.float32))).double()
        if f.ndim != 2 or f.shape[1] < 2:
            raise ValueError(f"feature_fid: the extractor must return (N, F >= 2) features, got {tuple(f.shape)}")
        if not torch.isfinite(f).all():
            raise ValueError(f"feature_fid: non-finite features for {what}")
        feats.append(f)
    with warnings.catch_warnings():
        # MONAI still passes scipy's deprecated `disp` argument to sqrtm.
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(FIDMetric()(feats[1], feats[0]))


# ------------------------------------------------------------------------------ copies
@torch.no_grad()
def copy_ratio(generated_images, train_images, held_out_images, chunk: int = 256) -> float:
    """How close generated images lie to the generator's training images, relative to new real ones:
    the median over generated images of the pixel L2 distance to the nearest training image, divided
    by the same median for held-out real images (the memorisation check of Somepalli et al., CVPR
    2023, in pixel space). About 1: samples as new as unseen real images; near 0: copies of the
    training set, whose masks correspond to their images whatever the objective learnt.
    """
    if chunk < 1:
        raise ValueError(f"copy_ratio: chunk must be >= 1, got {chunk}")
    sets = {"generated_images": generated_images, "train_images": train_images, "held_out_images": held_out_images}
    shapes = {}
    for what, imgs in sets.items():
        shape = tuple(imgs.shape)
        if len(shape) < 2 or shape[0] == 0:
            raise ValueError(f"copy_ratio: {what} must be a non-empty batch (N, ...), got shape {shape}")
        shapes[what] = shape[1:]
    if len(set(shapes.values())) != 1:
        raise ValueError("copy_ratio: images of different sizes: " + ", ".join(f"{k} {v}" for k, v in shapes.items()))

    def flat(imgs) -> torch.Tensor:
        t = _as_tensor(imgs, torch.float64)
        return t.reshape(len(t), -1)

    queries = {what: flat(sets[what]) for what in ("generated_images", "held_out_images")}
    best = {what: torch.full((len(q),), float("inf"), dtype=torch.float64) for what, q in queries.items()}
    # Training sets of real datasets can be large (memory-mapped on disk): compare chunk by chunk.
    for s in range(0, len(train_images), chunk):
        train = flat(train_images[s:s + chunk])
        for what, q in queries.items():
            best[what] = torch.minimum(best[what], torch.cdist(q, train).min(dim=1).values)
    nearest = {what: b.quantile(0.5) for what, b in best.items()}
    if nearest["held_out_images"] == 0:
        raise ValueError("copy_ratio: the held-out images include copies of training images (distance 0)")
    return float(nearest["generated_images"] / nearest["held_out_images"])


# ------------------------------------------------------------------------ the replay table
def _samples_round(run: Path, completed: int, round: int | None) -> int:
    have = sorted(int(p.name.split("_")[1]) for p in (run / "samples").glob("round_[0-9]*") if p.is_dir()) \
        if (run / "samples").is_dir() else []
    have = [r for r in have if r < completed]
    if not have:
        raise ValueError(f"{run}: the run kept no replayed samples (samples/round_XX/); only generative-replay "
                         "methods write them, from round 1 on")
    if round is None:
        return have[-1]
    if round not in have:
        raise ValueError(f"{run}: no samples for round {round}; rounds with samples: {have}")
    return round


def replay_quality(run_dir: str | os.PathLike, reference: str | os.PathLike | Method, round: int | None = None,
                   inception_weights: str | os.PathLike | None = None, data_root: str | None = None) -> list[dict]:
    """One row per past task replayed in `round` (default: the last round with samples).

    reference: a JointTrain run directory (its final checkpoint is loaded) or a Method; tasks are
    matched by name, so the reference must have trained on every replayed task.
    Columns: round, task, n_pairs, n_real, CORRESPONDENCE_LABEL (mean over classes), per class,
    FEATURE_FID_LABEL against the task's real test images, COPY_LABEL (`copy_ratio` against the
    task's training images: near 0 where the generator replays copies of them), and
    INCEPTION_FID_LABEL when `inception_weights` is given.
    """
    info = read_run(run_dir)
    run = Path(run_dir)
    r = _samples_round(run, info["completed_rounds"], round)
    ref = reference if isinstance(reference, Method) else load_method(reference)
    ref_names = [c.name for c in ref.ctx.cards]
    inception = InceptionFeatures(inception_weights) if inception_weights is not None else None
    rows = []
    for f in sorted((run / "samples" / f"round_{r:02d}").glob("task_*.npz")):
        j = int(f.stem.split("_")[1])
        name = info["tasks"][j]
        if name not in ref_names:
            raise ValueError(f"reference ({ref.name}) never trained on task {name!r} replayed in {f}; "
                             f"its tasks: {ref_names}")
        k = ref_names.index(name)
        card = ref.ctx.cards[k]
        with np.load(f) as z:
            images, masks = torch.from_numpy(z["images"].astype(np.float32)), torch.from_numpy(z["masks"]).long()
        task_data = load_run_task(run, j, data_root=data_root)
        real = task_data.test.images
        if tuple(real.shape[1:]) != tuple(images.shape[1:]):
            raise ValueError(f"{f}: replayed images {tuple(images.shape[1:])} and real test images "
                             f"{tuple(real.shape[1:])} differ in size")
        try:
            corr = correspondence_dsc(images, masks, ref, k, card.n_classes)
        except ValueError as e:
            raise ValueError(f"{f}: {e}") from e
        row = {"round": r, "task": name, "n_pairs": len(images), "n_real": len(real),
               CORRESPONDENCE_LABEL: corr["mean"],
               "per_class": dict(zip(card.classes, map(float, corr["per_class"]))),
               FEATURE_FID_LABEL: feature_fid(real, images, SegmentorFeatures(ref, k)),
               COPY_LABEL: copy_ratio(images, task_data.train.images, real)}
        if inception is not None:
            row[INCEPTION_FID_LABEL] = feature_fid(real, images, inception)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------- cost
def learnable_params(method_name: str, cfg: ExperimentConfig, stream: str | os.PathLike | Sequence) -> int:
    """Learnable parameters of `method_name` on `stream` at the end of the stream (Fig. 9), untrained.

    The method is built and its `before_round` hooks run for every round with no data readable,
    so a method that allocates per-task parts round by round (IndividualTrain keeps one model per
    task) is counted at its final size. A finished run's count is in metrics.json too.
    """
    cls = get_method(method_name)
    cfg = validate(cls.resolve_config(copy.deepcopy(cfg)))  # what run_stream would train
    cards = [entry_card(e) for e in resolve_entries(stream)]

    def no_data(j: int):
        raise RuntimeError(f"learnable_params counts {method_name!r} without data, but its before_round "
                           f"read task {j} ({cards[j].name}); read the count from a run's metrics.json instead")

    with tempfile.TemporaryDirectory(prefix="c2gr-params-") as work:
        m = cls(method_context(cfg, cards, work_dir=work))
        access = TaskAccess(cards, no_data, privileged=m.reads_past_data)
        for t in range(len(cards)):
            access.begin_round(t)
            m.before_round(t, access)
        return int(m.n_learnable_params())
