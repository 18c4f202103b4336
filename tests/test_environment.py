"""The conda file and the package metadata must list the same dependencies (issue 2)."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
    return name, m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in meta["dependencies"] + meta["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {_norm(r) for r in pip_section} == wanted


def test_torch_pins_follow_design():
    # docs/design.md: the 2.13.0 CPU build breaks torchvision and therefore open_clip.
    deps = dict(_norm(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert deps["torch"] == "==2.14.1" and deps["torchvision"] == "==0.29.1"
    assert "einops" in deps  # MONAI needs it installed explicitly


def test_ci_calls_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


def test_offline_env_is_set_for_runs():
    assert "HF_HUB_OFFLINE" in (ROOT / "Makefile").read_text()
