"""Contact sheet and mask overlay."""
import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from c2gr_core.viz import CLASS_COLOURS, contact_sheet, overlay
from data_catalog.schema import card_from_dict
from data_catalog.taskdata import Split, TaskData


def _pair(n=2, size=8, label=1):
    images = np.linspace(-1, 1, n * 3 * size * size, dtype=np.float32).reshape(n, 3, size, size)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 2:5, 2:5] = label
    return images, masks


def test_overlay_tints_only_foreground_in_its_class_colour():
    img = np.zeros((3, 4, 4), np.float32)  # mid-grey in [-1, 1]
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1] = 1, 2
    out = overlay(img, mask, alpha=1.0)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out[3, 3] == 128).all()  # background keeps the image: (0 + 1) / 2 * 255
    assert np.allclose(out[0, 0], CLASS_COLOURS[0] * 255, atol=1)
    assert np.allclose(out[1, 1], CLASS_COLOURS[1] * 255, atol=1)
    half = overlay(img, mask, alpha=0.5)[0, 0].astype(float)  # halfway between grey and red
    assert np.allclose(half, (0.5 * 0.5 + 0.5 * CLASS_COLOURS[0]) * 255, atol=1)


def test_overlay_accepts_grey_hwc_and_uint8():
    mask = np.zeros((5, 6), np.uint8)
    grey = overlay(np.full((5, 6), -1.0, np.float32), mask)
    assert grey.shape == (5, 6, 3) and grey.max() == 0
    hwc = overlay(np.full((5, 6, 3), 255, np.uint8), mask, alpha=0.0)
    assert (hwc == 255).all()
    with pytest.raises(ValueError, match="does not match"):
        overlay(np.zeros((3, 5, 5), np.float32), mask)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((3, 5, 6), np.float32), mask, alpha=2)


def test_contact_sheet_has_one_titled_panel_per_task():
    card = card_from_dict({"name": "t", "modality": "m", "anatomy": "a", "objective": "o", "classes": ["x"],
                           "display_name": "Task T"})
    images, masks = _pair()
    task = TaskData(card, Split(images, masks), Split(images, masks), Split(images, masks))
    tasks = [task, ("raw one", *_pair(label=2)), ("raw two", *_pair(n=1))]
    fig = contact_sheet(tasks, n_per_task=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["Task T", "raw one", "raw two"]
    # Two samples side by side in the first panel, one in the last (that task has only one).
    assert fig.axes[0].images[0].get_array().shape == (8, 16, 3)
    assert fig.axes[2].images[0].get_array().shape == (8, 8, 3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # renders without pyplot / a display
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_contact_sheet_rejects_bad_input():
    with pytest.raises(ValueError, match="no tasks"):
        contact_sheet([])
    with pytest.raises(TypeError, match="TaskData or"):
        contact_sheet([np.zeros(3)])
