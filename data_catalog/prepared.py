"""The prepared format: one fast-loading on-disk layout for every real task.

`c2gr prepare` turns a public dataset into a directory

    card.yaml            the task card (TaskCard.to_dict)
    index.json           format tag and version, task, dataset, image size (256), seed and, per
                         split: count, shard file names, the source id of every slice/image,
                         the cases in the split and per-class pixel / image counts
    <split>_images.npy   uint8 (N, 256, 256, 3), grey modalities replicated to 3 channels
    <split>_masks.npy    uint8 (N, 256, 256) label maps, 0 = background, 1..C = card classes

for split in train, val, test. The shards are plain .npy so `np.load(mmap_mode='r')` maps
them without reading; load_prepared converts to the workbench representation chunk by
chunk, so a large split is only ever held in float at the requested (small) size.

Writing is all-or-nothing: PreparedWriter fills a temporary sibling directory and renames
it into place only when every split is complete, so a failed prepare leaves no `dst`.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import yaml

from .schema import CardError, DataError, TaskCard, load_card
from .taskdata import SPLITS, Split, TaskData, resize_pair, validate_split

FORMAT = "c2gr-prepared"
VERSION = 1
PREPARED_SIZE = 256     # sec. 4.1.1: every image and axial slice is resized to 256 x 256
_LOAD_CHUNK = 256       # slices converted to float per step in load_prepared


def _shard_names(split: str) -> dict[str, str]:
    return {"images": f"{split}_images.npy", "masks": f"{split}_masks.npy"}


class PreparedWriter:
    """Stream image-mask pairs into a prepared directory without holding a dataset in RAM.

        with PreparedWriter(dst, card) as w:
            w.add("train", images_u8, masks_u8, ids, case="case_00000")
            ...
        # on normal exit: shards finalised, index + card written, tmp renamed to dst
        # on an exception: the temporary directory is removed, dst untouched

    Pairs are appended to raw files; `commit` prefixes each with an .npy header (the count is
    only known at the end). Every split must receive at least one pair.
    """

    def __init__(self, dst: str | Path, card: TaskCard, *, overwrite: bool = False,
                 meta: Mapping | None = None, size: int = PREPARED_SIZE):
        self.dst = Path(dst)
        self.card = card
        self.overwrite = overwrite
        self.meta = dict(meta or {})
        self.size = int(size)
        if self.dst.exists() and not overwrite:
            raise FileExistsError(f"{self.dst}: already exists; pass overwrite=True to replace it")
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}.tmp-", dir=self.dst.parent))
        self._files = {}
        self._ids: dict[str, list[str]] = {s: [] for s in SPLITS}
        self._cases: dict[str, list[str]] = {s: [] for s in SPLITS}
        self._pixels = {s: np.zeros(card.n_classes + 1, np.int64) for s in SPLITS}
        self._present = {s: np.zeros(card.n_classes + 1, np.int64) for s in SPLITS}
        self._done = False

    def __enter__(self) -> "PreparedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def add(self, split: str, images: np.ndarray, masks: np.ndarray, ids: Sequence[str],
            case: str | None = None) -> None:
        """Append n pairs: images uint8 (n, S, S, 3), masks uint8 (n, S, S), n source ids."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        where = f"{self.card.name}/{split}" + (f" (case {case})" if case else "")
        s = self.size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise DataError(f"{where}: images must be uint8 (n, {s}, {s}, 3), got {images.dtype} {images.shape}")
        if masks.dtype != np.uint8 or masks.shape != images.shape[:3]:
            raise DataError(f"{where}: masks must be uint8 {images.shape[:3]}, got {masks.dtype} {masks.shape}")
        if len(ids) != len(images):
            raise DataError(f"{where}: {len(ids)} ids for {len(images)} pairs")
        if len(images) == 0:
            return
        counts = np.stack([np.bincount(m.ravel(), minlength=256) for m in masks])
        c = self.card.n_classes
        bad = np.flatnonzero(counts[:, c + 1:].sum(axis=1))
        if len(bad):
            top = int(masks[bad[0]].max())
            raise DataError(f"{ids[bad[0]]}: mask label {top} outside the card's classes 0..{c} ({self.card.name})")
        if split not in self._files:
            self._files[split] = (open(self.tmp / f"{split}_images.raw", "wb"),
                                  open(self.tmp / f"{split}_masks.raw", "wb"))
        fi, fm = self._files[split]
        fi.write(np.ascontiguousarray(images).tobytes())
        fm.write(np.ascontiguousarray(masks).tobytes())
        self._ids[split].extend(str(i) for i in ids)
        if case is not None and (not self._cases[split] or self._cases[split][-1] != case):
            self._cases[split].append(str(case))
        self._pixels[split] += counts[:, :c + 1].sum(axis=0)
        self._present[split] += (counts[:, :c + 1] > 0).sum(axis=0)

    def _close_files(self) -> None:
        for fi, fm in self._files.values():
            fi.close()
            fm.close()

    def commit(self) -> Path:
        """Finalise shards, write index.json and card.yaml, move the directory into place."""
        if self._done:
            return self.dst
        try:
            self._close_files()
            empty = [s for s in SPLITS if not self._ids[s]]
            if empty:
                raise DataError(f"{self.dst}: split(s) {empty} received no image-mask pairs "
                                f"(too few cases, or no foreground in them)")
            s = self.size
            index = {"format": FORMAT, "version": VERSION, "task": self.card.name,
                     "image_size": s, "classes": list(self.card.classes), **self.meta, "splits": {}}
            for split in SPLITS:
                n = len(self._ids[split])
                names = _shard_names(split)
                _raw_to_npy(self.tmp / f"{split}_images.raw", self.tmp / names["images"], (n, s, s, 3))
                _raw_to_npy(self.tmp / f"{split}_masks.raw", self.tmp / names["masks"], (n, s, s))
                index["splits"][split] = {
                    "count": n, "files": names, "ids": self._ids[split], "cases": self._cases[split],
                    "class_pixels": self._pixels[split].tolist(),
                    "class_images": self._present[split].tolist(),
                }
            (self.tmp / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
            (self.tmp / "card.yaml").write_text(
                yaml.safe_dump(self.card.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
            _move_into_place(self.tmp, self.dst, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.dst

    def abort(self) -> None:
        self._close_files()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True


def _raw_to_npy(raw: Path, npy: Path, shape: tuple[int, ...]) -> None:
    with open(npy, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with open(raw, "rb") as src:
            shutil.copyfileobj(src, out, 16 << 20)
    raw.unlink()


def _move_into_place(tmp: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists():
        if not overwrite:
            raise FileExistsError(f"{dst}: already exists; pass overwrite=True to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        old.rmdir()
        dst.rename(old)
        try:
            tmp.rename(dst)
        except BaseException:
            old.rename(dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dst)


def write_prepared(dst: str | Path, card: TaskCard,
                   splits: Mapping[str, tuple[np.ndarray, np.ndarray, Iterable[str]]],
                   *, overwrite: bool = False, meta: Mapping | None = None) -> Path:
    """Write in-memory splits {name: (images uint8 (N,256,256,3), masks uint8 (N,256,256), ids)}.

    All three of train/val/test are required. Atomic: a failure leaves no `dst`.
    """
    missing = [s for s in SPLITS if s not in splits]
    unknown = sorted(set(splits) - set(SPLITS))
    if missing or unknown:
        raise ValueError(f"splits must be exactly {list(SPLITS)}; missing {missing}, unknown {unknown}")
    with PreparedWriter(dst, card, overwrite=overwrite, meta=meta) as w:
        for name in SPLITS:
            images, masks, ids = splits[name]
            w.add(name, np.asarray(images), np.asarray(masks), list(ids))
    return Path(dst)


def is_prepared(path: str | Path) -> bool:
    """True if `path` looks like a prepared task directory (has an index.json of this format)."""
    try:
        return json.loads((Path(path) / "index.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_index(path: str | Path) -> dict:
    """The index.json of a prepared directory, checked for format and version."""
    f = Path(path) / "index.json"
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{f}: cannot read prepared index ({e.strerror or e})") from e
    except ValueError as e:
        raise DataError(f"{f}: not valid JSON ({e})") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{f}: not a prepared-task index (format tag {FORMAT!r} missing)")
    if index.get("version") != VERSION:
        raise DataError(f"{f}: prepared format version {index.get('version')!r}, this workbench reads {VERSION}; "
                        f"re-run `c2gr prepare`")
    if not isinstance(index.get("splits"), dict) or any(s not in index["splits"] for s in SPLITS):
        raise DataError(f"{f}: index must list splits {list(SPLITS)}")
    return index


def _u8_to_model(images: np.ndarray) -> np.ndarray:
    """Vectorised taskdata.to_model_image for uint8 (n, H, W, 3): -> float32 (n, 3, H, W) in [-1, 1]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def _load_split(root: Path, split: str, entry: dict, size: int, card: TaskCard) -> Split:
    files = entry.get("files") or _shard_names(split)
    arrays = {}
    for key in ("images", "masks"):
        f = root / files[key]
        try:
            arrays[key] = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{f}: cannot read shard ({e})") from e
        if arrays[key].dtype != np.uint8:
            raise DataError(f"{f}: expected uint8, got {arrays[key].dtype}")
    img, msk = arrays["images"], arrays["masks"]
    n, s = entry.get("count"), PREPARED_SIZE
    if img.ndim != 4 or img.shape[0] != n or img.shape[3] != 3 or img.shape[1] != img.shape[2]:
        raise DataError(f"{root / files['images']}: shape {img.shape}, index says ({n}, {s}, {s}, 3)")
    if msk.shape != img.shape[:3]:
        raise DataError(f"{root / files['masks']}: shape {msk.shape} does not match images {img.shape[:3]}")
    out_i = np.empty((n, 3, size, size), np.float32)
    out_m = np.empty((n, size, size), np.uint8)
    for a in range(0, n, _LOAD_CHUNK):
        x, y = resize_pair(_u8_to_model(img[a:a + _LOAD_CHUNK]), np.array(msk[a:a + _LOAD_CHUNK]), size)
        out_i[a:a + len(x)], out_m[a:a + len(x)] = x, y
    validate_split(out_i, out_m, card.n_classes, origin=f"{root / files['images']}")
    return Split(out_i, out_m)


def load_prepared(path: str | Path, image_size: int = PREPARED_SIZE) -> TaskData:
    """Load a prepared directory as TaskData at image_size x image_size (errors name the file)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such prepared task directory")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    index = read_index(root)
    try:
        card = load_card(root / "card.yaml")
    except CardError as e:
        raise DataError(str(e)) from e
    if index.get("task") != card.name:
        raise DataError(f"{root / 'index.json'}: task {index.get('task')!r} but card.yaml names {card.name!r}")
    splits = {s: _load_split(root, s, index["splits"][s], image_size, card) for s in SPLITS}
    return TaskData(card=card, origin=f"prepared:{root}", **splits)
