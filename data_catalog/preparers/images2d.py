"""Preparers for the 2D datasets (image / mask folders, read with PIL).

Every image is one case (these sets have no patient ids we could group by). Images are
resized straight to 256 x 256 (bilinear; aspect ratio is not kept, as in the paper's
pipeline of resizing every image to 256^2), masks with nearest neighbour. Each collector
returns the cases of its documented official layout; the official split, when the dataset
has one, is carried by each case's tag and applied by the card's split rule.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..schema import DataError
from .common import (Case, binary_mask, check_same_size, first_dir, image_files, map_levels, one_pair,
                     read_grey_labels, read_rgb, require_dir)

LabelFn = Callable[[np.ndarray, Path], np.ndarray]


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def pair_case(case_id: str, tag: str | None, image: Path, masks: Sequence[Path], to_labels: LabelFn,
              palette_index: bool = False) -> Case:
    """A case of one image and one or more mask files, merged by taking the largest class index."""
    def read():
        img, hw = read_rgb(image)
        labels = None
        for m in masks:
            grey = read_grey_labels(m, palette_index)
            check_same_size(hw, image, grey, m)
            lab = to_labels(grey, m)
            labels = lab if labels is None else np.maximum(labels, lab)
        return one_pair(img, labels, case_id)
    return Case(case_id, tag, read)


def _strict(grey, path):
    return binary_mask(grey, path)


def _lossy(grey, path):
    return binary_mask(grey, path, lossy=True)


def _mask_for(image: Path, mask_dir: Path, name: str) -> Path:
    m = mask_dir / name
    if not m.is_file():
        raise DataError(f"{m}: missing mask for image {image}")
    return m


def _same_stem(mask_dir: Path) -> Callable[[Path], Path]:
    """Finder of the mask with an image's stem and any image suffix (DDTI mixes .PNG / .png)."""
    by_stem = {m.stem: m for m in image_files(mask_dir)}

    def find(image: Path) -> Path:
        if image.stem not in by_stem:
            raise DataError(f"{mask_dir / image.name}: missing mask for image {image}")
        return by_stem[image.stem]
    return find


# ------------------------------------------------------------------ fundus (DoFE)

def fundus_labels(grey: np.ndarray, path: Path) -> np.ndarray:
    """DoFE mask grey levels: 0 = optic cup, 128 = disc rim, 255 = background.

    The ROIs were resampled, so edges carry in-between greys; the official DoFE loader
    bins them (> 200 background, 51..200 disc, <= 50 cup) and so do we. Card classes:
    1 = optic disc (the rim outside the cup), 2 = optic cup.
    """
    g = np.asarray(grey).astype(np.int64)
    if g.min() < 0 or g.max() > 255:
        raise DataError(f"{path}: grey levels outside 0..255 ({g.min()}..{g.max()})")
    out = np.zeros(g.shape, np.uint8)
    out[g <= 200] = 1
    out[g <= 50] = 2
    return out


def collect_fundus(src: Path, site: int) -> list[Case]:
    """Multi-site fundus (DoFE release): Domain<site>/{train,test}/ROIs/{image,mask}/*.png.

    Official split: the release's train / test folders of that domain.
    """
    root = require_dir(src / f"Domain{site}", f"fundus site Domain{site}")
    cases = []
    for part in ("train", "test"):
        base = require_dir(root / part / "ROIs", f"fundus {part}/ROIs")
        img_dir, mask_dir = require_dir(base / "image", "ROIs/image"), require_dir(base / "mask", "ROIs/mask")
        for img in image_files(img_dir):
            cases.append(pair_case(_rel(img, src), part, img, [_mask_for(img, mask_dir, img.name)], fundus_labels))
    return cases


# ------------------------------------------------------------------ GlaS

def collect_glas(src: Path) -> list[Case]:
    """Warwick GlaS: train_XX.bmp + train_XX_anno.bmp, testA_XX / testB_XX likewise.

    The annotations are instance maps (0 = background, k = gland k) -> 1 = gland.
    Official split: train_* for training, testA_* and testB_* for testing. The files may sit
    in `src` or in its single release folder "Warwick QU Dataset (Released 2016_07_08)".
    """
    roots = [src] + sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else [src]
    root = next((r for r in roots if any(r.glob("*_anno.bmp"))), None)
    if root is None:
        raise DataError(f"{src}: no GlaS annotation files (train_XX_anno.bmp) found")
    cases = []
    for anno in sorted(root.glob("*_anno.bmp")):
        stem = anno.name[: -len("_anno.bmp")]
        tag = "train" if stem.startswith("train_") else "test" if stem.startswith(("testA_", "testB_")) else None
        if tag is None:
            continue
        img = root / f"{stem}.bmp"
        if not img.is_file():
            raise DataError(f"{img}: missing image for annotation {anno}")
        cases.append(pair_case(_rel(img, src), tag, img, [anno],
                               lambda g, p: (np.asarray(g) > 0).astype(np.uint8), palette_index=True))
    return cases


