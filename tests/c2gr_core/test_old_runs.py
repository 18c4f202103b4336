"""A run directory written before c2gr_core was split into layers (commit 9ac20b0, flat module layout)
still reads, reports, reloads and shows in the replay inspector.

tests/fixtures/run_v0_1 was made by that commit: C2GR on synthetic fundus-a -> busi, tiny preset with
the hash encoder, 8 training pairs, 1 epoch, denoiser and segmentor channels (8, 8, 8), 2 sampler steps,
keep_checkpoints="last" (its own config.json has every setting)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from c2gr_core.analysis.inspection import load_pairs, replay_samples, sample_task_pairs
from c2gr_core.experiment.runner import evaluate
from c2gr_core.experiment.runs import load_method, load_run_task, read_run
from c2gr_core.interface.cli import main
from c2gr_core.interface.widgets import replay_inspector

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "run_v0_1"


@pytest.fixture
def run(tmp_path):
    # A copy: nothing may write into the fixture (load_method must not, but a bug should not dirty git).
    return Path(shutil.copytree(OLD, tmp_path / "run"))


def test_tables_and_report(run, tmp_path, capsys):
    info = read_run(run)
    assert info["tasks"] == ["fundus-a", "busi"] and info["method"] == "c2gr" and info["completed_rounds"] == 2
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "c2gr" in capsys.readouterr().out
    assert (tmp_path / "rep" / "summary.csv").is_file()


def test_the_model_reloads_and_scores_what_the_run_recorded(run):
    m = load_method(run)
    assert m.loaded_from == {"run_dir": str(run), "round": 1}
    D = read_run(run)["matrix"]
    for j in range(2):
        dsc = evaluate(m, load_run_task(run, j), j)
        # The same weights on the same test split; a pixel whose argmax ties may go the other way on
        # another CPU, hence a tolerance rather than equality.
        assert np.nanmean(dsc) == pytest.approx(D[1, j], abs=0.02)


def test_replay_inspector_and_fresh_pairs(run):
    kept = replay_samples(run)
    assert set(kept) == {1} and set(kept[1]) == {0}
    images, masks = load_pairs(kept[1][0])
    assert images.shape[1:] == (3, 32, 32) and masks.shape == images.shape[:1] + (32, 32)
    widget = replay_inspector(run)
    assert widget is not None
    x, y = sample_task_pairs(load_method(run), "fundus-a", 2, seed=0)
    assert x.shape == (2, 3, 32, 32) and y.max() <= 2 and torch.isfinite(torch.from_numpy(x)).all()


def test_live_sampling_in_the_inspector(run, capsys):
    """The inspector's live tab draws new pairs from the run's generator with the chosen sampler,
    steps, seed and count, shows them (image, mask, overlay) and scores them as they come."""
    from c2gr_core.analysis.quality import CORRESPONDENCE_LABEL, FEATURE_FID_LABEL
    from c2gr_core.interface.viz import mask_rgb, overlay
    from c2gr_core.interface.widgets import LIVE_BATCH

    method = load_method(run)
    ins = replay_inspector(run, reference=method, method=method)   # the run scores itself: a stand-in reference
    assert ins.live_image.value == b"" and "draw" in ins.live_info.value
    ins.live_task.value, ins.sampler.value, ins.steps.value, ins.seed.value = 1, "ddpm", 3, 5
    ins.n_draw.value = LIVE_BATCH + 2                   # two batches: the picture and the scores update twice
    ins.draw_button.click()
    live = ins.live
    assert live["error"] is None and (live["task"], live["sampler"], live["steps"]) == (1, "ddpm", 3)
    x, y = live["images"], live["masks"]
    assert x.shape == (LIVE_BATCH + 2, 3, 32, 32) and y.shape == (LIVE_BATCH + 2, 32, 32)
    assert 0 <= live[CORRESPONDENCE_LABEL] <= 1 and live[FEATURE_FID_LABEL] >= 0
    assert f"{100 * live[CORRESPONDENCE_LABEL]:.1f} %" in ins.live_info.value and "busi" in ins.live_info.value
    assert "ddpm-3" in capsys.readouterr().err          # one progress bar over both batches (text tqdm here)
    i = ins.live["index"]
    assert i == LIVE_BATCH                               # the first pair of the last batch is on screen
    ins.live_sample.value = 2                            # 1-based pair slider
    scale = 192 // 32
    from PIL import Image
    import io
    shown = np.asarray(Image.open(io.BytesIO(ins.live_mask.value)).convert("RGB"))[::scale, ::scale]
    np.testing.assert_array_equal(shown, mask_rgb(y[1]))
    shown = np.asarray(Image.open(io.BytesIO(ins.live_overlay.value)).convert("RGB"))[::scale, ::scale]
    np.testing.assert_array_equal(shown, overlay(x[1], y[1], ins.opacity.value))

    again = {k: v for k, v in ins.draw().items()}        # same settings, same seed: the same pairs
    np.testing.assert_array_equal(again["images"], x)
    ins.sampler.value = "ddim"
    assert not np.array_equal(ins.draw()["images"], x)   # the sampler is used

    class NoGenerator:                                   # a method without a generator: the error is shown
        ctx, name = method.ctx, "joint"

        def sample_pairs(self, *a, **k):
            raise TypeError("method 'joint' has no image-mask generator")

    broken = replay_inspector(run, method=NoGenerator())
    broken.draw_button.click()
    assert "no image-mask generator" in broken.live_info.value and not broken.draw_button.disabled
