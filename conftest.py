"""Checks on the notebooks that `make test` runs with nbval (issue 11).

nbval executes every notebook cell by cell and keeps what each cell displayed
(`IPyNbCell.test_outputs`); in --nbval-lax mode it compares nothing. Here each cell's outputs are
checked as they come: a cell fails when it shows a figure or table the notebook already showed,
or prints a figure's repr (`notebook.repeated_displays`). The executed notebooks are written to
runs/ci/notebooks/ (CI artefacts; papermill would give the same file, without a second run).

Every test also ends with torch's thread count as it began (`_torch_threads_restored`).
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
EXECUTED = ROOT / "runs" / "ci" / "notebooks"
_executed: dict = {}   # notebook path -> (nbformat notebook being filled, [outputs of code cells run so far])


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test ends with torch's thread count as it began. A benchmark's main() sets the count for its
    process, and in a test that would outlive the test: under `make test`'s two workers of one thread each,
    a worker left at two threads oversubscribed both cores and OpenMP's barriers stalled (the generator
    recipes' smoke test took 235 s instead of 10)."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _nbval_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "test_outputs")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if not _nbval_cell(item):
        return result
    from c2gr_core.interface.notebook import repeated_displays

    path = Path(str(item.parent.path))
    nb, cells = _executed.setdefault(path, (copy.deepcopy(item.parent.nb), []))
    outputs = list(item.test_outputs or [])
    code = [c for c in nb.cells if c.cell_type == "code"]   # nbval numbers code cells only
    code[item.cell_num].outputs = outputs
    cells.append(outputs)
    before = set(repeated_displays(cells[:-1]))
    new = [p for p in repeated_displays(cells) if p not in before]
    if new:
        raise AssertionError(f"{path.name}: shown twice: " + "; ".join(new))
    return result


def pytest_sessionfinish(session):
    if not _executed:
        return
    import nbformat

    EXECUTED.mkdir(parents=True, exist_ok=True)
    for path, (nb, _) in _executed.items():
        nbformat.write(nb, EXECUTED / path.name)
