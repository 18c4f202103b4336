"""Downstream adaptation (sec. 4.4.4, Table 2) of a tiny run's final model vs. Scratch."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from c2gr_core.analysis.downstream import SCRATCH, adapt, extend_pool, segmentation_path, table_rows
from c2gr_core.methods import get_method
from c2gr_core.experiment.runs import load_method, method_context
from c2gr_core.prompting.text_encoders import HashEncoder
from data_catalog.catalog import get_card

from tiny_runs import small_cfg, tiny_runs

DOWN = ["synthetic:drive", "synthetic:goals"]   # GOALS has 3 classes = the run's C_max


@pytest.fixture(scope="module")
def runs():
    return tiny_runs()


def test_adapt_gives_a_scratch_row_and_a_run_row(runs):
    rows = adapt(runs["c2gr"], DOWN, epochs=1)
    assert [r["model"] for r in rows] == [SCRATCH, "c2gr"]
    assert rows[1]["source"] == str(runs["c2gr"]) and rows[0]["source"] is None
    for r in rows:
        vals = [r["drive"], r["goals"]]
        assert all(0.0 <= v <= 1.0 for v in vals)
        assert r["overall"] == pytest.approx(np.mean(vals))
        assert set(r["per_class"]["goals"]) == set(get_card("goals").classes)
    head, *body = table_rows(rows)
    assert head == ["model", "drive", "goals", "overall"] and body[1][0] == "c2gr"


def test_each_downstream_task_starts_from_the_untouched_final_model(runs):
    m = load_method(runs["joint"])
    before = {k: v.clone() for k, v in m.segmentor.state_dict().items()}
    rows = adapt(m, DOWN[:1], epochs=1, scratch=False, lr=1e-2)   # plain prompts: just projected
    assert [r["model"] for r in rows] == ["joint"]
    after = m.segmentor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapt_is_deterministic_and_trains(runs):
    m = load_method(runs["joint"])
    a = adapt(m, DOWN[:1], epochs=1, scratch=False)
    b = adapt(m, DOWN[:1], epochs=1, scratch=False)
    assert a[0]["drive"] == b[0]["drive"]
    c = adapt(m, DOWN[:1], epochs=1, scratch=False, lr=5e-2)
    assert c[0]["drive"] != a[0]["drive"]                        # the learning rate reaches the training


def test_downstream_task_with_too_many_classes_is_refused():
    ctx = method_context(small_cfg(), [get_card("busi")])        # C_max = 1
    m = get_method("finetune")(ctx)
    with pytest.raises(ValueError, match=r"\('segpc', 2\).*C_max = 1"):
        adapt(m, ["synthetic:segpc"], epochs=1)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        adapt(m, ["synthetic:busi"], epochs=0)


def test_extend_pool_keeps_the_upstream_rows(runs):
    m = load_method(runs["c2gr"])
    enc = HashEncoder()
    for name, site in (("drive", True), ("goals", False)):    # drive shares fundus photography with fundus-a
        card = get_card(name)
        pool = extend_pool(m.ctx.emb, m.ctx.cards, card, enc)
        assert pool.names == ["fundus-a", "mms-a", name]
        torch.testing.assert_close(pool.e[:2], m.ctx.emb.e)
        assert ("acquired" in pool.texts[-1]) == site
        torch.testing.assert_close(pool.e[2], enc.encode([pool.texts[-1]])[0])
        seg, prompt = segmentation_path(m)
        assert prompt is m.model.prompt and prompt(pool).shape == (3, small_cfg().prompt.node_dim)
