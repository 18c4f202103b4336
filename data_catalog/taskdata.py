"""In-memory task data in the workbench's representation (docs/design.md).

Images: float32 (N, 3, H, W) in [-1, 1], grey modalities replicated to 3 channels.
Masks:  uint8 (N, H, W) label maps, 0 = background, 1..C = the card's classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .schema import DataError, TaskCard

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    images: np.ndarray  # (N, 3, H, W) float32 in [-1, 1]
    masks: np.ndarray   # (N, H, W) uint8

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "Split":
        return Split(self.images[idx], self.masks[idx])

    def tensors(self, idx=slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float32 (B, 3, H, W), masks long (B, H, W)) of the pairs `idx`, as a batch."""
        return torch.from_numpy(np.asarray(self.images[idx])), torch.from_numpy(np.asarray(self.masks[idx])).long()


@dataclass
class TaskData:
    card: TaskCard
    train: Split
    val: Split
    test: Split
    origin: str = ""  # where the data came from: "synthetic(seed=0)", a folder, a prepared dir

    @property
    def name(self) -> str:
        return self.card.name

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return getattr(self, name)


def validate_split(images: np.ndarray, masks: np.ndarray, n_classes: int, origin: str) -> None:
    """Raise DataError naming `origin` if the pair is not valid workbench data."""
    if len(images) == 0:
        raise DataError(f"{origin}: empty split (no image-mask pairs)")
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"{origin}: images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if masks.ndim != 3 or masks.shape[0] != images.shape[0] or masks.shape[1:] != images.shape[2:]:
        raise DataError(f"{origin}: masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
    if not np.isfinite(images).all():
        raise DataError(f"{origin}: images contain NaN or Inf")
    top = int(masks.max())
    if top > n_classes or int(masks.min()) < 0:
        raise DataError(f"{origin}: mask label {top} outside the card's classes 0..{n_classes}")


def to_model_image(img: np.ndarray, origin: str = "<image>") -> np.ndarray:
    """(H, W), (H, W, 1|3|4) uint8/float -> (3, H, W) float32 in [-1, 1].

    uint8 is scaled from [0, 255]; float input is min-max normalised per image (CT/MR
    intensities are already windowed by the preparer, so this only fixes the range).
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"{origin}: expected a 2D grey or RGB image, got shape {img.shape}")
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 127.5 - 1.0
    else:
        img = img.astype(np.float32)
        if not np.isfinite(img).all():
            raise DataError(f"{origin}: image contains NaN or Inf")
        lo, hi = float(img.min()), float(img.max())
        out = (img - lo) / max(hi - lo, 1e-8) * 2.0 - 1.0
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def resize_pair(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to size x size: area/bilinear for images, nearest for label maps (labels survive)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images, masks
    x = torch.from_numpy(np.array(images, dtype=np.float32, copy=True))
    mode = "area" if images.shape[-1] > size else "bilinear"
    x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    y = torch.from_numpy(np.array(masks, copy=True)).unsqueeze(1).float()  # masks may be read-only memmaps
    y = F.interpolate(y, size=(size, size), mode="nearest-exact")
    return x.clamp(-1, 1).numpy(), y.squeeze(1).to(torch.uint8).numpy()


def random_split_indices(n: int, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Seeded permutation cut into train/val/test; every part gets at least one item when n >= 3."""
    if n < 3:
        raise DataError(f"need at least 3 image-mask pairs to split into train/val/test, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"{n} pairs are too few for a {fractions} split")
    return (np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_val]), np.sort(perm[n_train + n_val:]))


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Official-split rule (sec. 4.1.1): sample `fraction` of train for validation."""
    if n < 2:
        raise DataError(f"need at least 2 training pairs to hold out validation, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
