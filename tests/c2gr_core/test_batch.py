"""Batch runs of notebooks through papermill, and the stored form of the project's notebooks."""
from __future__ import annotations

import ast
import datetime as dt

import nbformat
import papermill
import pytest
import yaml

from c2gr_core.interface import batch


def _notebook(path, params: str, body: str):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def nb(tmp_path):
    (tmp_path / "src").mkdir()
    return _notebook(tmp_path / "src" / "demo.ipynb",
                     "n = 2\nnames = ['a']\nout_dir = None",
                     "from pathlib import Path\n"
                     "assert n == 3 and names == ['a', 'b'], (n, names)\n"
                     "Path(out_dir, 'fig.png').write_bytes(b'png')\n"
                     "print('ran with', n)")


def test_notebook_parameters_reads_literals_only(tmp_path, nb):
    assert batch.notebook_parameters(nb) == {"n": 2, "names": ["a"], "out_dir": None}
    bad = _notebook(tmp_path / "bad.ipynb", "import os\nx = os.getcwd()", "")
    with pytest.raises(ValueError, match="'x' is not a literal"):
        batch.notebook_parameters(bad)
    none = tmp_path / "none.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), none)
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters', found 0"):
        batch.notebook_parameters(none)


def test_run_notebook_writes_its_own_folder_and_never_the_source(tmp_path, nb):
    source = nb.read_bytes()
    out = batch.run_notebook(nb, {"n": 3, "names": ["a", "b"]}, tag="t1", runs_root=tmp_path / "runs")
    assert out == (tmp_path / "runs" / f"{dt.date.today().isoformat()}_demo_t1").resolve()
    assert nb.read_bytes() == source
    executed = nbformat.read(out / "demo.ipynb", as_version=4)
    texts = [o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("ran with 3" in t for t in texts)
    assert (out / "fig.png").read_bytes() == b"png"                       # out_dir pointed at the folder
    saved = yaml.safe_load((out / "parameters.yaml").read_text())
    assert saved["parameters"] == {"n": 3, "names": ["a", "b"], "out_dir": str(out)} and saved["tag"] == "t1"
    with pytest.raises(FileExistsError, match="another --tag"):
        batch.run_notebook(nb, {"n": 3, "names": ["a", "b"]}, tag="t1", runs_root=tmp_path / "runs")


def test_bad_parameters_fail_before_running(tmp_path, nb):
    root = tmp_path / "runs"
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['m'\]; its parameters: \['n', 'names', 'out_dir'\]"):
        batch.run_notebook(nb, {"m": 1}, runs_root=root)
    with pytest.raises(ValueError, match="tag"):
        batch.run_notebook(nb, {}, tag="../x", runs_root=root)
    params = tmp_path / "p.yaml"
    params.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        batch.run_notebook(nb, params, runs_root=root)
    with pytest.raises(FileNotFoundError, match="not found"):
        batch.run_notebook("no_such_notebook", {}, runs_root=root)
    assert not root.exists()


def test_cli_parses_yaml_values_and_reports_a_failing_cell(tmp_path, nb, capsys):
    params = tmp_path / "p.yaml"
    params.write_text("n: 1\nnames: [a, b]\n")
    rc = batch.main([str(nb), "-f", str(params), "-p", "n", "3", "--tag", "cli", "--runs-root", str(tmp_path / "r")])
    assert rc == 0 and "notebook executed" in capsys.readouterr().out       # -p overrides the file
    rc = batch.main([str(nb), "-p", "n", "4", "-p", "names", "[a, b]", "--tag", "fails", "--runs-root",
                     str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 1 and "AssertionError" in err and "demo.ipynb" in err
    assert (tmp_path / "r" / f"{dt.date.today().isoformat()}_demo_fails" / "demo.ipynb").exists()
    assert batch.main([str(nb), "-p", "bogus", "1", "--runs-root", str(tmp_path / "r")]) == 2


def test_project_notebooks_are_stored_clean_with_literal_parameters():
    paths = sorted(batch.NOTEBOOK_DIR.glob("*.ipynb"))
    assert len(paths) >= 6, paths
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name}: outputs or counts stored"
        params = batch.notebook_parameters(path)            # exactly one tagged cell, literals only
        assert "out_dir" in params and params["out_dir"] is None, path.name
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        assert tagged[0] <= 4, f"{path.name}: the parameters cell should be near the top"
        # No "=" inside parameter comments: papermill's parameter parser skips such lines.
        for line in nb.cells[tagged[0]].source.splitlines():
            assert line.count("=") <= 1, f"{path.name}: {line!r}"
        for c in code:                                     # every cell at least parses
            ast.parse(c.source)
        # papermill's own parser sees every parameter: otherwise it warns "Passed unknown parameter"
        # for each one a run passes (it does so for the `int | None` annotation spelling).
        assert set(papermill.inspect_notebook(str(path))) == set(params), path.name
