"""The user task-folder loader (docs/design.md): layouts, values, seeded splits and bad input."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from data_catalog.folder import DataWarning, load_task_folder
from data_catalog.schema import CardError, DataError

CARD = {"name": "knee", "modality": "MR", "anatomy": "knee", "objective": "cartilage and bone segmentation",
        "classes": ["cartilage", "bone"]}


def _write_pair(split_dir: Path, stem: str, index: int, hw=(12, 10)):
    """Image pixel value 10*index identifies the pair after loading; mask has labels 0, 1, 2."""
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "masks").mkdir(parents=True, exist_ok=True)
    h, w = hw
    Image.fromarray(np.full((h, w, 3), 10 * index, np.uint8)).save(split_dir / "images" / f"{stem}.png")
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2, : w // 2] = 1
    mask[h // 2:, w // 2:] = 2
    Image.fromarray(mask).save(split_dir / "masks" / f"{stem}.png")


def make_task(root: Path, splits=("train",), n=(20,), card=CARD, flat=False, hw=(12, 10)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "card.yaml").write_text(yaml.safe_dump(card))
    k = 0
    for split, count in zip(splits, n):
        for i in range(count):
            _write_pair(root if flat else root / split, f"{split}_{i:03d}", k, hw)
            k += 1
    return root


def _ids(split) -> list[int]:
    """Recover each pair's index from its pixel value (uint8 v -> v/127.5 - 1)."""
    return [int(round((img[0, 0, 0] + 1) * 127.5 / 10)) for img in split.images]


def test_loads_with_values_and_shapes(tmp_path):
    root = make_task(tmp_path / "t", ("train", "val", "test"), (4, 2, 3), hw=(8, 8))
    data = load_task_folder(root, image_size=8, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 3)
    assert data.card.name == "knee" and data.card.n_classes == 2
    assert data.train.images.shape == (4, 3, 8, 8) and data.train.images.dtype == np.float32
    assert data.train.masks.shape == (4, 8, 8) and data.train.masks.dtype == np.uint8
    # uint8 v maps to v / 127.5 - 1 (hand-computed for pair 3: 30 -> -0.7647)
    assert np.allclose(data.train.images[3], 30 / 127.5 - 1)
    expected = np.zeros((8, 8), np.uint8)
    expected[:4, :4], expected[4:, 4:] = 1, 2
    assert all((m == expected).all() for m in data.test.masks)
    assert _ids(data.val) == [4, 5] and _ids(data.test) == [6, 7, 8]


def test_resizes_non_square_and_keeps_labels(tmp_path):
    root = make_task(tmp_path / "t", ("train", "val", "test"), (3, 1, 1), hw=(20, 14))
    with pytest.warns(DataWarning, match="not square"):
        data = load_task_folder(root, image_size=16, seed=0)
    assert data.train.images.shape == (3, 3, 16, 16)
    assert data.train.images.min() >= -1 and data.train.images.max() <= 1
    assert set(np.unique(data.train.masks)) == {0, 1, 2}


@pytest.mark.parametrize("flat", [False, True])
def test_random_split_60_15_25_deterministic(tmp_path, flat):
    root = make_task(tmp_path / "t", n=(20,), flat=flat)
    a = load_task_folder(root, image_size=8, seed=3)
    assert (len(a.train), len(a.val), len(a.test)) == (12, 3, 5)
    ids = _ids(a.train) + _ids(a.val) + _ids(a.test)
    assert sorted(ids) == list(range(20))  # a partition: every pair exactly once
    b = load_task_folder(root, image_size=8, seed=3)
    assert (_ids(a.train), _ids(a.val), _ids(a.test)) == (_ids(b.train), _ids(b.val), _ids(b.test))
    c = load_task_folder(root, image_size=8, seed=4)
    assert _ids(c.test) != _ids(a.test)


def test_test_without_val_holds_out_15_percent_of_train(tmp_path):
    root = make_task(tmp_path / "t", ("train", "test"), (20, 4))
    data = load_task_folder(root, image_size=8, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (17, 3, 4)  # round(0.15 * 20) = 3
    assert _ids(data.test) == [20, 21, 22, 23]
    assert sorted(_ids(data.train) + _ids(data.val)) == list(range(20))


def test_grey_palette_and_16bit_inputs(tmp_path):
    root = make_task(tmp_path / "t", ("train", "val", "test"), (1, 1, 1), hw=(8, 8))
    img = root / "train" / "images" / "train_000.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(img)  # L -> replicated to 3 channels
    msk = root / "train" / "masks" / "train_000.png"
    p = Image.fromarray(np.eye(8, dtype=np.uint8) * 2, mode="L").convert("P")
    p.save(msk)
    img16 = root / "val" / "images" / "val_000.png"
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)).save(img16)
    with pytest.warns(DataWarning, match="val_000.png is a 16/32-bit image; it is scaled"):
        data = load_task_folder(root, image_size=8, seed=0)
    assert np.allclose(data.train.images[0], 1.0)
    assert (data.train.masks[0] == np.eye(8) * 2).all()
    v = data.val.images[0]
    assert np.isclose(v.min(), -1) and np.isclose(v.max(), 1) and np.allclose(v[0], v[2])


