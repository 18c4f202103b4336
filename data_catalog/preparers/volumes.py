"""Preparers for the 3D datasets: MSD Pancreas / Liver, KiTS19, BraTS 2021, M&Ms, PROMISE12.

Slicing (sec. 4.1.1: "axial slices of 3D volumes, resized to 256 x 256"):
- axial 2D slices; only slices with at least one foreground voxel are kept (slices without
  the target carry no segmentation signal and would swamp a 2D stream with background);
- the axial axis is the last array axis for MSD, BraTS and M&Ms (nibabel order x, y, z; the
  slice is transposed to rows = y), axis 0 for KiTS19 (its volumes are stored (z, y, x))
  and for PROMISE12 (MetaImage data is x-fastest, so the array is (z, y, x));
- CT is windowed to [-100, 240] HU (one abdominal soft-tissue window for pancreas, liver and
  kidney) and mapped to 0..255; MR is normalised per volume between its 0.5th and 99.5th
  intensity percentiles (BraTS: of the brain, i.e. the non-zero voxels, since the volumes
  are skull-stripped with a zero background);
- bilinear resize for images, nearest for masks, grey replicated to 3 channels.
Splits are by case (patient), never by slice.
"""
from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import nibabel as nib
import numpy as np

from ..prepared import PREPARED_SIZE
from ..schema import DataError
from .common import Case, Pairs, map_levels, require_dir, resize_image_u8, resize_mask_u8
from .metaimage import read_mhd

CT_WINDOW = (-100.0, 240.0)
MR_PERCENTILES = (0.5, 99.5)
INTENSITY_MODES = ("ct", "mr", "mr-nonzero")


class Volume:
    """A lazily read volume: its shape, and `read(index)` returning only the indexed part."""

    def __init__(self, path: Path, shape: tuple[int, ...], reader: Callable):
        self.path, self.shape, self._reader = path, tuple(int(s) for s in shape), reader

    def read(self, index) -> np.ndarray:
        try:
            return np.asarray(self._reader(index))
        except DataError:
            raise
        except Exception as e:  # truncated gzip, short reads, bad scaling...
            raise DataError(f"{self.path}: cannot read volume data ({type(e).__name__}: {e})") from e


