"""Plots of tasks, replay and results. Figures are built on matplotlib's object API (no pyplot
state), so they work under the Agg backend, in notebooks and in batch jobs alike."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from matplotlib.figure import Figure

# Class colours of label maps: label 1, 2, 3, ... (0, background, is left uncoloured).
CLASS_COLOURS = np.array([
    (0.90, 0.10, 0.10), (0.10, 0.85, 0.20), (0.15, 0.45, 1.00), (1.00, 0.85, 0.00),
    (0.90, 0.20, 0.90), (0.00, 0.90, 0.90), (1.00, 0.50, 0.00), (0.60, 0.40, 0.20),
], dtype=np.float32)


def _as_rgb01(image: np.ndarray) -> np.ndarray:
    """(3, H, W) / (H, W, 3) / (H, W) image, float in [-1, 1] or uint8 -> (H, W, 3) float in [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"overlay: expected a (3, H, W), (H, W, 3) or (H, W) image, got shape {np.shape(image)}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return np.clip((img.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with each foreground class of `mask` tinted in its class colour: (H, W, 3) uint8.

    `image` is in the workbench representation ((3, H, W) float in [-1, 1]) or any of
    (H, W, 3) / (H, W), float in [-1, 1] or uint8; `mask` is an (H, W) label map.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb01(image)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"overlay: mask shape {mask.shape} does not match image {rgb.shape[:2]}")
    labels = mask.astype(np.int64)
    if labels.min(initial=0) < 0:
        raise ValueError("overlay: mask labels must be >= 0")
    colours = np.concatenate([np.zeros((1, 3), np.float32), CLASS_COLOURS])
    tint = colours[(labels - 1) % len(CLASS_COLOURS) + 1]  # classes beyond the palette reuse it
    a = np.where(labels > 0, alpha, 0.0)[..., None]
    return np.round((rgb * (1 - a) + tint * a) * 255).astype(np.uint8)


def _task_items(task) -> tuple[str, np.ndarray, np.ndarray]:
    if hasattr(task, "card") and hasattr(task, "train"):  # a TaskData
        return task.card.title, task.train.images, task.train.masks
    if isinstance(task, (tuple, list)) and len(task) == 3:
        return str(task[0]), np.asarray(task[1]), np.asarray(task[2])
    raise TypeError(f"contact_sheet: each task must be a TaskData or (name, images, masks), got {type(task).__name__}")


