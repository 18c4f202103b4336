"""Preparers and the prepared format, on tiny fixtures written in each dataset's official layout."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_catalog.prepared import (PreparedWriter, is_prepared, load_prepared, read_index, write_prepared)
from data_catalog.preparers import PREPARE_OPTIONS, PREPARERS, prepare, resolve
from data_catalog.preparers.metaimage import read_mhd
from data_catalog.schema import CardError, DataError, card_from_dict, load_card
from data_catalog.taskdata import SPLITS

from preparer_fixtures import BASE_PROBES, CORE_PROBES, CT_FG, FIXTURES, S, Expect, probes, save_nifti, write_mhd

CARDS = Path(__file__).resolve().parents[2] / "data_catalog" / "cards"
OUT = 32


def run(ds: str, tmp_path: Path, edit=None, card: dict | None = None, **kw):
    """Write the fixture of `ds`, optionally damage it, prepare it into tmp_path/out."""
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    e: Expect = FIXTURES[ds](src)
    if edit:
        edit(src)
    c = card_from_dict(card or e.card_dict())
    dst = prepare(ds, src, tmp_path / "out", card=c, seed=0, progress=False, **{**e.options, **kw})
    return e, dst


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*")), "temporary directory left behind"


# ------------------------------------------------------------------ every dataset id

@pytest.mark.parametrize("ds", sorted(FIXTURES))
def test_prepare_and_load_every_dataset(ds, tmp_path):
    e, dst = run(ds, tmp_path)
    assert is_prepared(dst)
    index = read_index(dst)
    td = load_prepared(dst, OUT)
    n = len(e.classes)
    assert td.card.classes == e.classes and index["dataset"] == ds and index["image_size"] == 256
    cases_seen = {}
    for split in SPLITS:
        sp, entry = td.split(split), index["splits"][split]
        assert len(sp) == entry["count"] == e.cases[split] * e.per_case, split
        assert sp.images.dtype == np.float32 and sp.images.shape == (len(sp), 3, OUT, OUT)
        assert sp.masks.dtype == np.uint8 and sp.masks.shape == (len(sp), OUT, OUT)
        assert sp.images.min() >= -1 and sp.images.max() <= 1
        cases = {i.split(":")[0] for i in entry["ids"]}
        assert len(cases) == e.cases[split] and set(entry["cases"]) == cases
        cases_seen[split] = cases
        for (r, c), cls in probes(n):
            assert (sp.masks[:, int(r * OUT), int(c * OUT)] == cls).all(), (split, (r, c), cls)
        core = [sp.images[:, :, int(r * OUT), int(c * OUT)] for r, c in CORE_PROBES]
        base = [sp.images[:, :, int(r * OUT), int(c * OUT)] for r, c in BASE_PROBES]
        for fg, bg in zip(core, base):
            if e.ct:   # [-100, 240] HU window: -1000 HU -> -1, 70 HU -> 170/340 of the range -> 0
                assert np.allclose(bg, -1.0)
                assert np.allclose(fg, (CT_FG + 100) / 340 * 2 - 1, atol=0.01)
            elif e.core_rgb is not None:
                assert np.allclose(fg, np.array(e.core_rgb) / 127.5 - 1, atol=e.rgb_tol), fg[0]
                assert np.allclose(bg, np.array(e.base_rgb) / 127.5 - 1, atol=e.rgb_tol), bg[0]
            else:      # MR: bright foreground at the top of the percentile range, background low
                assert (fg > 0.9).all() and (bg < 0).all()
        # index statistics agree with the shards
        assert sum(entry["class_pixels"]) == entry["count"] * 256 * 256
        assert entry["class_images"][n] == entry["count"]
    assert not (cases_seen["train"] & cases_seen["val"] or cases_seen["train"] & cases_seen["test"]
                or cases_seen["val"] & cases_seen["test"])
    assert np.array_equal(np.unique(td.train.masks), np.arange(n + 1))


def test_dataset_specific_mappings(tmp_path):
    # BUSI: the extra "_mask_1" lesion (bottom-right corner) is OR-ed into 'benign (2)'
    _, dst = run("busi", tmp_path / "busi")
    td, idx = load_prepared(dst, OUT), read_index(dst)
    for split in SPLITS:
        for i, pid in enumerate(idx["splits"][split]["ids"]):
            corner = td.split(split).masks[i, OUT - 1, OUT - 1]
            assert corner == (1 if pid.endswith("benign (2).png") else 0), pid
    assert not any("normal" in i for s in SPLITS for i in idx["splits"][s]["ids"])
    # M&Ms: both ED and ES frames sliced; only vendor A's cases
    _, dst = run("mms", tmp_path / "mms")
    ids = [i for s in SPLITS for i in read_index(dst)["splits"][s]["ids"]]
    assert sum(":ED:" in i for i in ids) == sum(":ES:" in i for i in ids) == 8
    assert not any(i.startswith("A4B4C4") for i in ids)
    # official split keeps the official test cases (GlaS: testA_* and testB_*)
    _, dst = run("glas", tmp_path / "glas")
    test_ids = read_index(dst)["splits"]["test"]["ids"]
    assert sorted(Path(i).name for i in test_ids) == ["testA_1.bmp", "testA_2.bmp", "testB_1.bmp"]


def test_same_seed_same_split(tmp_path):
    _, a = run("ddti", tmp_path / "a")
    _, b = run("ddti", tmp_path / "b")
    assert read_index(a)["splits"] == read_index(b)["splits"]


def test_catalog_cards_match_preparers():
    for task, (ds, _) in PREPARE_OPTIONS.items():
        card = load_card(CARDS / f"{task}.yaml")
        assert card.dataset == ds, task
        assert [c.lower() for c in card.classes] == [c.lower() for c in PREPARERS[ds].classes], task
    assert set(PREPARERS) == set(FIXTURES) == {d for d, _ in PREPARE_OPTIONS.values()}


def test_catalog_task_name_uses_catalog_card_and_options(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    FIXTURES["fundus"](src)
    dst = prepare("fundus-a", src, tmp_path / "out", progress=False)
    assert read_index(dst)["options"] == {"site": "1"} and load_prepared(dst, OUT).card.name == "fundus-a"
    with pytest.raises(DataError, match="Domain4"):   # fundus-c is the Canon CR-2 site = DoFE Domain4
        prepare("fundus-c", src, tmp_path / "c", progress=False)
    assert resolve("brats", {"sequence": "T1CE"})[1] == "brats-t1ce"
    with pytest.raises(ValueError, match="sequence"):
        resolve("brats", {})
    with pytest.raises(ValueError, match="'A', 'B', 'C', 'D'"):
        resolve("mms", {"vendor": "E"})
    with pytest.raises(ValueError, match="conflicting"):
        resolve("brats-t1", {"sequence": "t2"})
    with pytest.raises(ValueError, match="unknown dataset"):
        resolve("lung", {})


# ------------------------------------------------------------------ bad input

def _relabel_msd(value=None, shape=None, nan=False):
    def edit(src):
        d = src / "Task07_Pancreas"
        lab_path, img_path = d / "labelsTr" / "pancreas_002.nii.gz", d / "imagesTr" / "pancreas_002.nii.gz"
        lab = np.asarray(nib.load(str(lab_path)).dataobj)
        if value is not None:
            lab[12, 12, 3] = value
            save_nifti(lab, lab_path)
        if shape is not None:
            save_nifti(np.zeros(shape, np.uint8), lab_path)
        if nan:
            img = nib.load(str(img_path)).get_fdata(dtype=np.float32)
            img[5, 5, 4] = np.nan
            save_nifti(img, img_path)
    return edit


@pytest.mark.parametrize("edit, match", [
    (_relabel_msd(shape=(S, S, 7)), r"labelsTr/pancreas_002.nii.gz: label shape \(24, 24, 7\) does not match"),
    (_relabel_msd(value=3), r"labelsTr/pancreas_002.nii.gz: label value\(s\) \[3\] not in the documented set"),
    (_relabel_msd(nan=True), r"imagesTr/pancreas_002.nii.gz: image contains NaN or Inf"),
])
def test_bad_volumes(tmp_path, edit, match):
    with pytest.raises(DataError, match=match):
        run("msd-pancreas", tmp_path, edit)
    assert_nothing_written(tmp_path)


def _damage(rel: str, how: str):
    def edit(src):
        p = src / rel
        if how == "garbage":
            p.write_bytes(b"\x89PNG but not really")
        elif how == "truncate":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif how == "shrink":
            Image.open(p).resize((S - 4, S - 4)).save(p)
        elif how.startswith("level"):
            arr = np.asarray(Image.open(p)).copy()
            arr[0, 0] = int(how[5:])
            Image.fromarray(arr).save(p)
    return edit


@pytest.mark.parametrize("ds, rel, how, match", [
    ("busi", "Dataset_BUSI_with_GT/malignant/malignant (2)_mask.png", "shrink", r"malignant \(2\)_mask.png: mask size"),
    ("goals", "Train/Layer_Masks/0004.png", "level50", r"0004.png: label value\(s\) \[50\] not in the documented set"),
    ("segpc", "validation/y/100_2.bmp", "level30", r"100_2.bmp: label value\(s\) \[30\]"),
    ("isic18", "ISIC2018_Task1_Test_GroundTruth/ISIC_Te00000_segmentation.png", "level128",
     r"ISIC_Te00000_segmentation.png: binary mask has value\(s\) \[128\]"),
    ("ddti", "image/4.PNG", "garbage", r"image/4.PNG: cannot read image"),
    ("qatav2", "QaTa-COV19-v2/Test Set/Images/covid_1.png", "truncate", r"covid_1.png: cannot read image"),
    ("kits", "data/case_00003/imaging.nii.gz", "truncate", r"case_00003/imaging.nii.gz: cannot read"),
    ("promise12", "TrainingData_Part2/Case03.raw", "truncate", r"Case03.raw: truncated MetaImage data"),
    ("brats", "TrainingData/BraTS2021_00002/BraTS2021_00002_t1ce.nii.gz", "garbage",
     r"BraTS2021_00002_t1ce.nii.gz: cannot read NIfTI"),
])
def test_bad_files_name_the_file_and_leave_nothing(tmp_path, ds, rel, how, match):
    with pytest.raises(DataError, match=match):
        run(ds, tmp_path, _damage(rel, how))
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("ds", sorted(FIXTURES))
def test_empty_source(tmp_path, ds):
    (tmp_path / "src").mkdir()
    e = FIXTURES[ds](tmp_path / "unused")
    with pytest.raises(DataError):
        prepare(ds, tmp_path / "src", tmp_path / "out", card=card_from_dict(e.card_dict()), progress=False,
                **e.options)
    assert_nothing_written(tmp_path)


def test_missing_folders_and_rules(tmp_path):
    import shutil
    with pytest.raises(DataError, match="Test Set/Images: missing expected folder"):
        run("qatav2", tmp_path / "q", lambda s: shutil.rmtree(s / "QaTa-COV19-v2" / "Test Set"))
    e = FIXTURES["goals"](tmp_path / "g")
    official = {**e.card_dict(), "split": {"rule": "official"}}
    with pytest.raises(DataError, match="no labelled official test cases"):
        prepare("goals", tmp_path / "g", tmp_path / "g_out", card=card_from_dict(official), progress=False)
    with pytest.raises(DataError, match="missing mask"):
        run("ddti", tmp_path / "d", lambda s: (s / "mask" / "2.PNG").unlink())
    with pytest.raises(DataError, match="no row for M&Ms case"):
        run("mms", tmp_path / "m", lambda s: next(s.glob("*.csv")).write_text(",External code,Vendor,ED,ES\n0,ZZZ,A,0,3\n"))
    with pytest.raises(DataError, match="source folder not found"):
        prepare("ddti", tmp_path / "nowhere", tmp_path / "x",
                card=card_from_dict(Expect("ddti", ("thyroid nodule",), "random", {}).card_dict()))
    for sub in ("q", "g", "d", "m"):
        assert not (tmp_path / sub / "out").exists()
    assert not (tmp_path / "g_out").exists()


def test_card_must_fit_the_dataset(tmp_path):
    e = FIXTURES["ddti"](tmp_path / "src")
    two = {**e.card_dict(), "classes": ["nodule", "cyst"]}
    with pytest.raises(CardError, match="yields 1"):
        prepare("ddti", tmp_path / "src", tmp_path / "out", card=card_from_dict(two))
    other = {**e.card_dict(), "dataset": "busi"}
    with pytest.raises(CardError, match="is for dataset 'busi'"):
        prepare("ddti", tmp_path / "src", tmp_path / "out", card=card_from_dict(other))


def test_existing_dst_is_kept_unless_overwrite(tmp_path):
    e, dst = run("ddti", tmp_path)
    with pytest.raises(FileExistsError):
        prepare("ddti", tmp_path / "src", dst, card=card_from_dict(e.card_dict()), progress=False)
    prepare("ddti", tmp_path / "src", dst, card=card_from_dict(e.card_dict()), seed=5, overwrite=True,
            progress=False)
    assert read_index(dst)["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# ------------------------------------------------------------------ prepared format

def _card(n=2):
    return card_from_dict({"name": "t", "modality": "m", "anatomy": "a", "objective": "o",
                           "classes": [f"c{i}" for i in range(n)]})


def _arrays(n, seed=0, top=2):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8), rng.integers(0, top + 1, (n, 256, 256),
                                                                                   dtype=np.uint8),
            [f"s{seed}_{i}" for i in range(n)])


def test_write_load_round_trip_exact(tmp_path):
    splits = {"train": _arrays(3, 0), "val": _arrays(1, 1), "test": _arrays(2, 2)}
    dst = write_prepared(tmp_path / "p", _card(), splits)
    shard = np.load(dst / "train_images.npy", mmap_mode="r")
    assert isinstance(shard, np.memmap) and shard.shape == (3, 256, 256, 3)
    td = load_prepared(dst, 256)
    img, msk, ids = splits["val"]
    # independent conversion, pixel by pixel for one position: v / 127.5 - 1, channels first
    for ch in range(3):
        assert td.val.images[0, ch, 17, 200] == pytest.approx(img[0, 17, 200, ch] / 127.5 - 1, abs=1e-6)
    assert np.array_equal(td.val.masks, msk) and read_index(dst)["splits"]["val"]["ids"] == ids
    small = load_prepared(dst, 16)
    assert small.test.images.shape == (2, 3, 16, 16) and small.test.masks.max() <= 2
    with pytest.raises(FileExistsError):
        write_prepared(tmp_path / "p", _card(), splits)


def test_writer_rejects_bad_pairs_atomically(tmp_path):
    with pytest.raises(DataError, match="s0_0: mask label 3 outside the card's classes 0..2"):
        write_prepared(tmp_path / "p", _card(), {"train": _arrays(2, 0, top=3), "val": _arrays(1, 1),
                                                 "test": _arrays(1, 2)})
    with pytest.raises(DataError, match=r"split\(s\) \['val'\] received no image-mask pairs"):
        with PreparedWriter(tmp_path / "p", _card()) as w:
            w.add("train", *_arrays(1))
            w.add("test", *_arrays(1))
    with pytest.raises(DataError, match="images must be uint8"):
        with PreparedWriter(tmp_path / "p", _card()) as w:
            w.add("train", np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 64, 64), np.uint8), ["x"])
    with pytest.raises(ValueError, match="missing"):
        write_prepared(tmp_path / "p", _card(), {"train": _arrays(1)})
    assert list(tmp_path.iterdir()) == []


def test_load_prepared_errors_name_the_file(tmp_path):
    splits = {"train": _arrays(2, 0), "val": _arrays(1, 1), "test": _arrays(1, 2)}
    dst = write_prepared(tmp_path / "p", _card(), splits)
    shard = dst / "test_masks.npy"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(DataError, match="test_masks.npy"):
        load_prepared(dst, 32)
    index = json.loads((dst / "index.json").read_text())
    index["version"] = 99
    (dst / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="index.json: prepared format version 99"):
        load_prepared(dst, 32)
    with pytest.raises(DataError, match="no such prepared task directory"):
        load_prepared(tmp_path / "missing", 32)


def test_mhd_reader(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 7
    assert np.array_equal(read_mhd(write_mhd(tmp_path / "le.mhd", arr)), arr)
    assert np.array_equal(read_mhd(write_mhd(tmp_path / "be.mhd", arr, msb=True)), arr)
    # LOCAL: data right after the header, in the same file
    local = tmp_path / "local.mhd"
    local.write_bytes(b"NDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
                      + arr.astype("<i2").tobytes())
    assert np.array_equal(read_mhd(local), arr)
    (tmp_path / "bad.mhd").write_text("NDims = 3\nDimSize = 4 3\nElementType = MET_SHORT\nElementDataFile = x.raw\n")
    with pytest.raises(DataError, match="bad.mhd: DimSize"):
        read_mhd(tmp_path / "bad.mhd")
