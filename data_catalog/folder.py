"""A user's own task as a folder (docs/design.md):

    my-task/
      card.yaml              name, modality, anatomy, objective, classes (+ optional site, split)
      train/images/*.png     train/masks/*.png   (same stems; mask pixel value = class index)
      val/...  test/...      optional

Without split folders (only train/, or images/ and masks/ directly in the folder) the pairs
are split by seed with the card's random split (60/15/25 by default). A split folder that is
missing is carved out of train: val by the official rule (15 %, or the card's val_fraction),
test with the test share of the card's random split (0.25 / 0.85 of train by default).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .schema import CardError, DataError, TaskCard, load_card
from .taskdata import (Split, TaskData, holdout_indices, random_split_indices, resize_pair, to_model_image,
                       validate_split)

IMAGE_SUFFIX = ".png"
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")  # single-channel: pixel value = class index


def load_task_folder(path: str | Path, image_size: int, seed: int) -> TaskData:
    """Read, check, resize and split a task folder; every error names the offending file."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: task folder does not exist or is not a folder")
    card_file = root / "card.yaml"
    if not card_file.is_file():
        raise CardError(f"{card_file}: missing; a task folder needs card.yaml "
                        "(name, modality, anatomy, objective, classes)")
    card = load_card(card_file)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")

    present = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if not present:
        if (root / "images").is_dir() or (root / "masks").is_dir():
            present = {"train": root}
        else:
            raise DataError(f"{root}: no train/ folder (nor images/ and masks/ directly in the folder)")
    if "train" not in present:
        raise DataError(f"{root}: has {sorted(present)} but no train/ folder; train/ is required")

    splits = {s: _read_split(d, card, image_size) for s, d in present.items()}
    fr = _fractions(card)
    train = splits["train"]
    train_dir = present["train"]
    try:
        if len(splits) == 1:
            tr, va, te = random_split_indices(len(train), fr, seed)
            splits = {"train": train.subset(tr), "val": train.subset(va), "test": train.subset(te)}
        else:
            if "test" not in splits:
                keep, held = holdout_indices(len(train), fr[2] / (fr[0] + fr[2]), seed)
                splits["test"], train = train.subset(held), train.subset(keep)
            if "val" not in splits:
                keep, held = holdout_indices(len(train), _val_fraction(card), seed)
                splits["val"], train = train.subset(held), train.subset(keep)
            splits["train"] = train
    except DataError as e:
        raise DataError(f"{train_dir}: {e}") from e
    return TaskData(card=card, train=splits["train"], val=splits["val"], test=splits["test"],
                    origin=f"folder:{root}")


def _fractions(card: TaskCard) -> tuple[float, float, float]:
    sp = card.split
    if sp.get("rule") == "random":
        return float(sp["train"]), float(sp["val"]), float(sp["test"])
    return 0.60, 0.15, 0.25


def _val_fraction(card: TaskCard) -> float:
    # Given test/ but no val/ is the paper's official-split case (sec. 4.1.1): 15 % of train.
    return float(card.split.get("val_fraction", 0.15))


def _listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: missing folder (each split needs images/ and masks/)")
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue  # .DS_Store, editor swap files
        if not f.is_file() or f.suffix.lower() != IMAGE_SUFFIX:
            raise DataError(f"{f}: not a PNG file; {folder} may hold only *.png")
        if f.stem in found:
            raise DataError(f"{f}: duplicate stem {f.stem!r} (also {found[f.stem].name})")
        found[f.stem] = f
    return found


