import numpy as np
import pytest

from data_catalog.schema import DataError
from data_catalog.taskdata import (holdout_indices, random_split_indices, resize_pair, to_model_image,
                                   validate_split)


def test_to_model_image_scales_uint8_and_replicates_grey():
    grey = np.array([[0, 255], [127, 255]], dtype=np.uint8)
    out = to_model_image(grey)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    assert out[0, 0, 0] == -1.0 and out[0, 0, 1] == 1.0
    assert np.array_equal(out[0], out[2])


def test_to_model_image_rejects_nan_and_bad_shape():
    with pytest.raises(DataError, match="scan.png.*NaN"):
        to_model_image(np.array([[np.nan, 1.0]]), origin="scan.png")
    with pytest.raises(DataError, match="a.png"):
        to_model_image(np.zeros((4, 4, 2), np.uint8), origin="a.png")


def test_resize_keeps_labels_and_range():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[:, 16:48, 16:48] = 2
    x, y = resize_pair(imgs, masks, 32)
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32)
    assert set(np.unique(y)) == {0, 2}  # nearest: no interpolated label 1 appears
    assert (y[:, 8:24, 8:24] == 2).all() and x.min() >= -1 and x.max() <= 1


def test_validate_split_errors_name_origin():
    imgs = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(DataError, match="t/train.*label 3 outside"):
        validate_split(imgs, np.full((2, 8, 8), 3, np.uint8), 2, "t/train")
    with pytest.raises(DataError, match="do not match"):
        validate_split(imgs, np.zeros((2, 8, 9), np.uint8), 2, "t/train")
    with pytest.raises(DataError, match="empty"):
        validate_split(imgs[:0], np.zeros((0, 8, 8), np.uint8), 2, "t/train")
    bad = imgs.copy(); bad[0, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match="NaN or Inf"):
        validate_split(bad, np.zeros((2, 8, 8), np.uint8), 2, "t/train")


def test_splits_are_seeded_disjoint_and_complete():
    a = random_split_indices(20, (0.6, 0.15, 0.25), seed=1)
    b = random_split_indices(20, (0.6, 0.15, 0.25), seed=1)
    c = random_split_indices(20, (0.6, 0.15, 0.25), seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    assert [len(p) for p in a] == [12, 3, 5]
    assert sorted(np.concatenate(a).tolist()) == list(range(20))
    tr, va = holdout_indices(20, 0.15, seed=0)
    assert len(va) == 3 and not set(tr) & set(va)
