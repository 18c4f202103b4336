"""The replay inspector widget and its static gallery, on a hand-made run directory whose replayed
pairs are known values (no training needed)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from c2gr_core.config import preset
from c2gr_core.analysis.quality import CORRESPONDENCE_LABEL, FEATURE_FID_LABEL
from c2gr_core.experiment.runs import load_run_task
from c2gr_core.interface.viz import mask_rgb, overlay
from c2gr_core.interface.widgets import ReplayInspector, replay_inspector, static_gallery

TASKS = ["fundus-a", "mms-a", "busi"]
SIZE = 16
N_PAIRS = {(1, 0): 3, (2, 0): 2, (2, 1): 4}   # (round, task) -> pairs kept on disk


def _pairs(r: int, j: int, n: int):
    """Distinct, recognisable pairs: pair i of (r, j) is a constant image and one labelled square."""
    images = np.stack([np.full((3, SIZE, SIZE), -0.9 + 0.1 * (4 * r + j) + 0.02 * i, np.float32) for i in range(n)])
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        masks[i, i:i + 4, j:j + 5] = 1 + (i % 2)
    return images, masks


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    cfg = preset("tiny")
    cfg.prompt.encoder = "hash"
    cfg.data.image_size, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = SIZE, 4, 2, 3
    cfg.save(out / "config.json")
    (out / "stream.json").write_text(json.dumps({"entries": [f"synthetic:{t}" for t in TASKS], "tasks": TASKS,
                                                 "method": "c2gr"}))
    (out / "progress.json").write_text(json.dumps({"completed_rounds": 3, "total_rounds": 3}))
    for (r, j), n in N_PAIRS.items():
        d = out / "samples" / f"round_{r:02d}"
        d.mkdir(parents=True, exist_ok=True)
        images, masks = _pairs(r, j, n)
        np.savez_compressed(d / f"task_{j:02d}.npz", images=images, masks=masks)
    return out


def _decoded(png: bytes, scale: int) -> np.ndarray:
    big = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return big[::scale, ::scale]


def test_inspector_starts_on_the_last_round_and_shows_the_stored_pair(run):
    ins = replay_inspector(run)
    assert isinstance(ins, ReplayInspector)
    assert ins.round.value == 2 and [v for _, v in ins.round.options] == [1, 2]
    assert [v for _, v in ins.task.options] == [0, 1] and ins.task.value == 0
    assert (ins.sample.min, ins.sample.max) == (1, N_PAIRS[(2, 0)])   # 1-based, like the caption "pair i/n"
    x, y = _pairs(2, 0, N_PAIRS[(2, 0)])
    assert "pair 1/2" in ins.info.value
    np.testing.assert_array_equal(ins.shown["replayed_pair"][0], x[0])
    np.testing.assert_array_equal(ins.shown["replayed_pair"][1], y[0])
    expected = overlay(x[0], y[0], ins.opacity.value)
    np.testing.assert_array_equal(ins.shown["replayed"], expected)
    scale = ins.shown["scale"]
    assert scale > 1   # 16 px pairs are upscaled for the screen, by whole pixels
    np.testing.assert_array_equal(_decoded(ins.replayed_image.value, scale), expected)


def test_controls_change_what_is_displayed(run):
    ins = replay_inspector(run)
    before = ins.replayed_image.value

    ins.task.value = 1                                   # another past task: its own file and pair count
    x, y = _pairs(2, 1, N_PAIRS[(2, 1)])
    assert ins.shown["task"] == 1 and ins.sample.max == N_PAIRS[(2, 1)]
    assert ins.replayed_image.value != before

    ins.sample.value = 4                                 # the slider picks the pair (1-based)
    assert ins.shown["index"] == 3 and "pair 4/4" in ins.info.value
    np.testing.assert_array_equal(_decoded(ins.replayed_mask.value, ins.shown["scale"]), mask_rgb(y[3]))
    np.testing.assert_array_equal(ins.shown["replayed"], overlay(x[3], y[3], ins.opacity.value))
    with_mask = ins.replayed_image.value

    ins.overlay.value = False                            # overlay off: the plain image
    np.testing.assert_array_equal(ins.shown["replayed"], overlay(x[3], y[3], 0.0))
    assert ins.replayed_image.value != with_mask
    ins.overlay.value = True
    ins.opacity.value = 1.0                              # full opacity: mask colour replaces the image
    fg = y[3] > 0
    np.testing.assert_array_equal(ins.shown["replayed"][fg], mask_rgb(y[3])[fg])

    ins.round.value = 1                                  # round 1 replayed task 0 only
    assert [v for _, v in ins.task.options] == [0]
    assert ins.shown["round"] == 1 and ins.shown["task"] == 0
    assert ins.sample.max == N_PAIRS[(1, 0)] and ins.shown["index"] < ins.sample.max
    x1, _ = _pairs(1, 0, N_PAIRS[(1, 0)])
    np.testing.assert_array_equal(ins.shown["replayed_pair"][0], x1[ins.shown["index"]])


def test_real_side_is_the_tasks_test_split_and_quality_is_shown(run):
    quality = [{"round": 2, "task": "mms-a", CORRESPONDENCE_LABEL: 0.625, FEATURE_FID_LABEL: 12.5}]
    ins = ReplayInspector(run, quality=quality)
    ins.task.value = 1
    ins.sample.value = 4
    test = load_run_task(run, 1).test
    k = 3 % len(test.images)
    assert ins.shown["real_index"] == k
    np.testing.assert_array_equal(ins.shown["real_pair"][0], np.asarray(test.images[k]))
    np.testing.assert_array_equal(ins.shown["real"], overlay(test.images[k], test.masks[k], ins.opacity.value))
    assert "62.5 %" in ins.info.value and "12.500" in ins.info.value and "mms-a" in ins.info.value
    np.testing.assert_array_equal(_decoded(ins.real_mask.value, ins.shown["scale"]), mask_rgb(test.masks[k]))
    classes = load_run_task(run, 1).card.classes          # the legend names the task's classes
    assert classes and all(c in ins.legend.value for c in classes)
    ins.task.value = 0                                   # no quality row for fundus-a: no numbers shown
    assert "62.5 %" not in ins.info.value and "fundus-a" in ins.info.value


def test_static_gallery_rows_are_the_replayed_tasks(run):
    quality = [{"round": 2, "task": "fundus-a", CORRESPONDENCE_LABEL: 0.5, FEATURE_FID_LABEL: 3.0}]
    fig = static_gallery(run, n=2, quality=quality)
    assert len(fig.axes) == 4                            # 2 past tasks x (real, replayed)
    assert fig.axes[1].get_title() == "replayed in round 2"
    assert "DSC 50.0 %" in fig.axes[0].get_ylabel() and fig.axes[2].get_ylabel() == "mms-a"
    x, y = _pairs(2, 1, N_PAIRS[(2, 1)])
    panel = fig.axes[3].images[0].get_array()
    np.testing.assert_array_equal(panel[SIZE:, :SIZE], mask_rgb(y[0]))
    assert len(static_gallery(run, round=1).axes) == 2
    with pytest.raises(ValueError, match="rounds with samples"):
        static_gallery(run, round=0)


def test_a_run_without_replay_is_refused(run):
    import shutil

    shutil.rmtree(run / "samples")
    with pytest.raises(ValueError, match="no replayed samples"):
        replay_inspector(run)
