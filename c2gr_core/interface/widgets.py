"""The replay inspector: browse the image-mask pairs a run replayed for its past tasks (sec. 3.3),
next to real pairs of the same task, with their quality (sec. 4.4.2), and draw new pairs from the
run's generator on demand.

`ReplayInspector(run_dir)` is an ipywidgets Tab (display it in JupyterLab):

* *stored replay*: round and task selectors, a sample slider (1-based, like its caption), a
  mask-overlay toggle and opacity; replayed | real side by side, each as the image with its mask
  overlaid and as the mask on its own, a legend naming the task's classes in their colours, and
  the set's correspondence DSC / feature-FID when quality rows (`quality.replay_quality`) are given.
* *live sampling*: task, sampler (DDPM/DDIM), number of reverse steps, seed and number of pairs;
  *draw* samples them from the run's final generator in small batches under a progress bar, shows
  each new pair beside a real test pair (image, mask, overlay), and updates the pairs'
  correspondence DSC and feature-FID after every batch when a `reference` (a JointTrain method or
  run) is given.

`static_gallery(run_dir)` draws the stored pairs as one matplotlib figure for batch runs, where no
one can move a slider.

The stored pairs shown are exactly those in samples/round_XX/task_YY.npz; the real pairs are the
task's test split, read back for analysis as the evaluation reads it (`runs.load_run_task`).
"""
from __future__ import annotations

import html
import io
import os
from pathlib import Path

import ipywidgets as w
import numpy as np

from ..analysis.inspection import load_pairs, replay_samples, sample_task_pairs
from ..analysis.quality import (CORRESPONDENCE_LABEL, FEATURE_FID_LABEL, SegmentorFeatures, correspondence_dsc,
                                feature_fid)
from ..config import SAMPLERS
from ..experiment.runs import load_method, load_run_task, read_run
from .viz import CLASS_COLOURS, mask_rgb, overlay, pairs_gallery

DISPLAY_PX = 192   # pairs are upscaled by an integer factor to about this size (32^2 is tiny on screen)
DEFAULT_ALPHA = 0.6   # at 0.45 the red class-1 tint vanished on the orange fundus images (issue 11)
LIVE_BATCH = 4     # live draws come in batches this size: the picture and the quality update after each


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


def _pct(v) -> str:
    """A DSC in [0, 1] shown in %, the unit of the run logs and the notebooks' tables."""
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f} %"


def class_legend(classes) -> str:
    """HTML legend of a task's mask classes: label k's colour swatch (viz.CLASS_COLOURS) and name."""
    items = []
    for k, name in enumerate(classes, start=1):
        r, g, b = (int(round(255 * c)) for c in CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)])
        items.append(f'<span style="display:inline-block;width:0.9em;height:0.9em;background:rgb({r},{g},{b});'
                     f'vertical-align:middle;margin:0 0.3em 0 0.8em"></span>{k}: {html.escape(str(name))}')
    return "mask classes:" + "".join(items) if items else "mask classes: none"


def _titled(title: str, image: w.Image) -> w.VBox:
    return w.VBox([w.HTML(f"<b>{html.escape(title)}</b>"), image])


