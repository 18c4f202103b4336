"""Reading run directories back: tables, tasks, and a method rebuilt from a checkpoint."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from c2gr_core.losses import task_dsc
from c2gr_core.experiment.runs import load_method, load_run_task, read_matrix, read_run
from c2gr_core.experiment.runner import evaluate

from tiny_runs import STREAM, small_cfg, tiny_runs


@pytest.fixture(scope="module")
def runs():
    return tiny_runs()


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_read_run_tables(runs):
    info = read_run(runs["c2gr"])
    assert info["method"] == "c2gr" and info["tasks"] == ["fundus-a", "mms-a"]
    assert info["config"] == small_cfg() and info["completed_rounds"] == 2
    D = info["matrix"]
    assert D.shape == (2, 2) and np.isnan(D[0, 1]) and not np.isnan(D[1]).any()
    # matrix.csv and metrics.json are written separately: the final row must agree.
    assert D[1].tolist() == pytest.approx([info["metrics"]["final_row"][t] for t in info["tasks"]])
    assert info["metrics"]["overall"] == pytest.approx(D[1].mean())
    assert set(info["per_class"]["1"]["mms-a"]) == {"left ventricle", "myocardium", "right ventricle"}
    assert [t["task"] for t in info["timings"]] == info["tasks"]


def test_read_matrix_by_hand(tmp_path):
    f = tmp_path / "matrix.csv"
    f.write_text("round,a,b,c\na,0.5,,\nb,0.25,0.75,\n")   # an interrupted 3-task run: row c missing
    D = read_matrix(f, ["a", "b", "c"])
    np.testing.assert_array_equal(np.nan_to_num(D, nan=-1), [[0.5, -1, -1], [0.25, 0.75, -1], [-1, -1, -1]])
    with pytest.raises(ValueError, match="header"):
        read_matrix(f, ["a", "b"])


@pytest.mark.parametrize("method", ["c2gr", "joint"])
def test_load_method_reproduces_the_last_matrix_row(runs, method):
    run = runs[method]
    before = _files(run)
    m = load_method(run)
    assert m.name == method and m.loaded_from["round"] == 1
    D = read_run(run)["matrix"]
    for j, card in enumerate(m.ctx.cards):
        dsc = evaluate(m, load_run_task(run, j), j)
        assert task_dsc(torch.from_numpy(dsc), card.n_classes) == pytest.approx(D[1, j], abs=1e-9)
    assert _files(run) == before   # reading a run never writes into it


def test_load_method_of_an_earlier_round(runs):
    run = runs["c2gr"]
    m = load_method(run, round=0)
    D = read_run(run)["matrix"]
    dsc = evaluate(m, load_run_task(run, "fundus-a"), 0)
    assert task_dsc(torch.from_numpy(dsc), 2) == pytest.approx(D[0, 0], abs=1e-9)


def test_load_run_task_matches_the_stream_data(runs):
    a = load_run_task(runs["joint"], 1)
    b = load_run_task(runs["joint"], "mms-a")
    assert a.card.name == "mms-a" and a.card.n_classes == 3
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert len(a.test) == small_cfg().data.n_test
    with pytest.raises(ValueError, match="not in the stream"):
        load_run_task(runs["joint"], "busi")


def test_bad_run_directories(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_method(tmp_path / "empty")
    with pytest.raises(ValueError, match="outside the finished rounds"):
        load_method(runs["joint"], round=2)
    cut = tmp_path / "cut"
    shutil.copytree(runs["joint"], cut)
    (cut / "checkpoints" / "round_00.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"round_00.pt does not exist; checkpoints kept: rounds \[1\]"):
        load_method(cut, round=0)
    assert STREAM == read_run(cut)["entries"]
