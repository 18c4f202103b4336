"""Contact sheet and mask overlay."""
import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from c2gr_core.interface.viz import CLASS_COLOURS, contact_sheet, overlay
from data_catalog.schema import card_from_dict
from data_catalog.taskdata import Split, TaskData


def _pair(n=2, size=8, label=1):
    images = np.linspace(-1, 1, n * 3 * size * size, dtype=np.float32).reshape(n, 3, size, size)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 2:5, 2:5] = label
    return images, masks


def test_overlay_tints_only_foreground_in_its_class_colour():
    img = np.zeros((3, 4, 4), np.float32)  # mid-grey in [-1, 1]
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1] = 1, 2
    out = overlay(img, mask, alpha=1.0)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out[3, 3] == 128).all()  # background keeps the image: (0 + 1) / 2 * 255
    assert np.allclose(out[0, 0], CLASS_COLOURS[0] * 255, atol=1)
    assert np.allclose(out[1, 1], CLASS_COLOURS[1] * 255, atol=1)
    half = overlay(img, mask, alpha=0.5)[0, 0].astype(float)  # halfway between grey and red
    assert np.allclose(half, (0.5 * 0.5 + 0.5 * CLASS_COLOURS[0]) * 255, atol=1)


def test_overlay_accepts_grey_hwc_and_uint8():
    mask = np.zeros((5, 6), np.uint8)
    grey = overlay(np.full((5, 6), -1.0, np.float32), mask)
    assert grey.shape == (5, 6, 3) and grey.max() == 0
    hwc = overlay(np.full((5, 6, 3), 255, np.uint8), mask, alpha=0.0)
    assert (hwc == 255).all()
    with pytest.raises(ValueError, match="does not match"):
        overlay(np.zeros((3, 5, 5), np.float32), mask)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((3, 5, 6), np.float32), mask, alpha=2)


