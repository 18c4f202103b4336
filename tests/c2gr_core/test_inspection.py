"""Inspection helpers: generated pairs, their quality, stored replay, prompt similarity, t-SNE."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from c2gr_core.analysis import inspection
from c2gr_core.methods import get_method
from c2gr_core.analysis.quality import CORRESPONDENCE_LABEL, FEATURE_FID_LABEL
from c2gr_core.experiment.runs import load_method, load_run_task, method_context
from data_catalog.catalog import get_card

from tiny_runs import STREAM, small_cfg, tiny_runs


def _method(name, tmp_path, tasks=("fundus-a", "fundus-b", "mms-a")):
    cfg = small_cfg()
    cfg.data.image_size = 16
    torch.manual_seed(0)
    return get_method(name)(method_context(cfg, [get_card(t) for t in tasks], work_dir=tmp_path))


def test_sample_task_pairs_are_seeded_and_keep_the_tasks_labels(tmp_path):
    m = _method("c2gr", tmp_path)
    x, y = inspection.sample_task_pairs(m, "fundus-a", 3, seed=5, steps=2)
    assert x.shape == (3, 3, 16, 16) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    assert y.shape == (3, 16, 16) and y.dtype == np.uint8 and y.max() <= 2   # fundus has 2 classes of C_max 3
    x2, y2 = inspection.sample_task_pairs(m, 0, 3, seed=5, steps=2)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = inspection.sample_task_pairs(m, 0, 3, seed=6, steps=2)
    assert not np.array_equal(x, x3)
    per_task = inspection.sample_pairs_per_task(m, 2, steps=2)
    assert list(per_task) == ["fundus-a", "fundus-b", "mms-a"] and per_task["mms-a"][0].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="not in the stream"):
        inspection.sample_task_pairs(m, "busi", 1)
    with pytest.raises(TypeError, match="no image-mask generator"):
        inspection.sample_task_pairs(_method("finetune", tmp_path), 0, 1)


def test_prompt_similarity_under_rups_and_without(tmp_path):
    m = _method("c2gr", tmp_path)
    s = inspection.prompt_similarity(m)
    T = 3
    assert s["names"] == ["fundus-a", "fundus-b", "mms-a"]
    e = m.ctx.emb.e.double().numpy()
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(s["text"], e @ e.T, atol=1e-6)
    np.testing.assert_allclose(s["segmentor"], s["generator"])          # one shared prompt
    assert 0 <= s["eta"] <= 1 and s["eta"] == pytest.approx(0.5)         # untrained: the initial eta
    assert list(s["subgraph_weights"]) == ["I", "A", "SO", "I+A", "I+SO", "A+SO"]
    assert sum(s["subgraph_weights"].values()) == pytest.approx(1.0)
    row_norm = m.ctx.cfg.prompt.relation_norm == "row"
    for key, a in s["attention"].items():                                  # eq. 4 row sums
        assert a.shape == (T, T)
        cos = s["component_cosine"][key]
        mass = np.abs(cos).sum(1) if row_norm else 1.0                     # rups.py: relation_norm
        np.testing.assert_allclose(a.sum(1), s["eta"] + (1 - s["eta"]) * cos.sum(1) / mass, atol=1e-5)
    assert inspection.prompt_similarity(m, round=1)["segmentor"].shape == (2, 2)
    plain = inspection.prompt_similarity(_method("c2gr-norups", tmp_path))
    assert "eta" not in plain and not np.allclose(plain["segmentor"], plain["generator"])
    seg = inspection.prompt_similarity(_method("finetune", tmp_path))
    assert seg["segmentor"].shape == (T, T) and "generator" not in seg
    with pytest.raises(ValueError, match="outside"):
        inspection.prompt_similarity(m, round=3)


def test_features_pixels_and_tsne(tmp_path):
    m = _method("c2gr", tmp_path)
    rng = np.random.default_rng(0)
    images = {"fundus-a": rng.uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32),
              "mms-a": rng.uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)}
    f, labels = inspection.task_features(m, images)
    assert f.shape == (7, m.ctx.cfg.segmentor.channels[-1])   # pooled bottleneck channels
    assert labels == ["fundus-a"] * 4 + ["mms-a"] * 3
    p, plabels = inspection.pixel_features(images)
    assert p.shape == (7, 3 * 16 * 16) and plabels == labels
    np.testing.assert_array_equal(p[4], images["mms-a"][0].ravel())
    xy = inspection.tsne_2d(p, seed=0)
    assert xy.shape == (7, 2) and np.isfinite(xy).all()
    np.testing.assert_allclose(xy, inspection.tsne_2d(p, seed=0))      # seeded
    with pytest.raises(ValueError, match="N >= 4"):
        inspection.tsne_2d(p[:3])


def test_pairs_quality_rows_on_a_tiny_run():
    runs = tiny_runs()
    c2gr, joint = load_method(runs["c2gr"]), load_method(runs["joint"])
    pairs = inspection.sample_pairs_per_task(c2gr, 4, steps=2)
    real = {c.name: load_run_task(runs["joint"], c.name).test.images for c in joint.ctx.cards}
    rows = inspection.pairs_quality(pairs, joint, real)
    assert [r["task"] for r in rows] == [e.split(":")[1] for e in STREAM]
    for r in rows:
        assert r["n_pairs"] == 4 and r[FEATURE_FID_LABEL] >= 0
        assert np.isnan(r[CORRESPONDENCE_LABEL]) or 0 <= r[CORRESPONDENCE_LABEL] <= 1
    with pytest.raises(ValueError, match="no real images"):
        inspection.pairs_quality(pairs, joint, {})
    with pytest.raises(ValueError, match="never trained on task 'busi'"):
        inspection.pairs_quality({"busi": pairs["fundus-a"]}, joint, real)


def test_replay_samples_of_a_run_and_bad_files(tmp_path):
    runs = tiny_runs()
    samples = inspection.replay_samples(runs["c2gr"])
    assert list(samples) == [1] and list(samples[1]) == [0]     # two tasks: round 1 replays task 0
    x, y = inspection.load_pairs(samples[1][0])
    assert x.shape[1:] == (3, 32, 32) and len(x) == len(y) == small_cfg().train.replay_per_task
    assert inspection.replay_samples(runs["joint"]) == {}
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="bad.npz"):
        inspection.load_pairs(bad)
