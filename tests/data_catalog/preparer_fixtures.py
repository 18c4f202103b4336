"""Tiny fixture datasets in each public dataset's official layout, for the preparer tests.

Every writer draws the same label pattern (nested squares, 24 x 24) in the dataset's own
encoding, written here by hand from the dataset documentation (not from the preparers),
and returns what a correct preparer must produce: the card, the options, the number of
cases per split, pairs per case, and probe pixels (relative position -> class index).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

S = 24   # fixture image / slice side
BASE_RGB = (40, 80, 120)        # image colour outside the innermost square
CORE_RGB = (200, 100, 50)       # colour inside it
CT_BG, CT_FG = -1000.0, 70.0    # HU: below the [-100, 240] window, and inside it
CORE_PROBES = ((0.5, 0.5), (0.94, 0.06))     # image has the foreground appearance here
BASE_PROBES = ((0.03, 0.03), (0.06, 0.94))   # and the background appearance here


TAB = (slice(20, 24), slice(0, 4))   # bottom-left: makes the pattern asymmetric under transposition


def pattern(n_classes: int) -> np.ndarray:
    """0 outside; class 1 on rows/cols 4..19 and on the bottom-left TAB, class 2 on 8..15, class 3 on 10..13.

    Rows are the image's vertical axis (y), columns x. The TAB catches a transposed or
    flipped slice, and an image that does not line up with its mask."""
    lab = np.zeros((S, S), np.uint8)
    lab[4:20, 4:20] = 1
    lab[TAB] = 1
    if n_classes >= 2:
        lab[8:16, 8:16] = 2
    if n_classes >= 3:
        lab[10:14, 10:14] = 3
    return lab


def probes(n_classes: int) -> list[tuple[tuple[float, float], int]]:
    """(relative row, col) -> class; each lies well inside its region at any output size."""
    out = [((0.03, 0.03), 0), ((0.06, 0.94), 0), ((0.25, 0.5), 1), ((0.94, 0.06), 1)]
    if n_classes >= 2:
        out.append(((0.375, 0.5), 2))
    out.append(((0.5, 0.5), n_classes))
    return out


def encode(lab: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Class map -> the dataset's stored levels (table: class -> stored value)."""
    out = np.zeros(lab.shape, np.uint8)
    for c, v in table.items():
        out[lab == c] = v
    return out


def rgb_image(lab: np.ndarray, n_classes: int) -> np.ndarray:
    img = np.empty(lab.shape + (3,), np.uint8)
    img[:] = BASE_RGB
    img[lab == n_classes] = CORE_RGB
    img[TAB] = CORE_RGB
    return img


def grey_image(lab: np.ndarray, n_classes: int) -> np.ndarray:
    return rgb_image(lab, n_classes)[..., 0]


