"""Two tiny finished runs (c2gr and joint, 2 tasks) shared by the quality, runs and downstream tests.

Made once per test process (a few seconds) in a temporary folder removed at exit, so the three
test modules do not each pay for the same runs. Import with sys.path (--import-mode=importlib).
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from c2gr_core.config import preset
from c2gr_core.experiment.runner import run_stream

# mms-a brings C_max = 3, so every downstream task (GOALS has 3 classes) fits the segmentor.
STREAM = ["synthetic:fundus-a", "synthetic:mms-a"]


class Crash(RuntimeError):
    """Raised by `crash_in_next_round` to interrupt a run mid-training."""


def crash_in_next_round(event, trainer):
    """A training callback that kills the round it is given to after its first optimiser step."""
    if event == "on_step_end" and trainer.step == 1:
        raise Crash


def interrupt_and_resume(stream, method, cfg_fn, out, done_rounds: int = 2):
    """Run `done_rounds` rounds, die mid-training in the next, then resume to the end."""
    run_stream(stream, method, cfg_fn(), out, progress=False, max_rounds=done_rounds)
    try:
        run_stream(stream, method, cfg_fn(), out, progress=False, resume=True, callbacks=[crash_in_next_round])
    except Crash:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    return run_stream(stream, method, cfg_fn(), out, progress=False, resume=True)


def small_cfg():
    cfg = preset("tiny")
    cfg.prompt.encoder = "hash"
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 16, 4, 8
    cfg.train.epochs, cfg.train.batch_size = 1, 8
    cfg.diffusion.sample_steps = 2
    cfg.train.replay_per_task = 8
    return cfg


@functools.lru_cache(maxsize=None)
def tiny_runs() -> dict[str, Path]:
    root = Path(tempfile.mkdtemp(prefix="c2gr-tiny-runs-"))
    atexit.register(shutil.rmtree, root, True)
    return {m: run_stream(STREAM, m, small_cfg(), root / m, progress=False).out_dir for m in ("c2gr", "joint")}
