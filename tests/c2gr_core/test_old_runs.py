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