def save(arr: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def save_nifti(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


@dataclass
class Expect:
    dataset: str
    classes: tuple[str, ...]
    rule: str
    cases: dict[str, int]             # cases per split a correct preparer produces
    per_case: int = 1                 # pairs per case
    options: dict = field(default_factory=dict)
    core_rgb: tuple | None = CORE_RGB  # expected image colour at CORE_PROBES (None: MR, checked by rank)
    base_rgb: tuple = BASE_RGB         # ... and at BASE_PROBES
    ct: bool = False                   # check the CT window values instead
    rgb_tol: float = 2.5 / 127.5

    def card_dict(self, name: str | None = None) -> dict:
        split = {"rule": self.rule}
        if self.rule == "random":
            split.update(train=0.60, val=0.15, test=0.25)
        return {"name": name or self.dataset.replace("msd-", ""), "modality": "test modality",
                "anatomy": "test anatomy", "objective": "test objective", "classes": list(self.classes),
                "dataset": self.dataset, "split": split}


# --------------------------------------------------------------------------- 3D

def _volume(lab2d: np.ndarray, fg: range, depth: int, axis: int) -> np.ndarray:
    """Stack `lab2d` (rows = y, cols = x) on slices `fg`. axis 2: NIfTI (x, y, z) order, so the
    slice is stored transposed; axis 0: (z, y, x) order (KiTS19, MetaImage), stored as is."""
    vol = np.zeros((depth, S, S), np.uint8)
    for k in fg:
        vol[k] = lab2d
    return vol.transpose(2, 1, 0) if axis == 2 else vol


def _ct(lab: np.ndarray, dtype) -> np.ndarray:
    return np.where(lab > 0, CT_FG, CT_BG).astype(dtype)


def write_msd(root: Path, task_dir: str, n_cases: int = 4, image_dtype=np.float32) -> Path:
    """MSD: imagesTr / labelsTr (x, y, z), dataset.json, labels 0/1/2, foreground on z = 2..5 of 8."""
    base = root / task_dir
    prefix = task_dir.split("_")[1].lower()
    training = []
    for i in range(n_cases):
        lab = _volume(pattern(2), range(2, 6), 8, axis=2)
        save_nifti(_ct(lab, image_dtype), base / "imagesTr" / f"{prefix}_{i:03d}.nii.gz")
        save_nifti(lab, base / "labelsTr" / f"{prefix}_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/{prefix}_{i:03d}.nii.gz", "label": f"./labelsTr/{prefix}_{i:03d}.nii.gz"})
    (base / "dataset.json").write_text(json.dumps({"name": task_dir, "labels": {"0": "background"},
                                                   "training": training, "test": []}))
    return base


def fx_msd_pancreas(root: Path) -> Expect:
    write_msd(root, "Task07_Pancreas")
    return Expect("msd-pancreas", ("pancreas", "pancreatic tumour"), "random", {"train": 2, "val": 1, "test": 1},
                  per_case=4, ct=True)


def fx_msd_liver(root: Path) -> Expect:
    write_msd(root, "Task03_Liver", image_dtype=np.int16)
    return Expect("msd-liver", ("liver", "liver tumour"), "random", {"train": 2, "val": 1, "test": 1},
                  per_case=4, ct=True)


def fx_kits(root: Path) -> Expect:
    """KiTS19: data/case_XXXXX/{imaging,segmentation}.nii.gz stored (z, y, x); one unlabelled case."""
    for i in range(5):
        d = root / "data" / f"case_{i:05d}"
        lab = _volume(pattern(2), range(1, 4), 8, axis=0)
        save_nifti(_ct(lab, np.int16), d / "imaging.nii.gz")
        if i < 4:
            save_nifti(lab, d / "segmentation.nii.gz")
    return Expect("kits", ("kidney", "kidney tumour"), "random", {"train": 2, "val": 1, "test": 1},
                  per_case=3, ct=True)


def _mr(lab: np.ndarray, rng) -> np.ndarray:
    return np.where(lab > 0, 800.0, rng.uniform(100, 200, lab.shape)).astype(np.float32)


def fx_brats(root: Path) -> Expect:
    """BraTS 2021 case folders; seg uses 1 (core), 2 (oedema), 4 (enhancing). Only t1ce is readable:
    the other sequences are garbage, so reading the wrong one fails."""
    rng = np.random.default_rng(0)
    for i in range(4):
        cid = f"BraTS2021_{i:05d}"
        d = root / "TrainingData" / cid
        seg2d = encode(pattern(3), {1: 2, 2: 1, 3: 4})
        seg = _volume(seg2d, range(3, 6), 8, axis=2)
        save_nifti(seg, d / f"{cid}_seg.nii.gz")
        save_nifti(_mr(seg, rng), d / f"{cid}_t1ce.nii.gz")
        for seq in ("t1", "t2", "flair"):
            (d / f"{cid}_{seq}.nii.gz").write_bytes(b"not a nifti")
    e = Expect("brats", ("brain tumour",), "random", {"train": 2, "val": 1, "test": 1}, per_case=3,
               options={"sequence": "t1ce"}, core_rgb=None)
    return e


def fx_mms(root: Path) -> Expect:
    """M&Ms: 4D (x, y, z, t) cines; ED = frame 0, ES = frame 3 labelled on z = 1, 2; vendor A x4, B x1."""
    rng = np.random.default_rng(1)
    rows = [",External code,VendorName,Vendor,Centre,ED,ES"]
    for i, (vendor, name, part) in enumerate([("A", "Siemens", "Training/Labeled"), ("A", "Siemens", "Training/Labeled"),
                                              ("A", "Siemens", "Validation"), ("A", "Siemens", "Testing"),
                                              ("B", "Philips", "Training/Labeled")]):
        code = f"A{i}B{i}C{i}"
        gt = np.zeros((S, S, 4, 5), np.uint8)
        for f in (0, 3):
            for z in (1, 2):
                gt[:, :, z, f] = pattern(3).T      # NIfTI (x, y) order
        img = np.where(gt.max(axis=3, keepdims=True) > 0, 800.0, rng.uniform(100, 200, gt.shape)).astype(np.float32)
        save_nifti(img, root / part / code / f"{code}_sa.nii.gz")
        save_nifti(gt, root / part / code / f"{code}_sa_gt.nii.gz")
        rows.append(f"{i},{code},{name},{vendor},1,0,3")
    (root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text("\n".join(rows) + "\n")
    return Expect("mms", ("left ventricle", "myocardium", "right ventricle"), "random",
                  {"train": 2, "val": 1, "test": 1}, per_case=4, options={"vendor": "A"}, core_rgb=None)


def write_mhd(path: Path, arr: np.ndarray, msb: bool = False, raw_bytes: bytes | None = None) -> Path:
    met = {np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.int16): "MET_SHORT", np.dtype(np.float32): "MET_FLOAT"}
    dims = " ".join(str(d) for d in reversed(arr.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"ObjectType = Image\nNDims = {arr.ndim}\nBinaryData = True\n"
                    f"BinaryDataByteOrderMSB = {'True' if msb else 'False'}\nCompressedData = False\n"
                    f"ElementSpacing = 0.6 0.6 3.6\nDimSize = {dims}\nElementType = {met[arr.dtype]}\n"
                    f"ElementDataFile = {path.stem}.raw\n")
    data = arr.astype(arr.dtype.newbyteorder(">" if msb else "<")).tobytes() if raw_bytes is None else raw_bytes
    (path.parent / f"{path.stem}.raw").write_bytes(data)
    return path


def fx_promise12(root: Path) -> Expect:
    """PROMISE12 MetaImage pairs in TrainingData_Part1/2; z-first arrays; one case big-endian."""
    rng = np.random.default_rng(2)
    for i in range(4):
        part = root / f"TrainingData_Part{1 + i % 2}"
        lab = _volume(pattern(1), range(2, 4), 8, axis=0)
        img = np.where(lab > 0, 800, rng.integers(100, 200, lab.shape)).astype(np.int16)
        write_mhd(part / f"Case{i:02d}.mhd", img, msb=(i == 1))
        write_mhd(part / f"Case{i:02d}_segmentation.mhd", lab)
    return Expect("promise12", ("prostate",), "random", {"train": 2, "val": 1, "test": 1}, per_case=2,
                  core_rgb=None)


# --------------------------------------------------------------------------- 2D

def fx_fundus(root: Path) -> Expect:
    """DoFE: Domain1/{train,test}/ROIs/{image,mask}; mask 255 background, 128 disc rim, 0 cup."""
    lab = pattern(2)
    for part, n in (("train", 3), ("test", 2)):
        for i in range(n):
            save(rgb_image(lab, 2), root / "Domain1" / part / "ROIs" / "image" / f"g{i:04d}.png")
            save(encode(lab, {0: 255, 1: 128, 2: 0}), root / "Domain1" / part / "ROIs" / "mask" / f"g{i:04d}.png")
    # another site, which site=1 must not pick up
    save(rgb_image(lab, 2), root / "Domain2" / "train" / "ROIs" / "image" / "x.png")
    save(encode(lab, {0: 255, 1: 128, 2: 0}), root / "Domain2" / "train" / "ROIs" / "mask" / "x.png")
    return Expect("fundus", ("optic disc", "optic cup"), "official", {"train": 2, "val": 1, "test": 2},
                  options={"site": 1})


def fx_glas(root: Path) -> Expect:
    """GlaS BMPs in the release folder; annotation = instance ids (two glands 1 and 2 here)."""
    d = root / "Warwick QU Dataset (Released 2016_07_08)"
    lab = pattern(1)
    inst = lab.copy()
    inst[4:20, 12:20] *= 2           # a second gland instance in the same square
    for stem in ("train_1", "train_2", "train_3", "train_4", "testA_1", "testA_2", "testB_1"):
        save(rgb_image(lab, 1), d / f"{stem}.bmp")
        save(inst, d / f"{stem}_anno.bmp")
    return Expect("glas", ("gland",), "official", {"train": 3, "val": 1, "test": 3})


def fx_busi(root: Path) -> Expect:
    """BUSI class folders; 'benign (2)' has an extra lesion in _mask_1 at the bottom-right corner."""
    d = root / "Dataset_BUSI_with_GT"
    lab = pattern(1)
    for cls, n in (("benign", 2), ("malignant", 2), ("normal", 1)):
        for i in range(1, n + 1):
            save(rgb_image(lab, 1), d / cls / f"{cls} ({i}).png")
            save(encode(lab if cls != "normal" else lab * 0, {1: 255}), d / cls / f"{cls} ({i})_mask.png")
    corner = np.zeros((S, S), np.uint8)
    corner[21:24, 21:24] = 255
    save(corner, d / "benign" / "benign (2)_mask_1.png")
    return Expect("busi", ("breast tumour",), "random", {"train": 2, "val": 1, "test": 1})


def fx_qatav2(root: Path) -> Expect:
    lab = pattern(1)
    for part, n in (("Train Set", 3), ("Test Set", 2)):
        for i in range(n):
            save(grey_image(lab, 1), root / "QaTa-COV19-v2" / part / "Images" / f"covid_{i}.png")
            save(encode(lab, {1: 255}), root / "QaTa-COV19-v2" / part / "Ground-truths" / f"mask_covid_{i}.png")
    e = Expect("qatav2", ("covid-19 infection",), "official", {"train": 2, "val": 1, "test": 2})
    e.core_rgb, e.base_rgb = (CORE_RGB[0],) * 3, (BASE_RGB[0],) * 3   # grey, replicated
    return e


def fx_polyp(root: Path) -> Expect:
    """PraNet folders; masks carry JPEG-like in-between greys (200 inside, 30 outside the polyp)."""
    lab = pattern(1)
    lossy = np.where(lab > 0, 200, 30).astype(np.uint8)
    for i in range(3):
        save(rgb_image(lab, 1), root / "TrainDataset" / "image" / f"{i}.png")
        save(lossy, root / "TrainDataset" / "mask" / f"{i}.png")
    for sub in ("Kvasir", "CVC-300"):
        save(rgb_image(lab, 1), root / "TestDataset" / sub / "images" / "1.png")
        save(lossy, root / "TestDataset" / sub / "masks" / "1.png")
    return Expect("polyp", ("polyp",), "official", {"train": 2, "val": 1, "test": 2})


def fx_isic18(root: Path) -> Expect:
    lab = pattern(1)
    for part, n in (("Training", 3), ("Validation", 1), ("Test", 1)):
        for i in range(n):
            name = f"ISIC_{part[:2]}{i:05d}"
            Image.fromarray(rgb_image(lab, 1)).save(
                _mk(root / f"ISIC2018_Task1-2_{part}_Input" / f"{name}.jpg"), quality=95)
            save(encode(lab, {1: 255}), root / f"ISIC2018_Task1_{part}_GroundTruth" / f"{name}_segmentation.png")
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("licence")
    e = Expect("isic18", ("skin lesion",), "official", {"train": 3, "val": 1, "test": 1})
    e.rgb_tol = 12 / 127.5   # JPEG
    return e


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def fx_drive(root: Path) -> Expect:
    lab = pattern(1)
    for part, nums in (("training", (21, 22, 23)), ("test", (1, 2))):
        for n in nums:
            save(rgb_image(lab, 1), root / "DRIVE" / part / "images" / f"{n:02d}_{part}.tif")
            Image.fromarray(encode(lab, {1: 255})).convert("P").save(
                _mk(root / "DRIVE" / part / "1st_manual" / f"{n:02d}_manual1.gif"))
    return Expect("drive", ("retinal vessel",), "official", {"train": 2, "val": 1, "test": 2})


def fx_goals(root: Path) -> Expect:
    """GOALS layer masks: 0 RNFL, 80 GCIPL, 160 choroid, 255 other."""
    lab = pattern(3)
    for i in range(1, 5):
        save(grey_image(lab, 3), root / "Train" / "Image" / f"{i:04d}.png")
        save(encode(lab, {0: 255, 1: 0, 2: 80, 3: 160}), root / "Train" / "Layer_Masks" / f"{i:04d}.png")
    e = Expect("goals", ("retinal nerve fibre layer", "ganglion cell-inner plexiform layer", "choroid"), "random",
               {"train": 2, "val": 1, "test": 1})
    e.core_rgb, e.base_rgb = (CORE_RGB[0],) * 3, (BASE_RGB[0],) * 3   # grey, replicated
    return e


def fx_segpc(root: Path) -> Expect:
    """SegPC: two cells per image. Cell 1: cytoplasm (40) on the class-1 square, nucleus (20) on the
    class-2 square. Cell 2: cytoplasm over the centre, on top of cell 1's nucleus; the nucleus must win."""
    lab = pattern(2)                       # 1 = cytoplasm, 2 = nucleus (card order)
    cell1 = encode(lab, {1: 40, 2: 20})
    cell2 = np.zeros((S, S), np.uint8)
    cell2[10:14, 10:14] = 40
    for part, n in (("train", 3), ("validation", 1)):
        for i in range(n):
            save(rgb_image(lab, 2), root / part / "x" / f"{100 + i}.bmp")
            save(np.repeat(cell1[..., None], 3, axis=2), root / part / "y" / f"{100 + i}_1.bmp")
            save(np.repeat(cell2[..., None], 3, axis=2), root / part / "y" / f"{100 + i}_2.bmp")
    return Expect("segpc", ("cytoplasm", "nucleus"), "official", {"train": 2, "val": 1, "test": 1})


def fx_ddti(root: Path) -> Expect:
    lab = pattern(1)
    for i in range(1, 5):
        save(grey_image(lab, 1), root / "image" / f"{i}.PNG")
        save(encode(lab, {1: 255}), root / "mask" / f"{i}.PNG")
    e = Expect("ddti", ("thyroid nodule",), "random", {"train": 2, "val": 1, "test": 1})
    e.core_rgb, e.base_rgb = (CORE_RGB[0],) * 3, (BASE_RGB[0],) * 3   # grey, replicated
    return e


FIXTURES = {
    "msd-pancreas": fx_msd_pancreas, "msd-liver": fx_msd_liver, "kits": fx_kits, "brats": fx_brats,
    "mms": fx_mms, "promise12": fx_promise12, "fundus": fx_fundus, "glas": fx_glas, "busi": fx_busi,
    "qatav2": fx_qatav2, "polyp": fx_polyp, "isic18": fx_isic18, "drive": fx_drive, "goals": fx_goals,
    "segpc": fx_segpc, "ddti": fx_ddti,
}