def test_contact_sheet_has_one_titled_panel_per_task():
    card = card_from_dict({"name": "t", "modality": "m", "anatomy": "a", "objective": "o", "classes": ["x"],
                           "display_name": "Task T"})
    images, masks = _pair()
    task = TaskData(card, Split(images, masks), Split(images, masks), Split(images, masks))
    tasks = [task, ("raw one", *_pair(label=2)), ("raw two", *_pair(n=1))]
    fig = contact_sheet(tasks, n_per_task=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["Task T", "raw one", "raw two"]
    # Two samples side by side in the first panel, one in the last (that task has only one).
    assert fig.axes[0].images[0].get_array().shape == (8, 16, 3)
    assert fig.axes[2].images[0].get_array().shape == (8, 8, 3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # renders without pyplot / a display
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_contact_sheet_rejects_bad_input():
    with pytest.raises(ValueError, match="no tasks"):
        contact_sheet([])
    with pytest.raises(TypeError, match="TaskData or"):
        contact_sheet([np.zeros(3)])


# ----------------------------------------------------------------- notebook figures (issue 5)
import json  # noqa: E402

import plotly.graph_objects as go  # noqa: E402

from c2gr_core.interface import viz  # noqa: E402


def test_mask_rgb_colours_classes_on_black():
    m = np.array([[0, 1], [2, 3]], np.uint8)
    out = viz.mask_rgb(m)
    assert out.shape == (2, 2, 3) and (out[0, 0] == 0).all()
    for (r, c), label in (((0, 1), 1), ((1, 0), 2), ((1, 1), 3)):
        assert np.allclose(out[r, c], CLASS_COLOURS[label - 1] * 255, atol=1)
    with pytest.raises(ValueError, match="label map"):
        viz.mask_rgb(np.zeros((1, 2, 2)))


def test_save_figure_writes_png_for_matplotlib_and_html_for_plotly(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    (png,) = viz.save_figure(fig, tmp_path / "a", "curve")
    assert png.name == "curve.png" and png.read_bytes()[:4] == b"\x89PNG"
    (html,) = viz.save_figure(go.Figure(go.Heatmap(z=[[1, 2]])), tmp_path / "a", "heat")
    assert html.name == "heat.html" and "plotly" in html.read_text()[:5000].lower()
    with pytest.raises(ValueError, match="plain file stem"):
        viz.save_figure(fig, tmp_path, "sub/dir")
    with pytest.raises(TypeError, match="matplotlib Figure or a plotly"):
        viz.save_figure(object(), tmp_path, "x")


def test_show_saves_and_displays_the_figure_once(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: shown.extend(objs))
    fig = Figure()
    fig.subplots()
    assert viz.show(fig, tmp_path, "shown") is None   # a returned figure would be displayed again
    assert (tmp_path / "shown.png").exists()
    (img,) = shown
    assert img.data == (tmp_path / "shown.png").read_bytes()


def test_pairs_gallery_puts_each_image_above_its_mask_with_gaps():
    images, masks = _pair(n=3, size=8)
    other = (images[:1] * 0, masks[:1] * 0)
    fig = viz.pairs_gallery({"task a": {"BJD": (images, masks), "NJD": other}, "task b": {"BJD": other}}, n=2)
    assert len(fig.axes) == 4
    assert [fig.axes[0].get_title(), fig.axes[1].get_title()] == ["BJD", "NJD"]
    assert fig.axes[0].get_ylabel() == "task a" and fig.axes[2].get_ylabel() == "task b"
    panel = fig.axes[0].images[0].get_array()
    assert panel.shape == (16, 8 + viz.GAP_PX + 8, 3)           # two pairs, a white gap between them
    np.testing.assert_array_equal(panel[:8, :8], overlay(images[0], masks[0], 0.0))
    np.testing.assert_array_equal(panel[8:, :8], viz.mask_rgb(masks[0]))
    assert (panel[:, 8:8 + viz.GAP_PX] == 255).all()
    np.testing.assert_array_equal(panel[8:, 8 + viz.GAP_PX:], viz.mask_rgb(masks[1]))
    assert fig.axes[1].images[0].get_array().shape == (16, 8, 3)   # only one pair in that cell
    assert not fig.axes[3].images                                      # task b has no NJD cell
    with pytest.raises(ValueError, match="as many images as masks"):
        viz.pairs_gallery({"t": {"c": (images, masks[:1])}})


def test_grouped_bars_heights_follow_series_and_categories():
    fig = viz.grouped_bars({"s1": {"a": 1.0, "b": 2.0}, "s2": {"b": 5.0, "c": 7.0}})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    h1 = [b.get_height() for b in ax.containers[0]]
    h2 = [b.get_height() for b in ax.containers[1]]
    assert h1[:2] == [1.0, 2.0] and np.isnan(h1[2])                  # s1 has no "c": a gap
    assert np.isnan(h2[0]) and h2[1:] == [5.0, 7.0]
    assert ax.containers[0][1].get_x() < ax.containers[1][1].get_x()  # series side by side in a group


def test_metrics_bar_shows_overall_bwt_tl_per_method():
    rows = [{"method": "a", "overall": 10.0, "bwt": 90.0, "tl": 30.0}, {"method": "b", "overall": 5.0, "bwt": 50.0, "tl": 6.0}]
    ax = viz.metrics_bar(rows).axes[0]
    assert [b.get_height() for b in ax.containers[1]] == [5.0, 50.0, 6.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_forgetting_plot_draws_each_task_from_its_round_on():
    D = np.array([[0.5, np.nan, np.nan], [0.4, 0.7, np.nan], [0.1, 0.6, 0.9]])
    fig = viz.forgetting_plot({"m1": (["t0", "t1", "t2"], D), "m2": (["t0", "t1", "t2"], D * 0.5)})
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and ax.get_title() == "m1"
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [50, 40, 10])
    np.testing.assert_array_equal(ax.lines[2].get_xdata(), [2])
    np.testing.assert_allclose(fig.axes[1].lines[1].get_ydata(), [35, 30])


def test_params_vs_overall_places_points_and_marks_privacy_breakers_hollow():
    pts = [{"method": "c2gr", "params": 4e5, "overall": 80.0}, {"method": "buffer", "params": 5e4, "overall": 85.0,
                                                                "privacy_preserving": False}]
    ax = viz.params_vs_overall(pts).axes[0]
    assert ax.get_xscale() == "log"
    np.testing.assert_allclose(ax.collections[0].get_offsets()[0], [4e5, 80.0])
    np.testing.assert_allclose(ax.collections[1].get_offsets()[0], [5e4, 85.0])
    assert ax.collections[0].get_facecolors()[0][3] == 1          # filled
    assert len(ax.collections[1].get_facecolors()) == 0 or ax.collections[1].get_facecolors()[0][3] == 0  # hollow


def test_embedding_scatter_one_colour_per_label_in_every_panel():
    xy = np.arange(12, dtype=float).reshape(6, 2)
    lab = ["a", "a", "b", "b", "b", "c"]
    fig = viz.embedding_scatter({"p1": (xy, lab), "p2": (xy[:2], ["c", "a"])})
    ax1, ax2 = fig.axes
    assert [len(c.get_offsets()) for c in ax1.collections] == [2, 3, 1]
    # The same label keeps its colour across panels ("c" is the third label overall).
    assert np.allclose(ax2.collections[1].get_facecolors()[0], ax1.collections[2].get_facecolors()[0])
    with pytest.raises(ValueError, match="N labels"):
        viz.embedding_scatter({"bad": (xy, lab[:2])})


def test_similarity_heatmap_has_one_trace_per_matrix():
    a, b = np.eye(3), np.full((3, 3), 0.5)
    fig = viz.similarity_heatmap({"A": a, "B": b}, ["x", "y", "z"])
    assert len(fig.data) == 2 and [t.name for t in fig.data] == ["A", "B"]
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), b)
    assert list(fig.data[0].x) == ["x", "y", "z"]
    assert fig.layout.width is None and fig.layout.autosize   # fills the output area, whatever its width
    json.loads(fig.to_json())   # serialisable for the notebook front end
    with pytest.raises(ValueError, match="expected \\(3, 3\\)"):
        viz.similarity_heatmap({"A": np.eye(2)}, ["x", "y", "z"])


def test_similarity_heatmap_scales_follow_the_off_diagonal_data():
    # Two blocks of similar tasks, all prompts close to 1 (the learned case of Fig. 7).
    m = np.array([[1.0, 0.99, 0.95], [0.99, 1.0, 0.95], [0.95, 0.95, 1.0]])
    fig = viz.similarity_heatmap({"A": np.eye(3) * 2 - 1, "B": m}, ["x", "y", "z"])
    a, b = fig.data
    assert (a.zmin, a.zmax) == pytest.approx((-1.05, -0.95))   # constant off-diagonal: a small span around it
    assert (b.zmin, b.zmax) == pytest.approx((0.95, 0.99))   # the blocks span the whole colour scale
    for trace in fig.data:
        assert trace.colorbar.title.text.startswith("cosine")   # the scale is named
        assert trace.showscale is not False
    # Each colour bar sits under its own panel.
    for k, trace in enumerate(fig.data):
        domain = fig.layout[f"xaxis{k + 1 if k else ''}"].domain
        assert domain[0] < trace.colorbar.x < domain[1]
    fixed = viz.similarity_heatmap({"B": m}, ["x", "y", "z"], zmin=-1, zmax=1)
    assert (fixed.data[0].zmin, fixed.data[0].zmax) == (-1, 1)


def test_embedding_scatter_has_one_legend_for_all_panels():
    xy = np.arange(12, dtype=float).reshape(6, 2)
    fig = viz.embedding_scatter({"p1": (xy, list("aabbbc")), "p2": (xy, list("aabbbc"))})
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c"] and legend.get_texts()[0].get_fontsize() >= 9
