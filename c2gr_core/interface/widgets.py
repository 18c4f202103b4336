"""The replay inspector: browse the image-mask pairs a run replayed for its past tasks (sec. 3.3),
next to real pairs of the same task, with their quality (sec. 4.4.2).

`ReplayInspector(run_dir)` is an ipywidgets VBox (display it in JupyterLab): round and task
selectors, a sample slider, a mask-overlay toggle and opacity, replayed | real side by side, and
the task's correspondence DSC / feature-FID when quality rows (`quality.replay_quality`) are given.
`static_gallery(run_dir)` draws the same pairs as one matplotlib figure for batch runs, where no
one can move a slider.

The pairs shown are exactly those in samples/round_XX/task_YY.npz; the real pairs are the task's
test split, read back for analysis as the evaluation reads it (`runs.load_run_task`).
"""
from __future__ import annotations

import html
import io
import os
from pathlib import Path

import ipywidgets as w
import numpy as np

from ..analysis.inspection import load_pairs, replay_samples
from ..analysis.quality import CORRESPONDENCE_LABEL, FEATURE_FID_LABEL
from ..experiment.runs import load_run_task, read_run
from .viz import overlay, pairs_gallery

DISPLAY_PX = 192   # pairs are upscaled by an integer factor to about this size (32^2 is tiny on screen)


def _png(rgb: np.ndarray, scale: int) -> bytes:
    from PIL import Image

    big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)  # nearest: keeps mask edges sharp
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    return buf.getvalue()


def _quality_index(quality) -> dict:
    """{(round, task name): row} from replay_quality rows (or an already indexed dict)."""
    if not quality:
        return {}
    if isinstance(quality, dict):
        return dict(quality)
    return {(int(r["round"]), r["task"]): r for r in quality}


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