class ReplayInspector(w.Tab):
    """Interactive viewer of a run's replayed pairs and sampler of new ones (module docstring).

    Controls (public, so code and tests can drive them): stored replay `round`, `task`, `sample`
    (1-based), `overlay`, `opacity`; live sampling `live_task`, `sampler`, `steps`, `seed`,
    `n_draw`, `draw_button` (or call `draw()`), `live_sample` (1-based). What is on screen:
    `replayed_image` / `real_image` (overlays), `replayed_mask` / `real_mask` (masks alone),
    `legend`, `info`; `live_image` / `live_mask` / `live_overlay`, `live_real` (real pair: image,
    mask, overlay in one strip), `live_info`, `live_progress` (the draw's progress bar).
    `shown` holds the arrays behind the stored view: round, task, 0-based index, the raw replayed
    and real pairs and the rendered (H, W, 3) uint8 images; `live` the drawn pairs and their quality.
    """

    def __init__(self, run_dir: str | os.PathLike, quality=None, alpha: float = DEFAULT_ALPHA,
                 data_root: str | None = None, display_px: int = DISPLAY_PX, reference=None, method=None):
        self.run_dir = Path(run_dir)
        info = read_run(self.run_dir)
        self.tasks = info["tasks"]
        self.config = info["config"]
        self.samples = replay_samples(self.run_dir)
        if not self.samples:
            raise ValueError(f"{self.run_dir}: the run kept no replayed samples (samples/round_XX/task_YY.npz); "
                             "only generative-replay methods write them, from round 1 on")
        self.quality = _quality_index(quality)
        self.data_root = data_root
        self.display_px = display_px
        self._method = method          # loaded on the first draw: reading checkpoints costs seconds
        self._reference = reference    # a Method, a run directory or None (then no live quality)
        self._pairs: dict[Path, tuple] = {}
        self._real: dict[int, tuple] = {}
        self._classes: dict[int, tuple] = {}
        rounds = sorted(self.samples)
        self.round = w.Dropdown(options=[(f"round {r} ({self.tasks[r]})", r) for r in rounds], value=rounds[-1],
                                description="round")
        self.task = w.Dropdown(description="past task")
        self.sample = w.IntSlider(min=1, max=1, value=1, description="sample", continuous_update=False)
        self.overlay = w.Checkbox(value=True, description="overlay mask")
        self.opacity = w.FloatSlider(min=0.0, max=1.0, step=0.05, value=alpha, description="opacity",
                                     continuous_update=False)
        self.replayed_image, self.replayed_mask = w.Image(format="png"), w.Image(format="png")
        self.real_image, self.real_mask = w.Image(format="png"), w.Image(format="png")
        self.legend = w.HTML()
        self.info = w.HTML()
        self.shown: dict = {}
        self._set_task_options()
        self.round.observe(self._on_round, names="value")
        for c in (self.task, self.sample, self.overlay, self.opacity):
            c.observe(self._on_change, names="value")
        panes = w.HBox([_titled("replayed", self.replayed_image), _titled("replayed mask", self.replayed_mask),
                        _titled("real (test split)", self.real_image), _titled("real mask", self.real_mask)])
        stored = w.VBox([w.HBox([self.round, self.task]), w.HBox([self.sample, self.overlay, self.opacity]),
                         panes, self.legend, self.info])
        live = self._build_live()
        super().__init__(children=[stored, live], titles=["stored replay", "live sampling"])
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
            data = load_run_task(self.run_dir, task, data_root=self.data_root)
            self._real[task] = (np.asarray(data.test.images), np.asarray(data.test.masks))
            self._classes[task] = tuple(data.card.classes)
        return self._real[task]

    def classes(self, task: int) -> tuple:
        self.real_pairs(task)
        return self._classes[task]

    def method(self):
        """The run's final method, whose generator the live draws sample (loaded once)."""
        if self._method is None:
            self._method = load_method(self.run_dir)
        return self._method

    def reference(self):
        if self._reference is not None and not hasattr(self._reference, "ctx"):
            self._reference = load_method(self._reference)
        return self._reference

    # --- stored replay -----------------------------------------------------------------------
    def _set_task_options(self) -> None:
        files = self.samples[self.round.value]
        self.task.options = [(f"{j}: {self.tasks[j]}", j) for j in sorted(files)]
        self.task.value = sorted(files)[0]

    def _on_round(self, change) -> None:
        self._set_task_options()   # may fire _on_change via task; refresh once more anyway
        self.refresh()

    def _on_change(self, change) -> None:
        self.refresh()

    def _alpha(self) -> float:
        return self.opacity.value if self.overlay.value else 0.0

    def refresh(self) -> None:
        r, j = self.round.value, self.task.value
        if j not in self.samples[r]:   # mid-update of the task options
            return
        images, masks = self.pairs(r, j)
        self.sample.max = len(images)
        i = min(self.sample.value, len(images)) - 1
        real_x, real_y = self.real_pairs(j)
        k = i % len(real_x)
        a = self._alpha()
        rep = overlay(images[i], masks[i], a)
        real = overlay(real_x[k], real_y[k], a)
        scale = max(1, self.display_px // rep.shape[0])
        self.replayed_image.value = _png(rep, scale)
        self.replayed_mask.value = _png(mask_rgb(masks[i]), scale)
        self.real_image.value = _png(real, scale)
        self.real_mask.value = _png(mask_rgb(real_y[k]), scale)
        self.shown = {"round": r, "task": j, "index": i, "n_pairs": len(images), "real_index": k,
                      "replayed_pair": (images[i], masks[i]), "real_pair": (real_x[k], real_y[k]),
                      "replayed": rep, "real": real, "scale": scale}
        self.legend.value = class_legend(self.classes(j))
        self.info.value = self._info_html(r, j, i, len(images), masks[i])

    def _info_html(self, r: int, j: int, i: int, n: int, mask: np.ndarray) -> str:
        name = self.tasks[j]
        labels = ", ".join(str(v) for v in np.unique(mask) if v > 0) or "none"
        text = (f"round {r}: pair {i + 1}/{n} replayed for task <b>{html.escape(name)}</b> "
                f"(file {html.escape(self.samples[r][j].name)}); foreground labels in this mask: {labels}")
        q = self.quality.get((r, name))
        if q is not None:
            text += (f"<br>{html.escape(CORRESPONDENCE_LABEL)}: {_pct(q.get(CORRESPONDENCE_LABEL))} &nbsp; "
                     f"{html.escape(FEATURE_FID_LABEL)}: {_fmt(q.get(FEATURE_FID_LABEL))}")
        return text

    # --- live sampling -----------------------------------------------------------------------
    def _build_live(self) -> w.VBox:
        d = self.config.diffusion
        self.live_task = w.Dropdown(options=[(f"{j}: {t}", j) for j, t in enumerate(self.tasks)], value=0,
                                    description="task")
        self.sampler = w.Dropdown(options=list(SAMPLERS), value=d.sampler, description="sampler")
        self.steps = w.BoundedIntText(value=d.sample_steps, min=1, max=d.num_train_timesteps, description="steps")
        self.seed = w.IntText(value=0, description="seed")
        self.n_draw = w.BoundedIntText(value=LIVE_BATCH, min=1, max=256, description="pairs")
        self.draw_button = w.Button(description="draw", button_style="primary", icon="play")
        self.live_progress = w.Output()   # tqdm's notebook bar is displayed in here, inside the widget
        self.live_sample = w.IntSlider(min=1, max=1, value=1, description="pair", continuous_update=False,
                                       disabled=True)
        self.live_image, self.live_mask, self.live_overlay = (w.Image(format="png") for _ in range(3))
        self.live_real = w.Image(format="png")
        self.live_legend, self.live_info = w.HTML(), w.HTML("Press <b>draw</b> to sample pairs from the run's "
                                                             "final generator.")
        self.live: dict = {}
        self.draw_button.on_click(self._on_draw_clicked)
        self.live_sample.observe(lambda _: self._show_live(), names="value")
        self.opacity.observe(lambda _: self._show_live(), names="value")
        self.overlay.observe(lambda _: self._show_live(), names="value")
        return w.VBox([w.HBox([self.live_task, self.sampler, self.steps]),
                       w.HBox([self.seed, self.n_draw, self.draw_button]), self.live_progress,
                       self.live_sample,
                       w.HBox([_titled("drawn image", self.live_image), _titled("drawn mask", self.live_mask),
                               _titled("drawn overlay", self.live_overlay),
                               _titled("real test pair: image, mask, overlay", self.live_real)]),
                       self.live_legend, self.live_info])

    def draw(self) -> dict:
        """Sample `n_draw` pairs of `live_task` with the chosen sampler, steps and seed, in batches of
        LIVE_BATCH under one progress bar; show and score them as they come. Returns `live`."""
        from tqdm.auto import tqdm

        import torch

        j, n, steps, sampler = self.live_task.value, int(self.n_draw.value), int(self.steps.value), self.sampler.value
        generator = torch.Generator().manual_seed(int(self.seed.value))   # one stream over the batches
        self.live = {"task": j, "sampler": sampler, "steps": steps, "seed": int(self.seed.value),
                     "images": np.zeros((0, 3, 1, 1), np.float32), "masks": np.zeros((0, 1, 1), np.uint8),
                     CORRESPONDENCE_LABEL: float("nan"), FEATURE_FID_LABEL: float("nan"), "error": None}
        self.live_sample.disabled = True
        self.draw_button.disabled = True
        self.live_progress.clear_output()
        try:
            method = self.method()
            batches = -(-n // LIVE_BATCH)
            with self.live_progress:
                bar = tqdm(total=batches * steps, desc=f"{sampler}-{steps}, {n} pairs of {self.tasks[j]}")
            try:
                for b in range(batches):
                    k = min(LIVE_BATCH, n - b * LIVE_BATCH)
                    x, y = sample_task_pairs(method, j, k, seed=generator, steps=steps, sampler=sampler,
                                             progress=bar)
                    first = b == 0
                    self.live["images"] = x if first else np.concatenate([self.live["images"], x])
                    self.live["masks"] = y if first else np.concatenate([self.live["masks"], y])
                    self._score_live()
                    self.live_sample.disabled = False
                    self.live_sample.max = len(self.live["images"])
                    self.live_sample.value = len(self.live["images"]) - k + 1   # the first pair of the new batch
                    self._show_live()
            finally:
                bar.close()
        finally:
            self.draw_button.disabled = False
        return self.live

    def _on_draw_clicked(self, _button) -> None:
        try:
            self.draw()
        except Exception as e:   # shown in the widget: a button callback's exception only reaches the log
            self.live["error"] = f"{type(e).__name__}: {e}"
            self.live_info.value = f"<span style='color:#b00'>draw failed: {html.escape(self.live['error'])}</span>"

    def _score_live(self) -> None:
        ref = self.reference()
        if ref is None:
            return
        j = self.live["task"]
        names = [c.name for c in ref.ctx.cards]
        name = self.tasks[j]
        if name not in names:
            raise ValueError(f"the reference never trained on task {name!r}; its tasks: {names}")
        k = names.index(name)
        x, y = self.live["images"], self.live["masks"]
        self.live[CORRESPONDENCE_LABEL] = correspondence_dsc(x, y, ref, k, ref.ctx.cards[k].n_classes)["mean"]
        if len(x) >= 2:   # a covariance needs two samples
            self.live[FEATURE_FID_LABEL] = feature_fid(self.real_pairs(j)[0], x, SegmentorFeatures(ref, k))

    def _show_live(self) -> None:
        if not self.live or not len(self.live.get("images", ())):
            return
        j = self.live["task"]
        i = min(self.live_sample.value, len(self.live["images"])) - 1
        x, y = self.live["images"][i], self.live["masks"][i]
        real_x, real_y = self.real_pairs(j)
        k = i % len(real_x)
        a = self._alpha()
        scale = max(1, self.display_px // x.shape[-1])
        self.live_image.value = _png(overlay(x, np.zeros_like(y), 0.0), scale)
        self.live_mask.value = _png(mask_rgb(y), scale)
        self.live_overlay.value = _png(overlay(x, y, a), scale)
        gap = np.full((real_y[k].shape[0], 2, 3), 255, np.uint8)
        strip = np.concatenate([overlay(real_x[k], np.zeros_like(real_y[k]), 0.0), gap, mask_rgb(real_y[k]), gap,
                                overlay(real_x[k], real_y[k], a)], axis=1)
        self.live_real.value = _png(strip, max(1, scale // 2))
        self.live["index"] = i
        self.live_legend.value = class_legend(self.classes(j))
        l = self.live
        quality = ("no reference given: pass reference= (a JointTrain run) to score the pairs"
                   if self._reference is None else
                   f"{html.escape(CORRESPONDENCE_LABEL)} {_pct(l[CORRESPONDENCE_LABEL])} &nbsp; "
                   f"{html.escape(FEATURE_FID_LABEL)} {_fmt(l[FEATURE_FID_LABEL])} (over the {len(l['images'])} "
                   "pairs drawn so far)")
        self.live_info.value = (f"pair {i + 1}/{len(l['images'])} drawn for <b>{html.escape(self.tasks[j])}</b> "
                                f"({l['sampler']}, {l['steps']} steps, seed {l['seed']})<br>{quality}")


def replay_inspector(run_dir: str | os.PathLike, quality=None, alpha: float = DEFAULT_ALPHA,
                     data_root: str | None = None, reference=None, method=None) -> ReplayInspector:
    """The interactive replay inspector of a run directory (an ipywidgets Tab: stored replay and
    live sampling; `reference`: a JointTrain method or run directory scoring the live draws)."""
    return ReplayInspector(run_dir, quality=quality, alpha=alpha, data_root=data_root, reference=reference,
                           method=method)


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
            label += f"\nDSC {_pct(row.get(CORRESPONDENCE_LABEL))}\nfFID {_fmt(row.get(FEATURE_FID_LABEL))}"
        grid[label] = {"real (test split)": (np.asarray(test.images), np.asarray(test.masks)),
                       f"replayed in round {r}": load_pairs(path)}
    return pairs_gallery(grid, n=n)
