"""The stream runner: artifacts, resume after an interruption, data isolation, bad parameters."""
import json

import numpy as np
import pytest

from c2gr_core.training.access import DataIsolationError
from c2gr_core.methods import register
from c2gr_core.methods.finetune import FineTune
from c2gr_core.experiment.runner import run_stream
from tiny_runs import small_cfg

STREAM = ["synthetic:fundus-a", "synthetic:mms-a", "synthetic:busi"]




def test_run_directory_holds_every_artifact(tmp_path):
    r = run_stream(STREAM, "c2gr", small_cfg(), tmp_path / "run", progress=False)
    out = tmp_path / "run"
    for f in ("config.json", "stream.json", "matrix.csv", "metrics.json", "per_class.json", "timings.json",
              "environment.json", "progress.json", "checkpoints/round_02.pt", "samples/round_02/task_01.npz"):
        assert (out / f).exists(), f
    assert not (out / "work").exists()  # replay shards are scratch, removed at the end
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and m["privacy_preserving"] and m["learnable_params"] > 0
    assert np.isnan(r.matrix[0, 1]) and not np.isnan(r.matrix[2]).any()
    assert json.loads((out / "timings.json").read_text())[2]["replay_pairs"] == 16  # 8 per past task
    with np.load(out / "samples/round_02/task_00.npz") as s:
        assert s["images"].shape[1:] == (3, 32, 32) and s["masks"].max() <= 2


def test_interrupted_run_resumes_to_the_same_matrix(tmp_path):
    full = run_stream(STREAM, "c2gr", small_cfg(), tmp_path / "full", progress=False).matrix

    class Crash(RuntimeError):
        pass

    def crash_in_round_2(event, trainer):
        if event == "on_step_end" and trainer.step == 1:
            raise Crash

    run_stream(STREAM, "c2gr", small_cfg(), tmp_path / "cut", progress=False, max_rounds=2)
    # Re-running round 3 dies mid-training: the directory must still say two rounds are done.
    with pytest.raises(Crash):
        run_stream(STREAM, "c2gr", small_cfg(), tmp_path / "cut", progress=False, resume=True,
                   callbacks=[crash_in_round_2])
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["completed_rounds"] == 2
    resumed = run_stream(STREAM, "c2gr", small_cfg(), tmp_path / "cut", progress=False, resume=True).matrix
    np.testing.assert_array_equal(np.nan_to_num(resumed, nan=-1), np.nan_to_num(full, nan=-1))


def test_existing_run_needs_resume_and_same_config(tmp_path):
    run_stream(STREAM[:1], "finetune", small_cfg(), tmp_path / "r", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        run_stream(STREAM[:1], "finetune", small_cfg(), tmp_path / "r", progress=False)
    other = small_cfg()
    other.train.lr = 1.0
    with pytest.raises(ValueError, match="config"):
        run_stream(STREAM[:1], "finetune", other, tmp_path / "r", progress=False, resume=True)


@register("test-peeks-at-the-past")
class PeeksAtThePast(FineTune):
    def before_round(self, t, data):
        if t > 0:
            data.train(t - 1)


@register("test-peeks-at-test")
class PeeksAtTest(FineTune):
    def before_round(self, t, data):
        data.split(t, "test")


def test_past_real_data_is_unreadable(tmp_path):
    with pytest.raises(DataIsolationError, match="past round"):
        run_stream(STREAM[:2], "test-peeks-at-the-past", small_cfg(), tmp_path / "a", progress=False)
    with pytest.raises(DataIsolationError, match="test splits"):
        run_stream(STREAM[:1], "test-peeks-at-test", small_cfg(), tmp_path / "b", progress=False)


def test_unknown_method_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="finetune"):
        run_stream(STREAM, "no-such-method", small_cfg(), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
