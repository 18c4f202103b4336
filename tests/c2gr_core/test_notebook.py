"""Notebook setup helpers: config from parameters, output folder, runs made or reused, tables."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from c2gr_core.interface import notebook

from tiny_runs import small_cfg


def test_configure_applies_typed_overrides():
    cfg = notebook.configure("tiny", {"train.epochs": 3, "train.lr": 1, "prompt.encoder": "hash",
                                      "segmentor.channels": [4, 8], "train.replay_per_task": 5})
    assert cfg.preset == "tiny" and cfg.train.epochs == 3
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.prompt.encoder == "hash" and cfg.segmentor.channels == (4, 8) and cfg.train.replay_per_task == 5
    assert notebook.configure("cpu").data.image_size == 64
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        notebook.configure("tiny", {"train.epoch": 3})
    with pytest.raises(ValueError, match="train.epochs must be an integer"):
        notebook.configure("tiny", {"train.epochs": "many"})
    with pytest.raises(ValueError, match="unknown preset"):
        notebook.configure("huge")


def test_output_dir_is_temporary_unless_given(tmp_path):
    a, b = notebook.output_dir(None), notebook.output_dir(None)
    assert a.is_dir() and b.is_dir() and a != b
    code = "from c2gr_core.notebook import output_dir; p = output_dir(None); (p / 'f').write_text('x'); print(p)"
    made = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    assert made.name.startswith("c2gr-notebook-") and not made.exists()   # removed when the process ended
    given = notebook.output_dir(tmp_path / "x" / "y")
    assert given == (tmp_path / "x" / "y").resolve() and given.is_dir()


def test_ensure_runs_makes_reuses_and_checks_runs(tmp_path):
    cfg = small_cfg()
    stream = ["synthetic:busi", "synthetic:glas"]
    runs = notebook.ensure_runs(stream, ["finetune", "finetune"], cfg, tmp_path / "runs")
    assert list(runs) == ["finetune"] and runs["finetune"] == tmp_path / "runs" / "finetune"
    assert sorted(p.name for p in (runs["finetune"] / "checkpoints").iterdir()) == ["round_01.pt"]  # the last only
    metrics = runs["finetune"] / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    again = notebook.ensure_runs(stream, ["finetune"], cfg, tmp_path / "runs")
    assert again == runs and metrics.stat().st_mtime_ns == stamp            # finished: reused, not rerun
    # A given run is used as it is, wherever it lies; its method must match.
    assert notebook.ensure_runs(stream, ["finetune"], cfg, tmp_path / "other",
                                existing={"finetune": runs["finetune"]}) == runs
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="holds a run of method 'finetune'"):
        notebook.ensure_runs(stream, ["joint"], cfg, tmp_path / "other", existing={"joint": runs["finetune"]})
    other = small_cfg()
    other.train.epochs = 2
    with pytest.raises(ValueError, match="config"):
        notebook.ensure_runs(stream, ["finetune"], other, tmp_path / "runs")
    # Every method name is checked before anything runs.
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        notebook.ensure_runs(stream, ["joint", "nope"], cfg, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_ensure_runs_refuses_an_unfinished_given_run(tmp_path):
    from c2gr_core.experiment.runner import run_stream

    run = run_stream(["synthetic:busi", "synthetic:glas"], "finetune", small_cfg(), tmp_path / "cut", progress=False,
                     max_rounds=1).out_dir
    with pytest.raises(ValueError, match="unfinished"):
        notebook.ensure_runs(["synthetic:busi", "synthetic:glas"], ["finetune"], small_cfg(), tmp_path,
                             existing={"finetune": run})


def test_show_table_writes_csv_and_formats_html(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: shown.extend(objs))
    rows = [["a", 0.123456, ["x", "y"]], ["b", float("nan"), None]]
    assert notebook.show_table(["name", "value", "list"], rows, tmp_path, "t", digits=3, title="T <1>") is None
    (obj,) = shown   # displayed once, and nothing returned that a cell would display again
    assert obj.data == notebook.table_html(["name", "value", "list"], rows, 3, "T <1>")
    assert "<td>0.123</td>" in obj.data and "<td>x, y</td>" in obj.data and "T &lt;1&gt;" in obj.data
    with (tmp_path / "t.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "value", "list"] and float(rows[1][1]) == 0.123456 and rows[2][2] == ""
    with pytest.raises(ValueError, match="row\\(s\\) \\[0\\]"):
        notebook.show_table(["a", "b"], [[1]])
    json.dumps(obj.data)
