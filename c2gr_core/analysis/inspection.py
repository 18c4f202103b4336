"""Looking inside trained methods and runs (sec. 4.4.2-4.4.3): fresh pairs from a generator, their
quality, the replayed pairs a run kept on disk, task-prompt similarities and segmentor features
for t-SNE. The notebooks and the replay inspector (`widgets`) call these; nothing here trains.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..experiment.runs import task_index
from ..methods.base import Method
from ..prompting.prompts import prompt_pool
from ..prompting.rups import cosine_matrix
from .quality import (CORRESPONDENCE_LABEL, FEATURE_FID_LABEL, SegmentorFeatures, correspondence_dsc, feature_fid,
                      segmentor_features)


def _task_index(method: Method, task: int | str) -> int:
    return task_index([c.name for c in method.ctx.cards], task, f"method {method.name!r}")


# ------------------------------------------------------------------------ generated pairs
@torch.no_grad()
def sample_task_pairs(method: Method, task: int | str, n: int, seed: int | torch.Generator = 0,
                      steps: int | None = None, sampler: str | None = None,
                      progress=False) -> tuple[np.ndarray, np.ndarray]:
    """n image-mask pairs for `task` from a C2GR-family method's generator as it stands now (the
    final model after `load_method`), prompted exactly as its replay is: the generator prompt of
    the tasks seen so far, sampled by the weights that sample its replay (the EMA when there is one),
    labels a task lacks set to background.

    `seed` is an int or a torch.Generator to continue (several calls then draw what one call
    would); `sampler` ("ddpm" / "ddim") and `steps` default to the run's config; `progress` as in
    `diffusion.reverse_chain` (True, a description, or an open bar).
    Returns images (n, 3, H, W) float32 in [-1, 1] and masks (n, H, W) uint8.
    """
    j = _task_index(method, task)
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    images, labels = method.sample_pairs(j, int(n), generator, steps=steps, sampler=sampler, progress=progress)
    return images.cpu().numpy().astype(np.float32), labels.cpu().numpy().astype(np.uint8)


def sample_pairs_per_task(method: Method, n: int, seed: int = 0, steps: int | None = None) -> dict:
    """{task name: (images, masks)} for every task of the method's stream (Fig. 6a)."""
    return {c.name: sample_task_pairs(method, j, n, seed=seed + j, steps=steps)
            for j, c in enumerate(method.ctx.cards)}


def pairs_quality(pairs: dict, reference: Method, real: dict) -> list[dict]:
    """Fig. 6b for a set of generated pairs, one row per task:

    pairs: {task name: (images, masks)}; real: {task name: real images (N, 3, H, W)} (the test split);
    reference: a method trained on every task (the paper uses JointTrain), matched by task name.
    Row keys: task, n_pairs, CORRESPONDENCE_LABEL (mean over the task's classes, in [0, 1]) and
    FEATURE_FID_LABEL (>= 0) against `real`, computed on the reference segmentor's features.
    """
    ref_names = [c.name for c in reference.ctx.cards]
    rows = []
    for name, (images, masks) in pairs.items():
        if name not in ref_names:
            raise ValueError(f"reference {reference.name!r} never trained on task {name!r}; its tasks: {ref_names}")
        if name not in real:
            raise ValueError(f"pairs_quality: no real images given for task {name!r}")
        k = ref_names.index(name)
        corr = correspondence_dsc(images, masks, reference, k, reference.ctx.cards[k].n_classes)
        rows.append({"task": name, "n_pairs": len(images), CORRESPONDENCE_LABEL: corr["mean"],
                     FEATURE_FID_LABEL: feature_fid(real[name], images, SegmentorFeatures(reference, k))})
    return rows


