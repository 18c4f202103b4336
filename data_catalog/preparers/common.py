"""Shared machinery of the preparers: cases, the split rule, image I/O, label checks.

A preparer only *lists* its cases (cheap: paths and their official split); each Case knows
how to read itself into uint8 256 x 256 pairs. `write_cases` applies the card's split rule
by case (never by slice) and streams the cases through a PreparedWriter, so a 3D dataset
is never held in memory at once and any error leaves no output behind.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..prepared import PREPARED_SIZE, PreparedWriter
from ..schema import DataError, TaskCard
from ..taskdata import SPLITS, holdout_indices, random_split_indices

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")

# (images uint8 (n, 256, 256, 3), masks uint8 (n, 256, 256), one source id per pair)
Pairs = tuple[np.ndarray, np.ndarray, list[str]]


@dataclass(frozen=True)
class Case:
    """One patient / volume / image: the unit a split never cuts through."""
    id: str
    tag: str | None                 # official split: "train", "val", "test", or None (no official split)
    read: Callable[[], Pairs]


def assign_splits(cases: Sequence[Case], card: TaskCard, seed: int, origin: str) -> dict[str, list[Case]]:
    """The card's split rule (sec. 4.1.1), applied to whole cases.

    official: keep the official test cases; use official validation cases if the dataset
      has them, else hold out `val_fraction` (default 15 %) of the official training cases.
    random: ignore official tags; seeded 60/15/25 (the card's fractions) over all cases.
    """
    cases = sorted(cases, key=lambda c: c.id)
    rule = card.split.get("rule", "random")
    if rule == "random":
        fr = tuple(float(card.split[k]) for k in ("train", "val", "test"))
        idx = random_split_indices(len(cases), fr, seed)
        return {s: [cases[i] for i in ix] for s, ix in zip(SPLITS, idx)}
    by_tag = {t: [c for c in cases if c.tag == t] for t in SPLITS}
    if not by_tag["test"]:
        raise DataError(f"{origin}: card '{card.name}' asks for the official split, but no labelled official "
                        f"test cases were found; use split rule 'random' for this source")
    if not by_tag["train"]:
        raise DataError(f"{origin}: card '{card.name}' asks for the official split, but no labelled official "
                        f"training cases were found")
    if by_tag["val"]:
        return by_tag
    tr, va = holdout_indices(len(by_tag["train"]), float(card.split.get("val_fraction", 0.15)), seed)
    return {"train": [by_tag["train"][i] for i in tr], "val": [by_tag["train"][i] for i in va],
            "test": by_tag["test"]}


def write_cases(cases: Sequence[Case], card: TaskCard, dst: Path, *, seed: int, overwrite: bool,
                origin: str, meta: Mapping, progress: bool = True) -> Path:
    """Split `cases` by the card's rule and write them as a prepared directory at `dst`."""
    if not cases:
        raise DataError(f"{origin}: no cases found")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise DataError(f"{origin}: duplicate case ids {dup}")
    splits = assign_splits(cases, card, seed, origin)
    meta = {**meta, "seed": seed, "split_rule": card.split.get("rule"),
            "n_cases": {s: len(splits[s]) for s in SPLITS}}
    with PreparedWriter(dst, card, overwrite=overwrite, meta=meta) as w:
        for split in SPLITS:
            for case in tqdm(splits[split], desc=f"{card.name}:{split}", unit="case", disable=not progress,
                             leave=False):
                images, masks, pair_ids = case.read()
                w.add(split, images, masks, pair_ids, case=case.id)
    return Path(dst)


# ---------------------------------------------------------------- layout helpers

def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: missing expected folder ({what})")
    return path


def first_dir(candidates: Sequence[Path], what: str) -> Path:
    """The first existing folder among the layouts a dataset is distributed in."""
    for c in candidates:
        if c.is_dir():
            return c
    raise DataError(f"{candidates[0]}: missing expected folder ({what}); also looked for "
                    f"{[str(c) for c in candidates[1:]]}")


def image_files(folder: Path) -> list[Path]:
    """Image files in a folder (any case of the usual suffixes), skipping macOS '._' droppings."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._"))


# ---------------------------------------------------------------- 2D image I/O

def _open(path: Path, draft: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Decode an image file now (so a truncated file fails here, naming itself); also its full (H, W)."""
    try:
        im = Image.open(path)
        full = (im.size[1], im.size[0])
        if draft and im.format == "JPEG":
            # Decode large photographs (ISIC: up to 6000 px) at a reduced DCT scale that still
            # exceeds twice the prepared size; the final resize is the same, 10-50x faster.
            im.draft("RGB", (2 * PREPARED_SIZE, 2 * PREPARED_SIZE))
        im.load()
        return im, full
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except Exception as e:  # PIL raises many types for corrupt files (OSError, SyntaxError, ValueError)
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def read_rgb(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Any 8/16-bit/float image -> (uint8 (h, w, 3), original (H, W)); grey is replicated.

    h, w may be smaller than H, W for JPEGs (decoded at reduced scale, see _open).
    """
    im, full = _open(path, draft=True)
    if im.mode in ("RGB", "L"):
        arr = np.asarray(im)
    elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im).astype(np.float64)
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: image contains NaN or Inf")
        lo, hi = arr.min(), arr.max()
        arr = np.round((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    else:
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.uint8), full


def read_grey_labels(path: Path, palette_index: bool = False) -> np.ndarray:
    """A mask file -> 2D integer array of its grey levels.

    Palette images are converted to grey (their colours are the levels) unless
    `palette_index`, for instance maps that store ids as palette indices (GlaS).
    """
    im, _ = _open(path)
    if im.mode == "P" and palette_index:
        return np.asarray(im)
    if im.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(im)
    if im.mode == "F":
        arr = np.asarray(im)
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{path}: mask has non-integer, NaN or Inf values")
        return arr.astype(np.int64)
    return np.asarray(im.convert("L"))


def check_same_size(img_hw: tuple[int, int], img_path: Path, mask: np.ndarray, mask_path: Path) -> None:
    if tuple(img_hw) != tuple(mask.shape[:2]):
        raise DataError(f"{mask_path}: mask size {tuple(mask.shape[:2])} does not match image {img_path.name} "
                        f"size {tuple(img_hw)}")


def map_levels(values: np.ndarray, mapping: Mapping[int, int], path: Path) -> np.ndarray:
    """Map documented source levels to class indices; any other level is an error naming the file."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise DataError(f"{path}: labels contain NaN or Inf")
        if not np.array_equal(values, np.round(values)):
            raise DataError(f"{path}: labels are not integers")
    lo, hi = int(values.min()), int(values.max())
    allowed = sorted(mapping)
    if lo < 0 or hi > 255:
        raise DataError(f"{path}: label value(s) outside the documented set {allowed} (range {lo}..{hi})")
    v = values.astype(np.uint8, copy=False)
    present = np.flatnonzero(np.bincount(v.ravel(), minlength=256))
    bad = [int(x) for x in present if int(x) not in mapping]
    if bad:
        raise DataError(f"{path}: label value(s) {bad[:8]} not in the documented set {allowed}")
    lut = np.zeros(256, np.uint8)
    for k, c in mapping.items():
        lut[k] = c
    return lut[v]


def binary_mask(values: np.ndarray, path: Path, lossy: bool = False) -> np.ndarray:
    """A 0/255 (or 0/1) foreground mask -> 0/1.

    Strict by default: only {0, 255} or {0, 1} are accepted. `lossy` datasets (masks saved
    through JPEG or resampling, e.g. the PraNet polyp sets) are thresholded at half range
    instead, as their official evaluation code does.
    """
    values = np.asarray(values)
    top = int(values.max()) if values.size else 0
    if lossy:
        return (values > (0 if top <= 1 else 127)).astype(np.uint8)
    present = set(np.unique(values).tolist())
    if present <= {0, 255}:
        return (values == 255).astype(np.uint8)
    if present <= {0, 1}:
        return values.astype(np.uint8)
    raise DataError(f"{path}: binary mask has value(s) {sorted(present - {0, 1, 255})[:8]}; "
                    f"documented set is {{0, 255}} (or {{0, 1}})")


# ---------------------------------------------------------------- resizing

def resize_image_u8(img: np.ndarray, size: int = PREPARED_SIZE) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> (size, size, 3), bilinear."""
    out = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


def resize_mask_u8(mask: np.ndarray, size: int = PREPARED_SIZE) -> np.ndarray:
    """uint8 label map -> (size, size), nearest (labels survive)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).resize((size, size), Image.NEAREST))


def one_pair(img: np.ndarray, mask: np.ndarray, pair_id: str) -> Pairs:
    return resize_image_u8(img)[None], resize_mask_u8(mask)[None], [pair_id]