def test_what_the_loader_changes_is_said_once_per_split_naming_a_file(tmp_path, recwarn):
    root = make_task(tmp_path / "t", ("train", "val", "test"), (3, 1, 1), hw=(8, 8))
    for i in range(2):  # two RGBA images with transparent pixels in train, an opaque one in val
        rgba = np.full((8, 8, 4), 200, np.uint8)
        rgba[..., 3] = 0
        Image.fromarray(rgba, mode="RGBA").save(root / "train" / "images" / f"train_00{i}.png")
    opaque = np.full((8, 8, 4), 255, np.uint8)
    Image.fromarray(opaque, mode="RGBA").save(root / "val" / "images" / "val_000.png")
    data = load_task_folder(root, image_size=8, seed=0)
    notes = [str(w.message) for w in recwarn if issubclass(w.category, DataWarning)]
    assert len(notes) == 1, notes  # opaque alpha changes nothing: not reported
    assert "train_000.png (and 1 more in" in notes[0] and "alpha channel is dropped" in notes[0]
    assert np.allclose(data.train.images[:2], 200 / 127.5 - 1)  # the colour, as stored


# ---- bad input: one error naming the exact file ----

def _expect(exc, root, image_size=8, *, names: Path, match: str = ""):
    with pytest.raises(exc, match=match) as info:
        load_task_folder(root, image_size=image_size, seed=0)
    assert str(names) in str(info.value), info.value
    return info.value


def test_image_without_mask(tmp_path):
    root = make_task(tmp_path / "t", n=(5,))
    (root / "train" / "masks" / "train_002.png").unlink()
    _expect(DataError, root, names=root / "train" / "images" / "train_002.png", match="no mask")


def test_mask_without_image(tmp_path):
    root = make_task(tmp_path / "t", n=(5,))
    (root / "train" / "images" / "train_004.png").unlink()
    _expect(DataError, root, names=root / "train" / "masks" / "train_004.png", match="no image")


def test_size_mismatch(tmp_path):
    root = make_task(tmp_path / "t", n=(5,))
    bad = root / "train" / "masks" / "train_001.png"
    Image.fromarray(np.zeros((12, 11), np.uint8)).save(bad)
    _expect(DataError, root, names=bad, match="differs")


@pytest.mark.parametrize("value, hint", [(3, ""), (255, "0/255")])
def test_mask_value_outside_classes(tmp_path, value, hint):
    root = make_task(tmp_path / "t", n=(5,))
    bad = root / "train" / "masks" / "train_003.png"
    m = np.zeros((12, 10), np.uint8)
    m[0, 0] = value
    Image.fromarray(m).save(bad)
    err = _expect(DataError, root, names=bad, match=f"{value}.*outside.*0..2")
    assert hint in str(err)


def test_rgb_mask_rejected(tmp_path):
    root = make_task(tmp_path / "t", n=(5,))
    bad = root / "train" / "masks" / "train_000.png"
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(bad)
    _expect(DataError, root, names=bad, match="single-channel.*RGB")


@pytest.mark.parametrize("content", [b"not a png at all", None])
def test_corrupt_png(tmp_path, content):
    root = make_task(tmp_path / "t", n=(5,))
    bad = root / "train" / "images" / "train_001.png"
    data = bad.read_bytes()
    bad.write_bytes(content if content is not None else data[: len(data) // 2])  # garbage / truncated
    _expect(DataError, root, names=bad, match="unreadable or corrupt")


def test_nan_after_float_conversion(tmp_path, monkeypatch):
    import data_catalog.folder as folder

    root = make_task(tmp_path / "t", n=(5,))
    bad = root / "train" / "images" / "train_002.png"
    real = folder._read_image

    def fake(path, *rest):  # PNG cannot store NaN; simulate a float decode gone wrong for one file
        arr = real(path, *rest).astype(np.float32)
        if path == bad:
            arr[0, 0] = np.nan
        return arr

    monkeypatch.setattr(folder, "_read_image", fake)
    _expect(DataError, root, names=bad, match="NaN")


def test_empty_split_folders(tmp_path):
    root = make_task(tmp_path / "t", ("train", "test"), (5, 2))
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir()
    _expect(DataError, root, names=root / "val", match="empty split")
    root2 = make_task(tmp_path / "u", ("train",), (5,))
    (root2 / "test").mkdir()
    _expect(DataError, root2, names=root2 / "test", match="empty split")


def test_non_png_file_rejected(tmp_path):
    root = make_task(tmp_path / "t", n=(5,))
    bad = root / "train" / "images" / "scan.jpg"
    bad.write_bytes(b"x")
    (root / "train" / "images" / ".DS_Store").write_bytes(b"x")  # hidden files are ignored
    _expect(DataError, root, names=bad, match="not a PNG")


def test_missing_or_bad_card(tmp_path):
    root = make_task(tmp_path / "t", n=(5,))
    card = root / "card.yaml"
    card.unlink()
    _expect(CardError, root, names=card, match="missing")
    card.write_text(yaml.safe_dump({**CARD, "colour": "red"}))
    _expect(CardError, root, names=card, match="unknown field")
    card.write_text(yaml.safe_dump({**CARD, "classes": []}))
    _expect(CardError, root, names=card, match="classes")


def test_layout_errors(tmp_path):
    root = make_task(tmp_path / "t", ("val", "test"), (2, 2))
    _expect(DataError, root, names=root, match="no train/")
    few = make_task(tmp_path / "few", n=(2,))
    _expect(DataError, few, names=few / "train", match="at least 3")
    with pytest.raises(DataError, match="does not exist"):
        load_task_folder(tmp_path / "nothing", image_size=8, seed=0)
