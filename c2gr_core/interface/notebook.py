"""What every notebook does before its story starts: a config from its parameters, an output
folder, and the stream runs it needs (made on the spot when the user gave none).

Kept here so the notebooks stay thin (docs/design.md, "Notebooks") and so a batch run
(`c2gr_core.interface.batch`) and an interactive session build runs the same way.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from ..config import ExperimentConfig, apply_overrides, preset


def configure(preset_name: str = "tiny", overrides: Mapping | None = None) -> ExperimentConfig:
    """The preset with `overrides` applied: {"section.key": value}, e.g. {"train.epochs": 1}.

    Values are typed like the defaults they replace (the rules of `c2gr run --set`); an unknown
    section or key is a ValueError listing the valid ones.
    """
    cfg = preset(preset_name)
    items = []
    for key, value in (overrides or {}).items():
        items.append(f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return apply_overrides(cfg, items)


def output_dir(out_dir: str | os.PathLike | None, prefix: str = "c2gr-notebook-") -> Path:
    """`out_dir` created if needed; None gives a fresh temporary folder (interactive and nbval
    runs), so a notebook never writes into the source tree unless told where to. The temporary
    folder and the runs made in it are removed when the kernel exits; give an out_dir to keep them."""
    if out_dir is None or str(out_dir) == "":
        tmp = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(shutil.rmtree, tmp, True)
        return tmp
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def ensure_runs(stream, methods: Sequence[str], cfg: ExperimentConfig, root: str | os.PathLike,
                existing: Mapping[str, str | os.PathLike] | None = None, progress: bool = False,
                data_root: str | None = None, keep_checkpoints: str = "last") -> dict[str, Path]:
    """{method: run directory} for every method in `methods` (duplicates once, order kept).

    A method found in `existing` uses that run directory, which must hold a finished run.
    Every other method runs `stream` into root/<method>; a finished run already there with the
    same config and stream is reused, an interrupted one resumed, and one with a different
    config is an error naming its config.json (choose another root). Runs made here keep only
    their last checkpoint unless keep_checkpoints="all" (the notebooks load final models only).
    """
    from ..methods import get_method
    from ..experiment.runs import read_run
    from ..experiment.runner import run_stream

    for m in methods:   # every name checked before the first run starts
        get_method(m)
    existing = dict(existing or {})
    root = Path(root)
    out: dict[str, Path] = {}
    for m in dict.fromkeys(methods):
        if existing.get(m):
            run = Path(existing[m])
            info = read_run(run)
            if info["method"] != m:
                raise ValueError(f"{run}: run_dirs[{m!r}] holds a run of method {info['method']!r}")
            if info["completed_rounds"] < len(info["tasks"]):
                raise ValueError(f"{run}: run_dirs[{m!r}] is unfinished ({info['completed_rounds']}/"
                                 f"{len(info['tasks'])} rounds); resume it with `c2gr run ... --resume`")
            out[m] = run
        else:
            resume = (root / m / "config.json").is_file()  # a run of ours is there: reuse or continue it
            out[m] = run_stream(stream, m, cfg, root / m, resume=resume, progress=progress, data_root=data_root,
                                keep_checkpoints=keep_checkpoints).out_dir
    return out


def _cell(v, digits: int) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.{digits}f}"   # NaN (a task not yet seen) stays empty
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


def table_html(header: Sequence[str], rows: Sequence[Sequence], digits: int = 2, title: str | None = None) -> str:
    """Rows as an HTML table; floats with `digits` decimals, NaN as an empty cell."""
    import html

    header = list(header)
    bad = [i for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise ValueError(f"show_table: row(s) {bad} do not have the {len(header)} columns {header}")
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v, digits))}</td>" for v in r) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def show_table(header: Sequence[str], rows: Sequence[Sequence], out_dir: str | os.PathLike | None = None,
               name: str | None = None, digits: int = 2, title: str | None = None) -> None:
    """Display rows as an HTML table in the notebook (`table_html`) and, with `out_dir`, write
    NAME.csv there (full precision).

    Returns None on purpose: a cell ending in `show_table(...)` would otherwise display the table
    a second time (issue 11).
    """
    import csv

    from IPython.display import HTML, display

    obj = HTML(table_html(header, rows, digits, title))   # checks the rows before anything is written
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / f"{name or 'table'}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(header))
            w.writerows([["" if v is None else v for v in r] for r in rows])
    display(obj)


# ------------------------------------------------------------------ what a notebook displays
# Rich outputs a reader sees as a picture or a table; the same payload twice is the same thing shown twice.
_RICH = ("image/png", "image/svg+xml", "image/jpeg", "text/html", "application/vnd.plotly.v1+json")
# The text a figure or display object prints when it is also the cell's value (`<Figure size ...>`).
_OBJECT_REPRS = ("<Figure size", "<IPython.core.display.", "Figure({", "<matplotlib.")


def repeated_displays(cells: Sequence[Sequence[Mapping]]) -> list[str]:
    """What an executed notebook shows twice: `cells` are the cells' output lists (nbformat
    outputs, e.g. `[c.outputs for c in nb.cells if c.cell_type == "code"]`).

    Reports every rich output (image, HTML table, plotly figure) whose payload already appeared in
    an earlier output of the notebook, and every cell value printed as an object's text repr (a
    figure returned by the last line after it was displayed). Empty when all is shown once.
    """
    import hashlib

    seen: dict[str, int] = {}
    problems = []
    for k, outputs in enumerate(cells):
        for out in outputs:
            data = out.get("data") or {}
            for mime in _RICH:
                if mime not in data:
                    continue
                payload = data[mime]
                text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
                key = mime + ":" + hashlib.sha1(text.encode()).hexdigest()
                if key in seen:
                    problems.append(f"code cell {k} displays the same {mime} as code cell {seen[key]}")
                else:
                    seen[key] = k
                break   # one payload per output: its richest form
            plain = data.get("text/plain", "")
            plain = "".join(plain) if isinstance(plain, list) else plain
            if out.get("output_type") == "execute_result" and plain.lstrip().startswith(_OBJECT_REPRS):
                problems.append(f"code cell {k} ends by printing an object's repr: {plain.strip()[:60]!r}")
    return problems