class ReplayInspector(w.VBox):
    """Interactive viewer of a run's replayed pairs (module docstring).

    Controls (public, so code and tests can drive them): `round`, `task`, `sample`, `overlay`,
    `opacity`. What is on screen: `replayed_image` / `real_image` (PNG widgets), `info` (HTML);
    `shown` holds the arrays behind them: round, task, index, the raw replayed and real pairs and
    the rendered (H, W, 3) uint8 images.
    """

    def __init__(self, run_dir: str | os.PathLike, quality=None, alpha: float = 0.45,
                 data_root: str | None = None, display_px: int = DISPLAY_PX):
        self.run_dir = Path(run_dir)
        info = read_run(self.run_dir)
        self.tasks = info["tasks"]
        self.samples = replay_samples(self.run_dir)
        if not self.samples:
            raise ValueError(f"{self.run_dir}: the run kept no replayed samples (samples/round_XX/task_YY.npz); "
                             "only generative-replay methods write them, from round 1 on")
        self.quality = _quality_index(quality)
        self.data_root = data_root
        self.display_px = display_px
        self._pairs: dict[Path, tuple] = {}
        self._real: dict[int, tuple] = {}
        rounds = sorted(self.samples)
        self.round = w.Dropdown(options=[(f"round {r} ({self.tasks[r]})", r) for r in rounds], value=rounds[-1],
                                description="round")
        self.task = w.Dropdown(description="past task")
        self.sample = w.IntSlider(min=0, max=0, value=0, description="sample", continuous_update=False)
        self.overlay = w.Checkbox(value=True, description="overlay mask")
        self.opacity = w.FloatSlider(min=0.0, max=1.0, step=0.05, value=alpha, description="opacity",
                                     continuous_update=False)
        self.replayed_image = w.Image(format="png")
        self.real_image = w.Image(format="png")
        self.info = w.HTML()
        self.shown: dict = {}
        self._set_task_options()
        self.round.observe(self._on_round, names="value")
        for c in (self.task, self.sample, self.overlay, self.opacity):
            c.observe(self._on_change, names="value")
        panes = w.HBox([w.VBox([w.HTML("<b>replayed</b>"), self.replayed_image]),
                        w.VBox([w.HTML("<b>real (test split)</b>"), self.real_image])])
        super().__init__([w.HBox([self.round, self.task]), w.HBox([self.sample, self.overlay, self.opacity]),
                          panes, self.info])
        self.refresh()

    # --- data ------------------------------------------------------------------------------
    def pairs(self, round: int, task: int) -> tuple[np.ndarray, np.ndarray]:
        """The replayed pairs of `task` in `round`, as stored on disk."""
        path = self.samples[round][task]
        if path not in self._pairs:
            self._pairs[path] = load_pairs(path)
        return self._pairs[path]

    def real_pairs(self, task: int) -> tuple[np.ndarray, np.ndarray]:
        if task not in self._real:
            test = load_run_task(self.run_dir, task, data_root=self.data_root).test
            self._real[task] = (np.asarray(test.images), np.asarray(test.masks))
        return self._real[task]

    # --- events ----------------------------------------------------------------------------
    def _set_task_options(self) -> None:
        files = self.samples[self.round.value]
        self.task.options = [(f"{j}: {self.tasks[j]}", j) for j in sorted(files)]
        self.task.value = sorted(files)[0]

    def _on_round(self, change) -> None:
        self._set_task_options()   # may fire _on_change via task; refresh once more anyway
        self.refresh()

    def _on_change(self, change) -> None:
        self.refresh()

    def refresh(self) -> None:
        r, j = self.round.value, self.task.value
        if j not in self.samples[r]:   # mid-update of the task options
            return
        images, masks = self.pairs(r, j)
        self.sample.max = len(images) - 1
        i = min(self.sample.value, len(images) - 1)
        real_x, real_y = self.real_pairs(j)
        k = i % len(real_x)
        a = self.opacity.value if self.overlay.value else 0.0
        rep = overlay(images[i], masks[i], a)
        real = overlay(real_x[k], real_y[k], a)
        scale = max(1, self.display_px // rep.shape[0])
        self.replayed_image.value = _png(rep, scale)
        self.real_image.value = _png(real, scale)
        self.shown = {"round": r, "task": j, "index": i, "n_pairs": len(images), "real_index": k,
                      "replayed_pair": (images[i], masks[i]), "real_pair": (real_x[k], real_y[k]),
                      "replayed": rep, "real": real, "scale": scale}
        self.info.value = self._info_html(r, j, i, len(images), masks[i])

    def _info_html(self, r: int, j: int, i: int, n: int, mask: np.ndarray) -> str:
        name = self.tasks[j]
        labels = ", ".join(str(v) for v in np.unique(mask) if v > 0) or "none"
        text = (f"round {r}: pair {i + 1}/{n} replayed for task <b>{html.escape(name)}</b> "
                f"(file {html.escape(self.samples[r][j].name)}); foreground labels in this mask: {labels}")
        q = self.quality.get((r, name))
        if q is not None:
            text += (f"<br>{html.escape(CORRESPONDENCE_LABEL)}: {_fmt(q.get(CORRESPONDENCE_LABEL))} &nbsp; "
                     f"{html.escape(FEATURE_FID_LABEL)}: {_fmt(q.get(FEATURE_FID_LABEL))}")
        return text


def replay_inspector(run_dir: str | os.PathLike, quality=None, alpha: float = 0.45,
                     data_root: str | None = None) -> ReplayInspector:
    """The interactive replay inspector of a run directory (an ipywidgets VBox)."""
    return ReplayInspector(run_dir, quality=quality, alpha=alpha, data_root=data_root)


def static_gallery(run_dir: str | os.PathLike, round: int | None = None, n: int = 4, quality=None,
                   data_root: str | None = None):
    """The non-interactive view: one row per replayed task of `round` (default the last with
    samples), its first n real test pairs next to its first n replayed pairs; the row label
    carries the task's quality when `quality` rows are given."""
    run = Path(run_dir)
    samples = replay_samples(run)
    if not samples:
        raise ValueError(f"{run}: the run kept no replayed samples (samples/round_XX/task_YY.npz)")
    r = max(samples) if round is None else int(round)
    if r not in samples:
        raise ValueError(f"{run}: no replayed samples for round {round}; rounds with samples: {sorted(samples)}")
    tasks = read_run(run)["tasks"]
    q = _quality_index(quality)
    grid = {}
    for j, path in sorted(samples[r].items()):
        test = load_run_task(run, j, data_root=data_root).test
        label = tasks[j]
        row = q.get((r, tasks[j]))
        if row is not None:
            label += f"\nDSC {_fmt(row.get(CORRESPONDENCE_LABEL))}\nfFID {_fmt(row.get(FEATURE_FID_LABEL))}"
        grid[label] = {"real (test split)": (np.asarray(test.images), np.asarray(test.masks)),
                       f"replayed in round {r}": load_pairs(path)}
    return pairs_gallery(grid, n=n)