def _read_split(split_dir: Path, card: TaskCard, size: int) -> Split:
    if not (split_dir / "images").exists() and not (split_dir / "masks").exists():
        raise DataError(f"{split_dir}: empty split folder (needs images/*.png and masks/*.png)")
    images, masks = _listing(split_dir / "images"), _listing(split_dir / "masks")
    if not images and not masks:
        raise DataError(f"{split_dir}: empty split (no PNG files in images/ and masks/)")
    for stem in sorted(set(images) - set(masks)):
        raise DataError(f"{images[stem]}: image has no mask {split_dir / 'masks' / (stem + IMAGE_SUFFIX)}")
    for stem in sorted(set(masks) - set(images)):
        raise DataError(f"{masks[stem]}: mask has no image {split_dir / 'images' / (stem + IMAGE_SUFFIX)}")
    xs, ys = [], []
    noted: dict[str, list[Path]] = {}
    for stem in sorted(images):
        img, msk = _read_image(images[stem], noted), _read_mask(masks[stem], card)
        if img.shape[0] != img.shape[1]:
            noted.setdefault("square", []).append(images[stem])
        if img.shape[:2] != msk.shape:
            raise DataError(f"{masks[stem]}: mask size {msk.shape[1]}x{msk.shape[0]} (WxH) differs from image "
                            f"{images[stem]} size {img.shape[1]}x{img.shape[0]}")
        x = to_model_image(img, origin=str(images[stem]))
        if not np.isfinite(x).all():
            raise DataError(f"{images[stem]}: image contains NaN or Inf after conversion")
        x, y = resize_pair(x[None], msk[None], size)
        xs.append(x[0])
        ys.append(y[0])
    _warn(noted, size)
    images_arr, masks_arr = np.stack(xs).astype(np.float32), np.stack(ys).astype(np.uint8)
    validate_split(images_arr, masks_arr, card.n_classes, origin=str(split_dir))
    return Split(images_arr, masks_arr)


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt PNG ({e})") from e
    return im


class DataWarning(UserWarning):
    """An input the loader accepts but changes (alpha, bit depth, aspect ratio): said, never silent."""


# What the loader does to such images, said once per split folder with the first file and a count.
_NOTES = {
    "alpha": "has transparent pixels; the alpha channel is dropped (the colour values are used as stored)",
    "depth": "is a 16/32-bit image; it is scaled from its own min..max to the model's range, per image "
             "(intensities are not comparable across images: window them when preparing the data)",
    "square": "is not square; it is resized to {size}x{size} without keeping its aspect ratio "
              "(crop or pad the images to squares to keep it)",
}


def _warn(noted: dict[str, list[Path]], size: int) -> None:
    for kind, paths in noted.items():
        more = f" (and {len(paths) - 1} more in {paths[0].parent})" if len(paths) > 1 else ""
        warnings.warn(f"{paths[0]}{more} {_NOTES[kind].format(size=size)}", DataWarning, stacklevel=4)


def _read_image(path: Path, noted: dict[str, list[Path]] | None = None) -> np.ndarray:
    noted = {} if noted is None else noted
    im = _open(path)
    if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            noted.setdefault("alpha", []).append(path)
    if im.mode in ("P", "1", "CMYK", "YCbCr", "PA", "RGBA"):
        im = im.convert("RGB")
    elif im.mode == "LA":
        im = im.convert("L")
    arr = np.asarray(im)
    if arr.dtype != np.uint8:  # 16-bit / 32-bit grey: per-image min-max in to_model_image
        noted.setdefault("depth", []).append(path)
        arr = arr.astype(np.float32)
    return arr


def _read_mask(path: Path, card: TaskCard) -> np.ndarray:
    im = _open(path)
    if im.mode not in MASK_MODES:
        raise DataError(f"{path}: mask must be single-channel (grey or palette) with pixel value = class index, "
                        f"got mode {im.mode}")
    arr = np.asarray(im).astype(np.int64)  # palette masks give their indices, which are the labels
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > card.n_classes:
        bad = sorted(set(np.unique(arr).tolist()) - set(range(card.n_classes + 1)))
        hint = " (a 0/255 mask? write class indices, e.g. mask // 255)" if 255 in bad else ""
        raise DataError(f"{path}: mask values {bad[:8]} outside the card's labels 0..{card.n_classes} "
                        f"({', '.join(card.classes)}){hint}")
    return arr.astype(np.uint8)
