"""Run a notebook in batch with papermill, into its own folder under runs/, never over the source.

    python -m c2gr_core.interface.batch notebooks/05_full_stream.ipynb -p n_tasks 6 -p methods "[finetune, c2gr]" --tag six
    python -m c2gr_core.interface.batch 05_full_stream -f params.yaml --tag paper

writes runs/<YYYY-MM-DD>_<notebook stem>_<tag>/:
    <stem>.ipynb        the executed notebook (outputs included)
    parameters.yaml     the parameters it ran with (out_dir included)
    *.png, *.html       the figures the notebook saves into its out_dir
    runs/<method>/      stream runs the notebook made (config.json, matrix.csv, metrics.json, ...)

Every notebook has an `out_dir` parameter; it is set to this folder unless given. Parameter
values on the command line are YAML (`-p n 3`, `-p methods "[a, b]"`, `-p run_dir null`), and
names the notebook's `parameters` cell does not define are refused before anything runs.
"""
from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Mapping

import yaml

from .runtime import use_offline_environment

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"   # the source checkout's notebooks
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class NotebookFailed(RuntimeError):
    """A cell of a batch-run notebook raised; `out` is the folder holding the executed notebook."""

    def __init__(self, out: Path, message: str):
        super().__init__(message)
        self.out = out


def find_notebook(notebook: str | os.PathLike) -> Path:
    """A path to an .ipynb, or the stem / file name of one in the project's notebooks/ folder."""
    p = Path(notebook).expanduser()
    if p.is_file():
        return p.resolve()
    for cand in (NOTEBOOK_DIR / p.name, NOTEBOOK_DIR / f"{p.name}.ipynb"):
        if str(notebook) == p.name and cand.is_file():
            return cand
    known = sorted(q.stem for q in NOTEBOOK_DIR.glob("*.ipynb")) if NOTEBOOK_DIR.is_dir() else []
    raise FileNotFoundError(f"notebook {str(notebook)!r} not found; give a path or one of {known}")


def _parameter_nodes(path: Path) -> list[ast.stmt]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    return ast.parse(cells[0].source).body


def notebook_parameter_types(path: Path) -> dict[str, str]:
    """The annotations of the parameters cell (`n_tasks: Optional[int] = None`), as source text."""
    return {n.target.id: ast.unparse(n.annotation) for n in _parameter_nodes(path)
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


# Annotations in the typing spelling (`Optional[int]`, `Union[str, list]`): papermill's parameter
# parser reads those and warns "unknown parameter" on the `int | None` spelling.
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "None": None,
          "Optional": typing.Optional, "Union": typing.Union}


def _fits(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    hint = origin or hint  # list[str] -> list: the items are the notebook's business
    if hint in (int, float):  # YAML `true` is not a number
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_parameter_types(src: Path, values: Mapping, defaults: Mapping) -> None:
    """Refuse a value whose type is not the parameter's: its annotation in the parameters cell, or
    else the type of its default (a None default without annotation accepts anything)."""
    annotations = notebook_parameter_types(src)
    for name, value in values.items():
        if name in annotations:
            try:
                hint = eval(annotations[name], {"__builtins__": {}}, dict(_TYPES))  # noqa: S307 - the notebook's own source
            except Exception:  # noqa: BLE001 - an annotation this check cannot read is not checked
                continue
            want = annotations[name]
        elif defaults.get(name) is not None:
            hint = type(defaults[name])
            want = f"{hint.__name__} (like its default {defaults[name]!r})"
        else:
            continue
        if not _fits(value, hint):
            raise ValueError(f"{src.name}: parameter {name!r} must be {want}, got {value!r}")


def notebook_parameters(path: Path) -> dict:
    """Names and default values of the notebook's cell tagged `parameters` (literal assignments)."""
    out = {}
    for node in _parameter_nodes(path):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = ast.literal_eval(node.value) if node.value is not None else None
                except ValueError as e:
                    raise ValueError(f"{path}: parameter {t.id!r} is not a literal (the parameters cell holds "
                                     f"literal assignments only; derive values in the next cell)") from e
    return out


def load_params(params: Mapping | str | os.PathLike | None) -> dict:
    """A parameter mapping, or the path of a YAML file holding one."""
    if params is None:
        return {}
    if isinstance(params, Mapping):
        return dict(params)
    path = Path(params).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"parameter file {path}: cannot read YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"parameter file {path}: expected a mapping of parameter names to values, "
                         f"got {type(data).__name__}")
    return data