# ------------------------------------------------------------------ BUSI

def collect_busi(src: Path, include_normal: bool = False) -> list[Case]:
    """BUSI: Dataset_BUSI_with_GT/{benign,malignant,normal}/"name (n).png" + "name (n)_mask.png".

    Some images have extra lesions in "name (n)_mask_1.png", ...; all are OR-ed. Masks are
    0/255. The tumour task uses benign and malignant images; `include_normal` adds the
    normal ones (empty masks). No official split (random rule).
    """
    root = src / "Dataset_BUSI_with_GT" if (src / "Dataset_BUSI_with_GT").is_dir() else src
    cases = []
    for cls in ("benign", "malignant") + (("normal",) if include_normal else ()):
        d = require_dir(root / cls, f"BUSI class folder '{cls}'")
        for img in sorted(d.glob("*.png")):
            if "_mask" in img.stem:
                continue
            extra = sorted(d.glob(glob.escape(img.stem) + "_mask_*.png"))
            masks = [_mask_for(img, d, f"{img.stem}_mask.png")] + extra
            cases.append(pair_case(_rel(img, src), None, img, masks, _strict))
    return cases


# ------------------------------------------------------------------ QaTa-COV19-v2

def collect_qatav2(src: Path) -> list[Case]:
    """QaTa-COV19-v2/{Train Set,Test Set}/{Images,Ground-truths}; mask of X.png is mask_X.png (0/255).

    Official split: Train Set / Test Set.
    """
    root = src / "QaTa-COV19-v2" if (src / "QaTa-COV19-v2").is_dir() else src
    cases = []
    for part, tag in (("Train Set", "train"), ("Test Set", "test")):
        img_dir = require_dir(root / part / "Images", f"QaTa '{part}/Images'")
        gt_dir = require_dir(root / part / "Ground-truths", f"QaTa '{part}/Ground-truths'")
        for img in image_files(img_dir):
            cases.append(pair_case(_rel(img, src), tag, img, [_mask_for(img, gt_dir, f"mask_{img.name}")], _strict))
    return cases


# ------------------------------------------------------------------ Polyp (PraNet)

def collect_polyp(src: Path) -> list[Case]:
    """PraNet polyp sets: TrainDataset/{image,mask}, TestDataset/<subset>/{images,masks}.

    Official split: TrainDataset (Kvasir + CVC-ClinicDB training images) vs all TestDataset
    subsets (CVC-300, CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, Kvasir). The masks went
    through JPEG, so they are thresholded at half range (PraNet's evaluation does the same).
    """
    train = require_dir(src / "TrainDataset", "PraNet TrainDataset")
    img_dir, mask_dir = require_dir(train / "image", "TrainDataset/image"), require_dir(train / "mask", "TrainDataset/mask")
    find = _same_stem(mask_dir)
    cases = [pair_case(_rel(i, src), "train", i, [find(i)], _lossy) for i in image_files(img_dir)]
    test = require_dir(src / "TestDataset", "PraNet TestDataset")
    for sub in sorted(p for p in test.iterdir() if p.is_dir()):
        img_dir = require_dir(sub / "images", f"TestDataset/{sub.name}/images")
        mask_dir = require_dir(sub / "masks", f"TestDataset/{sub.name}/masks")
        find = _same_stem(mask_dir)
        cases += [pair_case(_rel(i, src), "test", i, [find(i)], _lossy) for i in image_files(img_dir)]
    return cases


# ------------------------------------------------------------------ ISIC 2018

ISIC_PARTS = (("Training", "train"), ("Validation", "val"), ("Test", "test"))


def collect_isic18(src: Path) -> list[Case]:
    """ISIC 2018 task 1: ISIC2018_Task1-2_<Part>_Input/*.jpg + ISIC2018_Task1_<Part>_GroundTruth/*_segmentation.png.

    Part Training is required; Validation and Test are used when their ground truth folder is
    present (official split: Test is the test set; Validation, if present, the validation set,
    else 15 % of Training). Masks are 0/255.
    """
    cases = []
    for part, tag in ISIC_PARTS:
        inp, gt = src / f"ISIC2018_Task1-2_{part}_Input", src / f"ISIC2018_Task1_{part}_GroundTruth"
        if part == "Training":
            require_dir(inp, "ISIC 2018 training images")
            require_dir(gt, "ISIC 2018 training ground truth")
        elif not (inp.is_dir() and gt.is_dir()):
            continue
        for img in image_files(inp):
            if img.suffix.lower() not in (".jpg", ".jpeg"):
                continue
            cases.append(pair_case(_rel(img, src), tag, img, [_mask_for(img, gt, f"{img.stem}_segmentation.png")],
                                   _strict))
    return cases


