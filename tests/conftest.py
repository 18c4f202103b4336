"""Shared test helpers live beside the tests (tiny_runs.py, preparer_fixtures.py). With
--import-mode=importlib their folders are not on sys.path by themselves; put them there once."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for sub in ("c2gr_core", "data_catalog"):
    if str(HERE / sub) not in sys.path:
        sys.path.insert(0, str(HERE / sub))