def run_notebook(notebook: str | os.PathLike, params: Mapping | str | os.PathLike | None = None, tag: str = "run",
                 runs_root: str | os.PathLike = "runs", date: str | None = None, kernel_name: str | None = None,
                 progress: bool = False) -> Path:
    """Execute `notebook` with `params` (dict or YAML path) into runs_root/<date>_<stem>_<tag>/.

    The folder must not exist yet (pick another tag); the source notebook is only read. The
    notebook runs with its own folder as working directory, as under nbval and JupyterLab.
    Returns the output folder; on a failing cell papermill's error is raised after the partly
    executed notebook has been written there.
    """
    import papermill as pm

    src = find_notebook(notebook)
    if not _TAG.match(tag or ""):
        raise ValueError(f"tag {tag!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    values = load_params(params)
    defaults = notebook_parameters(src)
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"{src.name}: unknown parameter(s) {unknown}; its parameters: {sorted(defaults)}")
    check_parameter_types(src, values, defaults)
    date = date or _dt.date.today().isoformat()
    out = (Path(runs_root).expanduser() / f"{date}_{src.stem}_{tag}").resolve()
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another --tag")
    if src.parent.resolve() == out or out in src.resolve().parents:
        raise ValueError(f"output folder {out} would hold the source notebook {src}")
    out.mkdir(parents=True)
    if "out_dir" in defaults and values.get("out_dir") in (None, ""):
        values["out_dir"] = str(out)
    (out / "parameters.yaml").write_text(yaml.safe_dump({"notebook": str(src), "tag": tag, "parameters": values},
                                                        sort_keys=False))
    try:
        pm.execute_notebook(str(src), str(out / src.name), parameters=values, cwd=str(src.parent),
                            kernel_name=kernel_name, progress_bar=progress, report_mode=False)
    except pm.PapermillExecutionError as e:
        raise NotebookFailed(out, f"{src.name}: cell {e.exec_count} failed ({e.ename}: {e.evalue}); "
                                  f"the executed notebook is {out / src.name}") from e
    return out


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The batch arguments, for this module's entry point and for `c2gr notebook` alike."""
    p.add_argument("notebook", help="path to an .ipynb, or the name of one in notebooks/ (e.g. 05_full_stream)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="a parameter; VALUE is YAML (3, 0.5, true, null, '[a, b]', '{k: v}'); repeatable")
    p.add_argument("-f", "--params-file", default=None, help="YAML file of parameters (-p wins over it)")
    p.add_argument("--tag", default="run", help="suffix of the output folder name (default: run)")
    p.add_argument("--runs-root", default="runs", help="where the output folder is made (default: ./runs)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    p.add_argument("--progress", action="store_true", help="show papermill's cell progress bar")
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="python -m c2gr_core.interface.batch", description="run a notebook with papermill into runs/<date>_<name>_<tag>/"))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the notebook named by parsed `add_arguments` arguments; 0 done, 1 a cell failed, 2 bad input."""
    use_offline_environment(headless=True)
    try:
        params = load_params(args.params_file)
        params.update({k: _parse_value(v) for k, v in args.param})
        out = run_notebook(args.notebook, params, tag=args.tag, runs_root=args.runs_root, kernel_name=args.kernel,
                           progress=args.progress)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"c2gr notebook: error: {e}", file=sys.stderr)
        return 2
    except NotebookFailed as e:
        print(f"c2gr notebook: {e}", file=sys.stderr)
        return 1
    print(f"notebook executed -> {out}")
    print(json.dumps(sorted(p.name for p in out.iterdir())))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