# ------------------------------------------------------------------ DRIVE

def collect_drive(src: Path) -> list[Case]:
    """DRIVE/{training,test}/images/NN_<part>.tif + 1st_manual/NN_manual1.gif (0/255 vessels).

    Official split: training (20) vs test (20); test is used when test/1st_manual is present
    (some copies ship without it, and then only the random rule can be used).
    """
    root = src / "DRIVE" if (src / "DRIVE").is_dir() else src
    cases = []
    parts = [("training", "train")]
    if (root / "test" / "images").is_dir() and (root / "test" / "1st_manual").is_dir():
        parts.append(("test", "test"))
    for part, tag in parts:
        img_dir = require_dir(root / part / "images", f"DRIVE {part}/images")
        man_dir = require_dir(root / part / "1st_manual", f"DRIVE {part}/1st_manual")
        for img in image_files(img_dir):
            num = img.stem.split("_")[0]
            cases.append(pair_case(_rel(img, src), tag, img, [_mask_for(img, man_dir, f"{num}_manual1.gif")], _strict))
    return cases


# ------------------------------------------------------------------ GOALS

GOALS_LEVELS = {0: 1, 80: 2, 160: 3, 255: 0}   # RNFL, GCIPL, choroid, other


def collect_goals(src: Path) -> list[Case]:
    """GOALS 2022: Train/Image/*.png + Train/Layer_Masks/*.png.

    Layer mask grey levels (challenge documentation): 0 = RNFL, 80 = GCIPL, 160 = choroid,
    255 = everything else -> classes 1, 2, 3 and background. Only the training set has
    public masks, so the card uses the random rule.
    """
    root = first_dir([src / "Train", src / "GOALS2022-Train" / "Train", src], "GOALS Train")
    img_dir = require_dir(root / "Image", "GOALS Train/Image")
    mask_dir = require_dir(root / "Layer_Masks", "GOALS Train/Layer_Masks")
    return [pair_case(_rel(i, src), "train", i, [_mask_for(i, mask_dir, i.name)],
                      lambda g, p: map_levels(g, GOALS_LEVELS, p)) for i in image_files(img_dir)]


# ------------------------------------------------------------------ SegPC-2021

SEGPC_LEVELS = {0: 0, 40: 1, 20: 2}   # cytoplasm = 1, nucleus = 2 (card order)


def collect_segpc(src: Path) -> list[Case]:
    """SegPC-2021: x/<name>.bmp images, y/<name>_<k>.bmp one mask per cell (20 = nucleus, 40 = cytoplasm).

    Cells are merged into one label map; a nucleus wins over any overlapping cytoplasm.
    Layouts: src/{train,validation}/{x,y} or src/{x,y}. The test set's masks are not public,
    so the official validation set serves as the official test set.
    """
    parts = [(src / "train", "train"), (src / "validation", "test"), (src, None)]
    found = [(p, t) for p, t in parts if (p / "x").is_dir() and (p / "y").is_dir()]
    if not found:
        raise DataError(f"{src / 'x'}: missing expected folders x/ and y/ (also looked in train/ and validation/)")
    cases = []
    for part, tag in found:
        ydir = part / "y"
        for img in image_files(part / "x"):
            masks = [m for m in sorted(ydir.glob(glob.escape(img.stem) + "_*"))
                     if m.stem[len(img.stem) + 1:].isdigit() and not m.name.startswith("._")]
            if not masks:
                raise DataError(f"{ydir / (img.stem + '_1.bmp')}: no instance masks for image {img}")
            cases.append(pair_case(_rel(img, src), tag, img, masks, lambda g, p: map_levels(g, SEGPC_LEVELS, p)))
    return cases


# ------------------------------------------------------------------ DDTI

def collect_ddti(src: Path) -> list[Case]:
    """DDTI thyroid nodules, image/mask folder release: image/*.PNG + mask/*.PNG (same stems).

    Masks were exported from outline annotations with anti-aliasing, so they are thresholded
    at half range. No official split (random rule).
    """
    img_dir, mask_dir = require_dir(src / "image", "DDTI image/"), require_dir(src / "mask", "DDTI mask/")
    find = _same_stem(mask_dir)
    return [pair_case(_rel(i, src), None, i, [find(i)], _lossy) for i in image_files(img_dir)]
