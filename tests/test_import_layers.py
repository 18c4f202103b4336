"""The layers of c2gr_core (docs/design.md, "Layers"): a module imports only layers below its own,
peers of one layer do not import each other, and no import cycle exists. Imports inside functions
count: a lazy import hides a cycle from Python, not from this test."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "c2gr_core"
# Bottom to top. Within a layer each group is independent of the others.
LAYERS = [
    {"config", "losses", "metrics"},
    {"diffusion", "prompting", "models"},
    {"training"},
    {"methods"},
    {"experiment"},
    {"analysis"},
    {"interface"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The c2gr_core modules `name` imports, resolved (relative imports, `from pkg import module`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "c2gr_core"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "c2gr_core":
                mod = node.module
            else:
                continue
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES}
            found |= subs or {mod}
            if len(subs) < len(node.names):
                found.add(mod)
    return found - {name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _group(name: str) -> str | None:
    parts = name.split(".")
    if name == "c2gr_core.__main__":   # `python -m c2gr_core`: the CLI's entry point
        return "interface"
    return parts[1] if len(parts) > 1 else None   # None: the package root


def _layer(group: str) -> int:
    for i, groups in enumerate(LAYERS):
        if group in groups:
            return i
    raise AssertionError(f"c2gr_core.{group} is in no layer of LAYERS: place it there and in docs/design.md")


def test_every_module_has_a_layer():
    for name in MODULES:
        if _group(name) is not None:
            _layer(_group(name))


def test_no_module_imports_upward_or_sideways():
    bad = []
    for name, deps in GRAPH.items():
        g = _group(name)
        if g is None:
            continue
        for dep in deps:
            h = _group(dep)
            if h is None or h == g:
                continue
            if _layer(h) > _layer(g):
                bad.append(f"{name} imports {dep} (layer {_layer(h)} above layer {_layer(g)})")
            elif _layer(h) == _layer(g):
                bad.append(f"{name} imports {dep} (peers of layer {_layer(g)} stay independent)")
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            # A package's __init__ importing its own submodules is how packages re-export: not a cycle.
            if w not in graph or v.startswith(w + ".") or w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_checks_catch_what_they_are_for():
    # The graph walk sees a lazy import and a `from . import module`, and both checks fire.
    assert "c2gr_core.experiment.rundir" in GRAPH["c2gr_core.experiment.runner"]
    assert "c2gr_core.training.distributed" in GRAPH["c2gr_core.methods.base"]
    assert _cycles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == [["a.x", "a.y", "a.z"]]
    fake = dict(GRAPH)
    fake["c2gr_core.training.trainer"] = GRAPH["c2gr_core.training.trainer"] | {"c2gr_core.methods.c2gr"}
    upward = [d for d in fake["c2gr_core.training.trainer"] if _group(d) and _layer(_group(d)) > _layer("training")]
    assert upward == ["c2gr_core.methods.c2gr"]


def test_data_catalog_does_not_import_c2gr_core():
    for path in (ROOT / "data_catalog").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(n.split(".")[0] == "c2gr_core" for n in names), f"{path} imports c2gr_core"


def test_a_segmentor_method_does_not_load_the_generator():
    # A fresh interpreter: what importing FineTune pulls in.
    code = ("import sys, c2gr_core.methods.finetune; "
            "print(sorted(m for m in sys.modules if m.startswith('c2gr_core.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout
    for heavy in ("c2gr_core.diffusion", "c2gr_core.methods.coupled", "c2gr_core.models.denoiser",
                  "c2gr_core.experiment"):
        assert f"'{heavy}" not in loaded, f"importing FineTune loads {heavy}"


@pytest.mark.parametrize("old", sorted(__import__("c2gr_core").MOVED))
def test_old_module_paths_still_import_the_same_module(old):
    import importlib

    import c2gr_core

    new = importlib.import_module(f"c2gr_core.{c2gr_core.MOVED[old]}")
    assert importlib.import_module(f"c2gr_core.{old}") is new
    assert new.__spec__.name == new.__name__   # the alias did not take over the module's identity


@pytest.mark.parametrize("old", ["cli", "batch"])
def test_old_module_paths_still_run_with_dash_m(old):
    """`python -m c2gr_core.cli` ran before the move; it must run the moved module as __main__,
    exit status included (an unknown option is argparse's exit 2)."""
    import c2gr_core

    def run(name, *args):
        return subprocess.run([sys.executable, "-m", name, *args], capture_output=True, text=True, cwd=ROOT)

    new = f"c2gr_core.{c2gr_core.MOVED[old]}"
    via_alias, direct = run(f"c2gr_core.{old}", "--help"), run(new, "--help")
    assert via_alias.returncode == 0, via_alias.stderr
    assert via_alias.stdout == direct.stdout and "usage:" in direct.stdout
    assert run(f"c2gr_core.{old}", "--no-such-option").returncode == 2
