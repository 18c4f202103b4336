"""Procedural synthetic twins of the catalog tasks: the workbench's embedded default data.

Every catalog task has a recipe (the modality's appearance and the task's class layout) and a
variant (site, vendor, MR sequence, organ). Sample i of a task is a pure function of
(task name, seed, i) and is drawn in continuous coordinates, so it is the same scene at any
resolution and in any batch; train, val and test draw from disjoint index ranges.

    images, masks = render_pairs("fundus-a", n=16, image_size=64, seed=0)
    task = synthetic_task(get_card("fundus-a"), image_size=32, n_train=48, n_val=8, n_test=16)
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..schema import CardError, TaskCard
from ..taskdata import Split, TaskData, validate_split
from . import optical, radiological
from .primitives import Draws, to_model_range


@dataclass(frozen=True)
class Recipe:
    render: Callable  # (Draws, variant) -> (image in [0, 1], mask uint8)
    n_classes: int
    variants: tuple  # allowed variants; (None,) for a recipe without any


RECIPES = {
    "fundus": Recipe(optical.fundus, 2, tuple(k for k in optical.FUNDUS_SITES if k != "Canon CR5")),
    "fundus-vessels": Recipe(optical.fundus_vessels, 1, ("Canon CR5",)),
    "cardiac-mr": Recipe(radiological.cardiac_mr, 3, tuple(radiological.MR_VENDORS)),
    "brain-mr": Recipe(radiological.brain_mr, 1, tuple(radiological.BRAIN_SEQUENCES)),
    "abdominal-ct": Recipe(radiological.abdominal_ct, 2, tuple(radiological.CT_ORGANS)),
    "histology-glands": Recipe(optical.histology_glands, 1, (None,)),
    "ultrasound-lesion": Recipe(radiological.ultrasound_lesion, 1, ("breast", "thyroid")),
    "xray-lung": Recipe(radiological.xray_lung, 1, (None,)),
    "endoscopy-polyp": Recipe(optical.endoscopy_polyp, 1, (None,)),
    "dermoscopy-lesion": Recipe(optical.dermoscopy_lesion, 1, (None,)),
    "oct-layers": Recipe(radiological.oct_layers, 3, (None,)),
    "microscopy-cells": Recipe(optical.microscopy_cells, 2, (None,)),
    "prostate-mr": Recipe(radiological.prostate_mr, 1, ("T2",)),
}

# The twin of each catalog task: (recipe, variant), as in the cards' `synthetic` field.
TWINS = {
    "fundus-a": ("fundus", "Aravind Eye Hospital"),
    "fundus-b": ("fundus", "Nidek AFC-210"),
    "fundus-c": ("fundus", "Canon CR-2"),
    "fundus-d": ("fundus", "Zeiss Visucam 500"),
    "mms-a": ("cardiac-mr", "Siemens"),
    "mms-b": ("cardiac-mr", "Philips"),
    "mms-c": ("cardiac-mr", "GE"),
    "mms-d": ("cardiac-mr", "Canon"),
    "brats-t1": ("brain-mr", "T1"),
    "brats-t1ce": ("brain-mr", "T1ce"),
    "brats-t2": ("brain-mr", "T2"),
    "brats-flair": ("brain-mr", "FLAIR"),
    "pancreas": ("abdominal-ct", "pancreas"),
    "kits": ("abdominal-ct", "kits"),
    "lits": ("abdominal-ct", "lits"),
    "glas": ("histology-glands", None),
    "busi": ("ultrasound-lesion", "breast"),
    "qatav2": ("xray-lung", None),
    "polyp": ("endoscopy-polyp", None),
    "isic18": ("dermoscopy-lesion", None),
    "drive": ("fundus-vessels", "Canon CR5"),
    "goals": ("oct-layers", None),
    "segpc": ("microscopy-cells", None),
    "ddti": ("ultrasound-lesion", "thyroid"),
    "promise12": ("prostate-mr", "T2"),
}

# Split s of a task draws indices SPLIT_OFFSET * s + 0, 1, ...: disjoint, and the test set does
# not change when n_train does.
SPLIT_OFFSET = 10_000_000
_CHUNK = 16  # samples rendered together: enough to amortise numpy calls, few enough to stay in cache


def _check_recipe(recipe: str, variant, origin: str) -> Recipe:
    if recipe not in RECIPES:
        raise ValueError(f"{origin}: unknown synthetic recipe {recipe!r}; known: {sorted(RECIPES)}")
    r = RECIPES[recipe]
    if variant not in r.variants:
        raise ValueError(f"{origin}: synthetic recipe {recipe!r} has no variant {variant!r}; "
                         f"allowed: {list(r.variants)}")
    return r


def task_key(task_name: str) -> int:
    """Stable integer of a task name, part of every sample's seed (crc32: same on every platform)."""
    return zlib.crc32(task_name.encode("utf-8"))


