"""training.allocator.keep_freed_memory: freed memory stays in the process (glibc only)."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# Each case runs in a fresh interpreter: the malloc setting is process-wide and permanent.
# A 64 MiB block is far above glibc's mmap threshold: by default it is mapped for the allocation and
# unmapped on free, so the resident size drops by its size; kept, the pages stay resident.
PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from c2gr_core.training.allocator import keep_freed_memory
keep = {keep}
assert not keep or keep_freed_memory()
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
n = 64 << 20
b = bytearray(n)
b[::page] = b"\\x01" * len(range(0, n, page))    # touch every page
before = rss()
del b
print((before - rss()) / n)
"""


glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")


def _dropped_share(keep: bool) -> float:
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=root, keep=keep)], capture_output=True,
                         text=True, check=True).stdout
    return float(out)


@glibc_only
def test_freed_block_stays_resident_only_when_kept():
    assert _dropped_share(keep=False) > 0.9      # glibc as it comes: the block went back to the kernel
    assert _dropped_share(keep=True) < 0.1       # kept: its pages are still the process's


def test_returns_false_where_malloc_is_not_glibc(monkeypatch):
    from c2gr_core.training import allocator
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


@glibc_only
def test_a_run_keeps_freed_memory_and_records_it():
    from tiny_runs import tiny_runs
    env = json.loads((tiny_runs()["joint"] / "environment.json").read_text())
    assert env["malloc_keeps_freed_memory"] is True
