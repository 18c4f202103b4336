"""The `c2gr` command line: every subcommand on tiny inputs, and its error messages."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from c2gr_core.interface.cli import main


def test_tasks_lists_catalog_and_streams(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "fundus-a" in out and "promise12" in out and "synthetic-paper-20" in out and "20 tasks" in out


def test_run_then_report(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["run", "--stream", "synthetic-downstream-5", "--method", "finetune", "--out", str(run), "--quiet",
            "--set", "prompt.encoder=hash", "--set", "data.n_train=8", "--set", "data.n_test=4",
            "--set", "data.n_val=2", "--set", "train.epochs=1", "--set", "train.batch_size=8"]
    assert main(args) == 0
    assert "Overall" in capsys.readouterr().out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["prompt"]["encoder"] == "hash" and cfg["data"]["n_train"] == 8
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    for f in ("summary.csv", "summary.md", "final_rows.csv", "matrices.png", "matrices.html"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    assert "finetune" in (tmp_path / "rep" / "summary.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["run", "--stream", "nope", "--method", "finetune", "--out", "x"], "named streams"),
    (["run", "--stream", "synthetic-paper-20", "--method", "nope", "--out", "x"], "choose one of"),
    (["run", "--stream", "synthetic-paper-20", "--method", "c2gr", "--out", "x", "--set", "train.epoch=2"],
     "keys: \\['epochs'"),
    (["run", "--stream", "synthetic-paper-20", "--method", "c2gr", "--out", "x", "--set", "train.epochs=abc"],
     "train.epochs must be an integer"),
    (["report", "does-not-exist"], "not a run directory"),
])
def test_bad_parameters_get_clear_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_set_is_typed_by_the_field_annotation_not_the_current_value():
    from c2gr_core.config import preset
    from c2gr_core.interface.cli import apply_overrides
    bench = preset("bench")
    assert bench.train.amp_bf16 == "auto"  # a str now; false must still be accepted (bool | str)
    assert apply_overrides(preset("bench"), ["train.amp_bf16=false"]).train.amp_bf16 is False
    assert apply_overrides(preset("tiny"), ["train.amp_bf16=auto"]).train.amp_bf16 == "auto"
    cfg = apply_overrides(preset("tiny"), ["train.lr=1", "segmentor.channels=[4,8]", "train.gen_epochs=null"])
    assert type(cfg.train.lr) is float and cfg.segmentor.channels == (4, 8) and cfg.train.gen_epochs is None
    for item, message in [("train.epochs=true", "train.epochs must be an integer"),
                          ("train.epochs=1.5", "train.epochs must be an integer"),
                          ("train.amp_bf16=3", "train.amp_bf16 must be true or false or a string"),
                          ("segmentor.channels=[4,true]", "segmentor.channels must be a list of integers")]:
        with pytest.raises(ValueError, match=re.escape(f"--set {item!r}: {message}")):
            apply_overrides(preset("tiny"), [item])


def test_prepare_a_2d_dataset(tmp_path, capsys):
    # BUSI layout: <class>/<name> (n).png with <name> (n)_mask.png beside it.
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        d = tmp_path / "src" / "Dataset_BUSI_with_GT" / cls
        d.mkdir(parents=True)
        for i in range(1, 5):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(d / f"{cls} ({i}).png")
            m = np.zeros((40, 40), np.uint8)
            m[10:20, 10:20] = 255
            Image.fromarray(m).save(d / f"{cls} ({i})_mask.png")
    assert main(["prepare", "busi", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    assert (tmp_path / "dst" / "index.json").exists()
    assert main(["prepare", "busi", str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_reader_that_leaves_early_is_not_an_error():
    # `c2gr tasks | head -1`: the pipe closes before the listing ends; no "error: Broken pipe".
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m c2gr_core tasks | head -1", shell=True, capture_output=True,
                          text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stdout.startswith("upstream tasks")
    assert "error" not in proc.stderr