def open_nifti(path: Path) -> Volume:
    try:
        img = nib.load(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except Exception as e:
        raise DataError(f"{path}: cannot read NIfTI ({type(e).__name__}: {e})") from e
    # dataobj slicing reads only the requested part (a CT slab, one cine frame)
    return Volume(path, img.shape, lambda idx: img.dataobj[idx])


def open_mhd(path: Path) -> Volume:
    arr = read_mhd(path)
    return Volume(path, arr.shape, lambda idx: arr[idx])


def _to_u8(vol: np.ndarray, intensity: str) -> np.ndarray:
    if intensity == "ct":
        lo, hi = CT_WINDOW
    else:
        voxels = vol[vol > 0] if intensity == "mr-nonzero" and (vol > 0).any() else vol
        lo, hi = (float(v) for v in np.percentile(voxels, MR_PERCENTILES))
    scaled = np.clip((vol - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def _empty() -> Pairs:
    s = PREPARED_SIZE
    return np.zeros((0, s, s, 3), np.uint8), np.zeros((0, s, s), np.uint8), []


def volume_pairs(case_id: str, image: Volume, label: Volume, *, axis: int, mapping: Mapping[int, int],
                 intensity: str, frame: int | None = None, transpose: bool = False, tag: str = "") -> Pairs:
    """Foreground axial slices of one volume (or of one frame of a 4D cine) as prepared pairs."""
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {list(INTENSITY_MODES)}, got {intensity!r}")
    ndim = 3 if frame is None else 4
    if len(image.shape) != ndim:
        raise DataError(f"{image.path}: expected a {ndim}D volume, got shape {image.shape}")
    if label.shape != image.shape:
        raise DataError(f"{label.path}: label shape {label.shape} does not match image {image.path.name} "
                        f"shape {image.shape}")
    tail: tuple = ()
    if frame is not None:
        if not 0 <= frame < image.shape[3]:
            raise DataError(f"{image.path}: frame {frame} outside the {image.shape[3]} frames of the cine")
        tail = (frame,)
    lab = map_levels(label.read((slice(None),) * 3 + tail), mapping, label.path)
    fg = np.flatnonzero(lab.any(axis=tuple(a for a in range(3) if a != axis)))
    if len(fg) == 0:
        return _empty()
    idx = [slice(None)] * 3
    base = 0
    if intensity == "ct":    # a fixed window needs no global statistics: read the foreground slab only
        base = int(fg[0])
        idx[axis] = slice(base, int(fg[-1]) + 1)
    vol = image.read(tuple(idx) + tail).astype(np.float32)
    if not np.isfinite(vol).all():
        raise DataError(f"{image.path}: image contains NaN or Inf")
    u8 = _to_u8(vol, intensity)
    images, masks, ids = [], [], []
    for k in fg:
        lead = (slice(None),) * axis   # basic indexing: a view (np.take copies the whole volume)
        im, lb = u8[lead + (k - base,)], lab[lead + (k,)]
        if transpose:
            im, lb = im.T, lb.T
        images.append(resize_image_u8(im))
        masks.append(resize_mask_u8(lb))
        ids.append(f"{case_id}:{tag}z{int(k):03d}")
    return np.stack(images), np.stack(masks), ids


def _nifti_case(case_id, image_path, label_path, **kw) -> Pairs:
    return volume_pairs(case_id, open_nifti(image_path), open_nifti(label_path), **kw)


def _nii_name(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".nii"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


# ------------------------------------------------------------------ MSD (Pancreas, Liver)

MSD_LEVELS = {0: 0, 1: 1, 2: 2}   # Task07: pancreas, tumour; Task03: liver, tumour


def _collect_msd(src: Path, task_dir: str) -> list[Case]:
    root = src / task_dir if (src / task_dir).is_dir() else src
    img_dir = require_dir(root / "imagesTr", f"MSD {task_dir}/imagesTr")
    lab_dir = require_dir(root / "labelsTr", f"MSD {task_dir}/labelsTr")
    ds = root / "dataset.json"
    if ds.is_file():
        try:
            entries = json.loads(ds.read_text(encoding="utf-8"))["training"]
            pairs = [(root / e["image"], root / e["label"]) for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{ds}: cannot read the 'training' list ({type(e).__name__}: {e})") from e
    else:
        pairs = [(p, lab_dir / p.name) for p in sorted(img_dir.glob("*.nii*")) if not p.name.startswith("._")]
    cases = []
    for img, lab in pairs:
        for f, what in ((img, "image"), (lab, "label")):
            if not f.is_file():
                raise DataError(f"{f}: missing {what} volume (listed in {ds.name if ds.is_file() else img_dir})")
        cid = _nii_name(img)
        cases.append(Case(cid, None, partial(_nifti_case, cid, img, lab, axis=2, mapping=MSD_LEVELS,
                                             intensity="ct", transpose=True)))
    return cases


def collect_msd_pancreas(src: Path) -> list[Case]:
    """MSD Task07_Pancreas: imagesTr/*.nii.gz + labelsTr/*.nii.gz (+ dataset.json); labels 1 pancreas, 2 tumour.

    The MSD test images have no public labels: random 60/15/25 split by case.
    """
    return _collect_msd(src, "Task07_Pancreas")


def collect_msd_liver(src: Path) -> list[Case]:
    """MSD Task03_Liver (LiTS): imagesTr/*.nii.gz + labelsTr/*.nii.gz; labels 1 liver, 2 tumour. Random split."""
    return _collect_msd(src, "Task03_Liver")


# ------------------------------------------------------------------ KiTS19

def collect_kits(src: Path) -> list[Case]:
    """KiTS19: data/case_XXXXX/imaging.nii.gz + segmentation.nii.gz; labels 1 kidney, 2 tumour.

    Volumes are stored (slices, H, W): axial is axis 0. Cases without segmentation (the
    official test cases 210-299) are skipped, so the card uses the random rule.
    """
    root = src / "data" if (src / "data").is_dir() else src
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("case_")):
        img, seg = d / "imaging.nii.gz", d / "segmentation.nii.gz"
        if not seg.is_file():
            continue
        if not img.is_file():
            raise DataError(f"{img}: missing imaging volume for {seg}")
        cases.append(Case(d.name, None, partial(_nifti_case, d.name, img, seg, axis=0, mapping=MSD_LEVELS,
                                                intensity="ct")))
    return cases


# ------------------------------------------------------------------ BraTS 2021

BRATS_SEQUENCES = ("t1", "t1ce", "t2", "flair")
BRATS_LEVELS = {0: 0, 1: 1, 2: 1, 4: 1}   # necrotic core, oedema, enhancing tumour -> whole tumour


def collect_brats(src: Path, sequence: str) -> list[Case]:
    """BraTS 2021: BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz.

    One source gives four catalog tasks, one per `sequence`. Labels {1, 2, 4} -> 1 (whole
    tumour). Case folders may sit in `src` or one level deeper (the release folder). No public
    labelled test set: random split by subject.
    """
    segs = sorted({p for pat in ("*/*_seg.nii.gz", "*/*/*_seg.nii.gz", "*/*_seg.nii", "*/*/*_seg.nii")
                   for p in src.glob(pat) if not p.name.startswith("._")})
    cases = []
    for seg in segs:
        cid = _nii_name(seg)[: -len("_seg")]
        img = next((seg.parent / f"{cid}_{sequence}{suf}" for suf in (".nii.gz", ".nii")
                    if (seg.parent / f"{cid}_{sequence}{suf}").is_file()), seg.parent / f"{cid}_{sequence}.nii.gz")
        if not img.is_file():
            raise DataError(f"{img}: missing {sequence} volume for case {cid}")
        cases.append(Case(cid, None, partial(_nifti_case, cid, img, seg, axis=2, mapping=BRATS_LEVELS,
                                             intensity="mr-nonzero", transpose=True)))
    return cases


# ------------------------------------------------------------------ M&Ms

MMS_VENDORS = {"A": "siemens", "B": "philips", "C": "ge", "D": "canon"}
MMS_LEVELS = {0: 0, 1: 1, 2: 2, 3: 3}    # LV, MYO, RV
MMS_PARTS = {"training": "train", "validation": "val", "testing": "test"}


def read_mms_info(path: Path) -> dict[str, tuple[str, int, int]]:
    """The M&Ms information CSV -> {external code: (vendor letter, ED frame, ES frame)}.

    Columns (case-insensitive): 'External code', 'Vendor' (A-D) or 'VendorName', 'ED', 'ES'.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read M&Ms information CSV ({e})") from e
    info = {}
    for line, row in enumerate(rows, start=2):
        r = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        try:
            code = r["external code"]
            vendor = r.get("vendor", "").upper()
            if vendor not in MMS_VENDORS:
                vendor = {v: k for k, v in MMS_VENDORS.items()}.get(r.get("vendorname", "").lower().split(" ")[0], "")
            if vendor not in MMS_VENDORS:
                raise ValueError(f"vendor {r.get('vendor')!r} / {r.get('vendorname')!r} is not one of A-D")
            info[code] = (vendor, int(float(r["ed"])), int(float(r["es"])))
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}: line {line}: bad M&Ms information row ({type(e).__name__}: {e}); needs "
                            f"'External code', 'Vendor', 'ED', 'ES'") from e
    if not info:
        raise DataError(f"{path}: M&Ms information CSV has no rows")
    return info


def _find_mms_csv(src: Path) -> Path:
    for p in sorted(src.glob("*.csv")) + sorted(src.glob("*/*.csv")):
        try:
            head = p.read_text(encoding="utf-8-sig", errors="replace").splitlines()[:1]
        except OSError:
            continue
        if head and "external code" in head[0].lower():
            return p
    raise DataError(f"{src}: no M&Ms information CSV (a .csv with columns 'External code', 'Vendor', "
                    f"'ED', 'ES') found; pass info_csv=")


def _mms_case(code: str, image: Path, label: Path, ed: int, es: int) -> Pairs:
    img, lab = open_nifti(image), open_nifti(label)
    parts = [volume_pairs(code, img, lab, axis=2, mapping=MMS_LEVELS, intensity="mr", frame=f,
                          transpose=True, tag=f"{phase}:") for phase, f in (("ED", ed), ("ES", es))]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            parts[0][2] + parts[1][2])


def collect_mms(src: Path, vendor: str, info_csv: str | Path | None = None) -> list[Case]:
    """M&Ms: {Training/Labeled,Validation,Testing}/<code>/<code>_sa.nii.gz (4D cine) + <code>_sa_gt.nii.gz.

    The information CSV maps each code to its vendor (A Siemens, B Philips, C GE, D Canon) and
    its ED / ES frame (0-based); only those two frames are labelled, and both are sliced.
    Labels 1 LV, 2 MYO, 3 RV. Official parts: Training -> train, Validation -> val,
    Testing -> test. The official training set is uneven across vendors (the M&Ms release has
    few or no labelled training cases for C and D), so per-vendor tasks use the random rule.
    """
    csv_path = Path(info_csv) if info_csv else _find_mms_csv(src)
    info = read_mms_info(csv_path)
    cases = []
    for gt in sorted(src.rglob("*_sa_gt.nii.gz")):
        if gt.name.startswith("._"):
            continue
        code = gt.name[: -len("_sa_gt.nii.gz")]
        if code not in info:
            raise DataError(f"{csv_path}: no row for M&Ms case {code} ({gt})")
        v, ed, es = info[code]
        if v != vendor:
            continue
        img = gt.parent / f"{code}_sa.nii.gz"
        if not img.is_file():
            raise DataError(f"{img}: missing cine volume for {gt}")
        tag = next((MMS_PARTS[p.lower()] for p in gt.relative_to(src).parts if p.lower() in MMS_PARTS), None)
        cases.append(Case(code, tag, partial(_mms_case, code, img, gt, ed, es)))
    return cases


# ------------------------------------------------------------------ PROMISE12

def _mhd_case(case_id, image_path, label_path) -> Pairs:
    return volume_pairs(case_id, open_mhd(image_path), open_mhd(label_path), axis=0, mapping={0: 0, 1: 1},
                        intensity="mr")


def collect_promise12(src: Path) -> list[Case]:
    """PROMISE12: TrainingData_Part*/CaseXX.mhd + CaseXX_segmentation.mhd (MetaImage, labels 0/1 prostate).

    Only the 50 training cases are labelled: random split by case.
    """
    cases = []
    for seg in sorted(src.rglob("*_segmentation.mhd")):
        if seg.name.startswith("._"):
            continue
        cid = seg.name[: -len("_segmentation.mhd")]
        img = seg.parent / f"{cid}.mhd"
        if not img.is_file():
            raise DataError(f"{img}: missing image for {seg}")
        cases.append(Case(cid, None, partial(_mhd_case, cid, img, seg)))
    return cases