def contact_sheet(tasks: Iterable, n_per_task: int = 1, ax_size: float = 2.0, alpha: float = 0.45,
                  ncols: int | None = None) -> Figure:
    """One panel per task: its first `n_per_task` training images side by side with the masks
    overlaid in class colours, titled with the task's display name."""
    items = [_task_items(t) for t in tasks]
    if not items:
        raise ValueError("contact_sheet: no tasks given")
    if n_per_task < 1:
        raise ValueError(f"contact_sheet: n_per_task must be >= 1, got {n_per_task}")
    ncols = ncols or max(1, math.ceil(math.sqrt(len(items) / n_per_task)))
    nrows = math.ceil(len(items) / ncols)
    fig = Figure(figsize=(ncols * ax_size * n_per_task, nrows * (ax_size + 0.3)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, images, masks) in zip(axes, items):
        k = min(n_per_task, len(images))
        panels = [overlay(images[i], masks[i], alpha) for i in range(k)]
        ax.imshow(np.concatenate(panels, axis=1), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    for ax in axes[len(items):]:
        fig.delaxes(ax)
    return fig



# ------------------------------------------------------------------------ notebook output
def mask_rgb(mask: np.ndarray) -> np.ndarray:
    """An (H, W) label map as class colours on black: (H, W, 3) uint8 (background stays black)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_rgb: expected an (H, W) label map, got shape {mask.shape}")
    return overlay(np.full(mask.shape, -1.0, np.float32), mask, alpha=1.0)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _is_plotly(fig) -> bool:
    return type(fig).__module__.startswith("plotly")


def _target(out_dir, name: str, suffix: str):
    from pathlib import Path

    if not name or "/" in name or "\\" in name:
        raise ValueError(f"save_figure: name must be a plain file stem, got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{name}{suffix}"


def save_figure(fig, out_dir, name: str, png: bytes | None = None) -> list:
    """Write a figure into `out_dir`: a matplotlib Figure as NAME.png (`png`: already rendered
    bytes), a plotly figure as NAME.html (self-contained; a plotly PNG would need kaleido, which
    the workbench does not install)."""
    if _is_plotly(fig):
        path = _target(out_dir, name, ".html")
        fig.write_html(path, include_plotlyjs=True, full_html=True)
    elif isinstance(fig, Figure):
        path = _target(out_dir, name, ".png")
        path.write_bytes(png if png is not None else figure_png(fig))
    else:
        raise TypeError(f"save_figure: expected a matplotlib Figure or a plotly figure, got {type(fig).__name__}")
    return [path]


def show(fig, out_dir=None, name: str | None = None) -> None:
    """Display a figure in a notebook and, with `out_dir`, save it there (`save_figure`).

    Matplotlib figures are shown as PNG whatever the backend (batch runs use Agg, where a bare
    Figure would display as text); plotly figures display natively (interactive), sized to the
    output area. Returns None on purpose: a cell ending in `viz.show(...)` would otherwise display
    the figure a second time (issue 11)."""
    from IPython.display import Image, display

    png = None if _is_plotly(fig) else figure_png(fig)   # rendered once, for the file and the notebook
    if out_dir is not None:
        save_figure(fig, out_dir, name or "figure", png=png)
    display(fig if png is None else Image(data=png))


# ---------------------------------------------------------------------------- galleries
GAP_PX = 2   # white columns between neighbouring pairs of a gallery panel


def pairs_gallery(grid: dict, n: int = 4, ax_size: float = 1.4) -> Figure:
    """Image–mask pairs on a grid: grid[row][column] = (images (N, 3, H, W), masks (N, H, W)).

    Each panel shows the first `n` pairs of its cell side by side (GAP_PX white columns apart),
    every image above its mask (class colours on black), so a reader can judge whether the mask
    matches the image.
    Columns are titled on the first row, rows are labelled on the left.
    """
    rows = list(grid)
    if not rows:
        raise ValueError("pairs_gallery: empty grid")
    if n < 1:
        raise ValueError(f"pairs_gallery: n must be >= 1, got {n}")
    cols = list(dict.fromkeys(c for r in rows for c in grid[r]))
    fig = Figure(figsize=(len(cols) * n * ax_size, len(rows) * 2 * ax_size + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, r in enumerate(rows):
        for k, c in enumerate(cols):
            ax = axes[i, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(str(c), fontsize=9)
            if k == 0:
                ax.set_ylabel(str(r), fontsize=8)
            if c not in grid[r]:
                ax.set_frame_on(False)
                continue
            images, masks = grid[r][c]
            if len(images) != len(masks) or len(images) == 0:
                raise ValueError(f"pairs_gallery: cell ({r}, {c}) needs as many images as masks (>= 1), "
                                 f"got {len(images)} and {len(masks)}")
            m = min(n, len(images))
            panels = [np.concatenate([overlay(images[s], np.zeros_like(masks[s]), 0.0), mask_rgb(masks[s])], axis=0)
                      for s in range(m)]
            gap = np.full((panels[0].shape[0], GAP_PX, 3), 255, np.uint8)   # white line between pairs
            strip = [p for s, panel in enumerate(panels) for p in ((gap, panel) if s else (panel,))]
            ax.imshow(np.concatenate(strip, axis=1), interpolation="nearest")
    return fig


# ------------------------------------------------------------------------ result plots
def grouped_bars(values: dict, ylabel: str = "", title: str = "", ylim=None, ax_size=(7.0, 3.2)) -> Figure:
    """Grouped bars: values[series][category] -> height; one colour per series, one group per
    category (missing or NaN values leave a gap). Bar i of series s is `fig.axes[0].containers[s][i]`."""
    series = list(values)
    if not series:
        raise ValueError("grouped_bars: no series given")
    cats = list(dict.fromkeys(c for s in series for c in values[s]))
    fig = Figure(figsize=(max(ax_size[0], 0.5 * len(cats) * len(series) + 2), ax_size[1]), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(len(cats))
    for k, s in enumerate(series):
        h = [float(values[s].get(c, np.nan)) for c in cats]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, h, width, label=str(s))
    ax.set_xticks(x, [str(c) for c in cats], rotation=30 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, ncols=min(len(series), 4))
    ax.grid(axis="y", alpha=0.3)
    return fig


def metrics_bar(rows: list[dict]) -> Figure:
    """Overall / BWT / TL (%) per method as grouped bars; rows as `report.summarize_runs` gives them."""
    return grouped_bars({r["method"]: {"Overall": r["overall"], "BWT": r["bwt"], "TL": r["tl"]} for r in rows},
                        ylabel="%", title="Overall, BWT and TL (eq. 10)", ylim=(0, 100))


def forgetting_plot(curves: dict, ax_size: float = 3.2) -> Figure:
    """Per-round forgetting curves, one panel per method: curves[method] = (tasks, D) with D the
    T x T DSC matrix; the line of task j is D[i, j] (%) over rounds i >= j (metrics.forgetting_curves)."""
    from ..metrics import forgetting_curves

    if not curves:
        raise ValueError("forgetting_plot: no runs given")
    n = len(curves)
    fig = Figure(figsize=(ax_size * n + 1.2, ax_size), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    for ax, (method, (tasks, D)) in zip(axes, curves.items()):
        F = forgetting_curves(D)
        rounds = np.arange(len(tasks))
        for j, name in enumerate(tasks):
            ax.plot(rounds[j:], 100 * F[j:, j], marker="o", ms=3, label=name)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("after round i")
        ax.set_xticks(rounds)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("DSC on task j (%)")
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return fig


def params_vs_overall(points: list[dict]) -> Figure:
    """Fig. 9: learnable parameters (log x) against Overall DSC (%); points are dicts with
    method, params, overall (%) and optionally privacy_preserving (False draws a hollow marker)."""
    if not points:
        raise ValueError("params_vs_overall: no points given")
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    for k, p in enumerate(points):
        colour = f"C{k % 10}"
        private = p.get("privacy_preserving", True)
        ax.scatter([p["params"]], [p["overall"]], s=45, label=p["method"], linewidths=1.5,
                   facecolors=colour if private else "none", edgecolors=colour)
        ax.annotate(p["method"], (p["params"], p["overall"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("learnable parameters")
    ax.set_ylabel("Overall DSC (%)")
    ax.set_title("Cost vs. performance (Fig. 9)", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def embedding_scatter(panels: dict, ax_size: float = 3.4) -> Figure:
    """2-D embeddings side by side (t-SNE of Fig. 8): panels[title] = (xy (N, 2), labels (N,)),
    one colour per label, the same label -> colour map in every panel, named by one legend below
    all panels (it belongs to every panel, not to the last one)."""
    if not panels:
        raise ValueError("embedding_scatter: no panels given")
    labels = list(dict.fromkeys(l for _, (_, lab) in panels.items() for l in lab))
    colour = {l: f"C{i % 10}" for i, l in enumerate(labels)}
    ncols = min(len(labels), 5)
    legend_rows = -(-len(labels) // ncols)
    fig = Figure(figsize=(max(ax_size * len(panels), 6.0), ax_size + 0.35 * legend_rows + 0.3), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    for ax, (title, (xy, lab)) in zip(axes, panels.items()):
        xy, lab = np.asarray(xy), np.asarray(lab)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(lab):
            raise ValueError(f"embedding_scatter: panel {title!r} needs (N, 2) points and N labels, "
                             f"got {xy.shape} and {lab.shape}")
        for l in labels:
            sel = lab == l
            if sel.any():
                handles[l] = ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=colour[l], label=l)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.legend([handles[l] for l in labels if l in handles], [l for l in labels if l in handles],
               loc="outside lower center", ncols=ncols, fontsize=9, markerscale=1.4, frameon=False)
    return fig


def _off_diagonal_range(m: np.ndarray) -> tuple[float, float]:
    """(min, max) of a square matrix without its diagonal (cosine 1 by definition): the span in
    which a similarity matrix carries information. A constant matrix gets a small span around its
    value, so plotly still has a scale to draw."""
    m = np.asarray(m, dtype=float)
    off = m[~np.eye(len(m), dtype=bool)] if len(m) > 1 else m.ravel()
    off = off[np.isfinite(off)]
    if off.size == 0:
        return -1.0, 1.0
    lo, hi = float(off.min()), float(off.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    return lo, hi


def similarity_heatmap(matrices: dict, names: list[str], title: str = "Cosine similarity of task prompts",
                       zmin: float | None = None, zmax: float | None = None, scale_title: str = "cosine"):
    """Interactive (plotly) heatmaps side by side: matrices[panel title] = (T, T) array over the
    tasks `names` (Fig. 7). Trace k's z is matrices' k-th array.

    Each panel has its own colour scale over its off-diagonal values (`zmin`/`zmax` fix it
    instead), with its colour bar under the panel, titled `scale_title` and the span: learned
    prompts are often all close to 1, and on a fixed -1..1 scale their block structure (tasks that
    share anatomy or objective, Fig. 7) drowns in one colour. The diagonal (1) shows as the top
    colour. The figure has no fixed width, so it fills the notebook's output area.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not matrices:
        raise ValueError("similarity_heatmap: no matrices given")
    T = len(names)
    for k, m in matrices.items():
        if np.shape(m) != (T, T):
            raise ValueError(f"similarity_heatmap: {k!r} is {np.shape(m)}, expected ({T}, {T}) for tasks {names}")
    n = len(matrices)
    spacing = 0.04
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(matrices), horizontal_spacing=spacing,
                        shared_yaxes=True)
    width = (1 - spacing * (n - 1)) / n   # each panel's share of the plotting area (make_subplots' domains)
    for i, (k, m) in enumerate(matrices.items(), start=1):
        lo, hi = _off_diagonal_range(m)
        lo, hi = (lo if zmin is None else zmin), (hi if zmax is None else zmax)
        fig.add_trace(go.Heatmap(
            z=np.asarray(m, dtype=float), x=names, y=names, zmin=lo, zmax=hi, colorscale="Viridis", name=k,
            hovertemplate="%{y} vs %{x}<br>cos %{z:.3f}<extra></extra>",
            colorbar=dict(orientation="h", x=(i - 1) * (width + spacing) + width / 2, xanchor="center",
                          len=width, lenmode="fraction", thickness=12, y=0.0, yref="container", ypad=4,
                          yanchor="bottom", title=dict(text=f"{scale_title} ({lo:.3g} … {hi:.3g})", side="bottom"),
                          tickformat=".3g", nticks=4)), row=1, col=i)
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(tickangle=-40, automargin=True)
    fig.update_layout(title=title, height=330 + 16 * T, autosize=True, margin=dict(l=10, r=10, t=70, b=110))
    return fig
