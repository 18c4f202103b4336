"""Plots of tasks, replay and results. Figures are built on matplotlib's object API (no pyplot
state), so they work under the Agg backend, in notebooks and in batch jobs alike."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from matplotlib.figure import Figure

# Class colours of label maps: label 1, 2, 3, ... (0, background, is left uncoloured).
CLASS_COLOURS = np.array([
    (0.90, 0.10, 0.10), (0.10, 0.85, 0.20), (0.15, 0.45, 1.00), (1.00, 0.85, 0.00),
    (0.90, 0.20, 0.90), (0.00, 0.90, 0.90), (1.00, 0.50, 0.00), (0.60, 0.40, 0.20),
], dtype=np.float32)


def _as_rgb01(image: np.ndarray) -> np.ndarray:
    """(3, H, W) / (H, W, 3) / (H, W) image, float in [-1, 1] or uint8 -> (H, W, 3) float in [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"overlay: expected a (3, H, W), (H, W, 3) or (H, W) image, got shape {np.shape(image)}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return np.clip((img.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with each foreground class of `mask` tinted in its class colour: (H, W, 3) uint8.

    `image` is in the workbench representation ((3, H, W) float in [-1, 1]) or any of
    (H, W, 3) / (H, W), float in [-1, 1] or uint8; `mask` is an (H, W) label map.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb01(image)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"overlay: mask shape {mask.shape} does not match image {rgb.shape[:2]}")
    labels = mask.astype(np.int64)
    if labels.min(initial=0) < 0:
        raise ValueError("overlay: mask labels must be >= 0")
    colours = np.concatenate([np.zeros((1, 3), np.float32), CLASS_COLOURS])
    tint = colours[(labels - 1) % len(CLASS_COLOURS) + 1]  # classes beyond the palette reuse it
    a = np.where(labels > 0, alpha, 0.0)[..., None]
    return np.round((rgb * (1 - a) + tint * a) * 255).astype(np.uint8)


def _task_items(task) -> tuple[str, np.ndarray, np.ndarray]:
    if hasattr(task, "card") and hasattr(task, "train"):  # a TaskData
        return task.card.title, task.train.images, task.train.masks
    if isinstance(task, (tuple, list)) and len(task) == 3:
        return str(task[0]), np.asarray(task[1]), np.asarray(task[2])
    raise TypeError(f"contact_sheet: each task must be a TaskData or (name, images, masks), got {type(task).__name__}")


def contact_sheet(tasks: Iterable, n_per_task: int = 1, ax_size: float = 2.0, alpha: float = 0.45,
                  ncols: int | None = None) -> Figure:
    """One panel per task: its first `n_per_task` training images side by side with the masks
    overlaid in class colours, titled with the task's display name."""
    items = [_task_items(t) for t in tasks]
    if not items:
        raise ValueError("contact_sheet: no tasks given")
    if n_per_task < 1:
        raise ValueError(f"contact_sheet: n_per_task must be >= 1, got {n_per_task}")
    ncols = ncols or max(1, math.ceil(math.sqrt(len(items) / n_per_task)))
    nrows = math.ceil(len(items) / ncols)
    fig = Figure(figsize=(ncols * ax_size * n_per_task, nrows * (ax_size + 0.3)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, images, masks) in zip(axes, items):
        k = min(n_per_task, len(images))
        panels = [overlay(images[i], masks[i], alpha) for i in range(k)]
        ax.imshow(np.concatenate(panels, axis=1), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    for ax in axes[len(items):]:
        fig.delaxes(ax)
    return fig