def render_indices(recipe: str, variant, key: int, seed: int, indices, image_size: int):
    """Render samples `indices` of (recipe, variant) under generator key `key` and `seed`.

    Returns images float32 (n, 3, H, W) in [-1, 1] and masks uint8 (n, H, W).
    """
    r = _check_recipe(recipe, variant, "render_indices")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    indices = np.asarray(indices, dtype=np.int64).ravel()
    if indices.size and indices.min() < 0:
        raise ValueError("sample indices must be >= 0")
    images = np.empty((len(indices), 3, image_size, image_size), np.float32)
    masks = np.empty((len(indices), image_size, image_size), np.uint8)
    for lo in range(0, len(indices), _CHUNK):
        d = Draws(seed, key, indices[lo:lo + _CHUNK], image_size)
        img, mask = r.render(d, variant)
        images[lo:lo + _CHUNK] = to_model_range(img)
        masks[lo:lo + _CHUNK] = mask
    return images, masks


def render_pairs(task_name: str, n: int, image_size: int, seed: int = 0, start: int = 0):
    """Samples start .. start + n - 1 of a catalog task's twin: (images (n, 3, H, W) float32 in
    [-1, 1], masks (n, H, W) uint8 with labels 0..C)."""
    if task_name not in TWINS:
        raise ValueError(f"no synthetic twin for task {task_name!r}; known: {sorted(TWINS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    recipe, variant = TWINS[task_name]
    return render_indices(recipe, variant, task_key(task_name), seed, np.arange(start, start + n), image_size)


def twin_of(card: TaskCard) -> tuple[str, object]:
    """(recipe, variant) for a card: its `synthetic: {recipe, variant}` field, else the catalog twin."""
    origin = f"card {card.name!r}"
    if card.synthetic is not None:
        if "recipe" not in card.synthetic:
            raise CardError(f"{origin}: field 'synthetic' needs a 'recipe' (one of {sorted(RECIPES)})")
        recipe, variant = card.synthetic["recipe"], card.synthetic.get("variant")
    elif card.name in TWINS:
        recipe, variant = TWINS[card.name]
    else:
        raise CardError(f"{origin}: no synthetic twin; add 'synthetic: {{recipe: ..., variant: ...}}' "
                        f"with a recipe from {sorted(RECIPES)}")
    try:
        r = _check_recipe(recipe, variant, origin)
    except ValueError as e:
        raise CardError(str(e)) from None
    if r.n_classes != card.n_classes:
        raise CardError(f"{origin}: lists {card.n_classes} classes {list(card.classes)} but synthetic recipe "
                        f"{recipe!r} draws {r.n_classes}")
    return recipe, variant


def synthetic_task(card: TaskCard, image_size: int, n_train: int, n_val: int, n_test: int,
                   seed: int = 0) -> TaskData:
    """The procedural twin of `card` as TaskData; train / val / test never share a sample."""
    recipe, variant = twin_of(card)
    counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for name, value in counts.items():
        if not (isinstance(value, (int, np.integer)) and 1 <= value < SPLIT_OFFSET):
            raise ValueError(f"{name} must be an integer in [1, {SPLIT_OFFSET}), got {value!r}")
    splits = []
    for s, count in enumerate(counts.values()):
        images, masks = render_indices(recipe, variant, task_key(card.name), seed,
                                       SPLIT_OFFSET * s + np.arange(count), image_size)
        validate_split(images, masks, card.n_classes, f"synthetic:{card.name}")
        splits.append(Split(images, masks))
    return TaskData(card, *splits, origin=f"synthetic(seed={seed})")


__all__ = ["RECIPES", "TWINS", "SPLIT_OFFSET", "Recipe", "render_indices", "render_pairs", "synthetic_task",
           "task_key", "twin_of"]