def noise_pairs(real_masks: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The floor a generator must beat: n pairs of uniform-noise images in [-1, 1] with masks drawn
    pixel by pixel from the real masks' label fractions (what a generator that learnt only the
    label histogram would give). Score them with `pairs_quality` like generated pairs."""
    real_masks = np.asarray(real_masks)
    g = np.random.default_rng(seed)
    frac = np.bincount(real_masks.ravel(), minlength=int(real_masks.max()) + 1) / real_masks.size
    size = real_masks.shape[-2:]
    images = g.uniform(-1, 1, (int(n), 3, *size)).astype(np.float32)
    return images, g.choice(len(frac), (int(n), *size), p=frac).astype(np.uint8)


# ------------------------------------------------------------------ replay kept by a run
def replay_samples(run_dir: str | os.PathLike) -> dict[int, dict[int, Path]]:
    """{round: {task index: samples/round_XX/task_YY.npz}} of the replayed pairs a run kept
    (stream.N_INSPECT per past task and round; rounds without replay are absent)."""
    root = Path(run_dir) / "samples"
    out: dict[int, dict[int, Path]] = {}
    if not root.is_dir():
        return out
    for d in sorted(root.glob("round_[0-9]*")):
        files = {int(f.stem.split("_")[1]): f for f in sorted(d.glob("task_[0-9]*.npz"))}
        if files:
            out[int(d.name.split("_")[1])] = files
    return out


def load_pairs(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, H, W) float32, masks (N, H, W) uint8) of one samples file."""
    path = Path(path)
    try:
        with np.load(path) as z:
            images, masks = z["images"].astype(np.float32), z["masks"].astype(np.uint8)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a replay samples file with 'images' and 'masks' ({e})") from e
    if images.ndim != 4 or masks.ndim != 3 or len(images) != len(masks):
        raise ValueError(f"{path}: images {images.shape} and masks {masks.shape} are not N pairs")
    return images, masks


# ------------------------------------------------------------------------ prompts (Fig. 7)
@torch.no_grad()
def prompt_similarity(method: Method, round: int | None = None) -> dict:
    """Cosine similarities of the task prompts of a trained method over the tasks seen by `round`
    (default: all it has seen).

    Keys: names; "text" - cosine of the frozen text embeddings e (what the w/o-RUPS ablation
    projects, Fig. 7 left); "segmentor" / "generator" - cosine of the prompts zeta each network
    receives (identical under RUPS); and for a RUPS prompt graph "eta" (eq. 4),
    "subgraph_weights" {subset: softmax weight of eq. 5}, "attention" {subset: a^S of eq. 4} and
    "component_cosine" {subset: s^S of eq. 4}, subsets keyed "I", "A", "SO", "I+A", "I+SO", "A+SO".
    """
    emb = method.ctx.emb
    t = method.last_round() if round is None else int(round)
    if not 0 <= t < len(method.ctx.cards):
        raise ValueError(f"prompt_similarity: round {round} outside 0..{len(method.ctx.cards) - 1}")
    names = list(emb.names[: t + 1])
    out = {"names": names, "text": cosine_matrix(emb.e[: t + 1].float()).numpy()}
    for net, z in method.task_prompts(t).items():
        out[net] = cosine_matrix(z.cpu()).numpy()
    graph = method.prompt_graph()
    if graph is not None:
        dev = next(graph.parameters()).device
        e, comps = prompt_pool(emb, t)
        d = graph.diagnostics((e.to(dev), {s: c.to(dev) for s, c in comps.items()}))
        out["eta"] = d["eta"]
        out["subgraph_weights"] = {"+".join(s): w for s, w in d["subgraph_weights"].items()}
        out["attention"] = {"+".join(s): a.numpy() for s, a in d["attention"].items()}
        out["component_cosine"] = {"+".join(s): c.numpy() for s, c in d["cosine"].items()}
    return out


# ------------------------------------------------------------------- features (Fig. 8)
def task_features(method: Method, images: dict) -> tuple[np.ndarray, list[str]]:
    """Segmentor features of each task's images, prompted as that task: images {task name:
    (N, 3, H, W)} -> (features (sum N, F), labels (task name per row))."""
    feats, labels = [], []
    for name, x in images.items():
        j = _task_index(method, name)
        f = segmentor_features(method, torch.as_tensor(np.asarray(x), dtype=torch.float32), j)
        feats.append(np.asarray(f, dtype=np.float64))
        labels += [name] * len(f)
    return np.concatenate(feats), labels


def pixel_features(images: dict) -> tuple[np.ndarray, list[str]]:
    """The real data themselves as vectors (flattened pixels), labelled by task."""
    feats = [np.asarray(x, dtype=np.float64).reshape(len(x), -1) for x in images.values()]
    labels = [name for name, x in images.items() for _ in range(len(x))]
    return np.concatenate(feats), labels


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """scikit-learn t-SNE to 2-D (PCA init). Default perplexity min(30, (N - 1) / 3), since
    t-SNE needs perplexity < N and the notebooks' smoke runs have few points."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"tsne_2d: need (N >= 4, F) features, got {x.shape}")
    p = min(30.0, (len(x) - 1) / 3) if perplexity is None else float(perplexity)
    return TSNE(n_components=2, perplexity=p, init="pca", random_state=seed).fit_transform(x)
