"""Every method of sec. 4.3.1 end to end on a tiny 3-task stream, plus each baseline's defining property.

Each method runs once per module (the `runs` fixture caches it); the property tests reuse those runs.
"""
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from c2gr_core.methods import available_methods
from c2gr_core.methods.distill import kd_loss, local_pod
from c2gr_core.methods.ewc import diagonal_fisher, ewc_penalty
from c2gr_core.methods.replay_buffer import ReplayBuffer
from c2gr_core.experiment.runner import run_stream
from tiny_runs import small_cfg
from data_catalog.catalog import load_task

STREAM = ["synthetic:fundus-a", "synthetic:mms-a", "synthetic:busi"]
METHODS = ["finetune", "joint", "individual", "ewc", "distill", "replay-buffer", "gr",
           "c2gr", "c2gr-njd", "c2gr-norups", "cgr"]
NOT_PRIVATE = {"joint", "replay-buffer"}




@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = run_stream(STREAM, method, small_cfg(), root / method, progress=False)
        return cache[method]
    return get


def fresh(result, state_file=None):
    """A new instance of the run's method on the same context, optionally loaded from a checkpoint."""
    m = type(result.method)(result.method.ctx)
    if state_file is not None:
        m.load_state_dict(torch.load(result.out_dir / "checkpoints" / state_file, weights_only=True))
    return m


def test_every_method_of_the_comparison_is_registered():
    assert set(METHODS) <= set(available_methods())


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_end_to_end(runs, method):
    r = runs(method)
    out = r.out_dir
    for f in ("config.json", "stream.json", "matrix.csv", "metrics.json", "per_class.json", "timings.json",
              "environment.json", "progress.json", "checkpoints/round_02.pt"):
        assert (out / f).exists(), f
    assert not (out / "work").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and m["method"] == method
    assert m["privacy_preserving"] == (method not in NOT_PRIVATE)
    assert m["learnable_params"] == r.method.n_learnable_params() > 0
    low = r.matrix[np.tril_indices(3)]
    assert np.isfinite(low).all() and ((0 <= low) & (low <= 1)).all()
    assert np.isnan(r.matrix[np.triu_indices(3, k=1)]).all()
    replay = [row["replay_pairs"] for row in json.loads((out / "timings.json").read_text())]
    uses_replay = method in {"replay-buffer", "gr", "c2gr", "c2gr-njd", "c2gr-norups", "cgr"}
    assert replay == ([0, 8, 16] if uses_replay else [0, 0, 0])


def test_parameter_counts(runs):
    n = {m: runs(m).method.n_learnable_params() for m in ("finetune", "individual", "ewc", "distill", "gr")}
    assert n["individual"] == 3 * n["finetune"]            # three stored segmentors
    assert n["ewc"] == n["distill"] == n["finetune"]        # anchors and old model are not learnable
    assert n["gr"] > n["finetune"]                           # + image denoiser and its prompt


# --------------------------------------------------------------------------------- IndividualTrain
def test_individual_never_forgets_and_restores_all_models(runs):
    r = runs("individual")
    assert r.matrix[0, 0] == r.matrix[1, 0] == r.matrix[2, 0]
    assert r.matrix[1, 1] == r.matrix[2, 1]
    x = torch.from_numpy(load_task(STREAM[0], 32, seed=0, n_synthetic=(16, 4, 8)).test.images)
    after_round_0 = fresh(r, "round_00.pt")
    assert len(after_round_0.segmentors) == 1
    torch.testing.assert_close(after_round_0.predict(x, 0), r.method.predict(x, 0), rtol=0, atol=0)
    restored = fresh(r, "round_02.pt")
    assert len(restored.segmentors) == 3
    for a, b in zip(restored.segmentors.parameters(), r.method.segmentors.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not trained yet"):
        after_round_0.predict(x, 1)


@pytest.mark.parametrize("method", ["individual", "ewc", "distill", "gr"])
def test_interrupted_run_resumes_to_the_same_matrix(runs, method, tmp_path):
    full = runs(method).matrix
    run_stream(STREAM, method, small_cfg(), tmp_path / "cut", progress=False, max_rounds=2)
    resumed = run_stream(STREAM, method, small_cfg(), tmp_path / "cut", progress=False, resume=True).matrix
    np.testing.assert_array_equal(np.nan_to_num(resumed, nan=-1), np.nan_to_num(full, nan=-1))


# ----------------------------------------------------------------------------------------- EWC
def test_ewc_fisher_and_penalty_by_hand():
    # f(x) = w.x, batch loss = mean (w.x - y)^2, per-sample gradient 2 (w.x - y) x.
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    batches = [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 0.0])),
               (torch.tensor([[1.0, 1.0]]), torch.tensor([1.0]))]
    # batch 1: mean of [2, 0] and [0, -4] = [1, -2] -> squared [1, 4]
    # batch 2: w.x - y = -2 -> gradient [-4, -4] -> squared [16, 16];  Fisher = mean = [8.5, 10]
    fisher = diagonal_fisher(dict(model.named_parameters()),
                             lambda b: ((model(b[0]).squeeze(1) - b[1]) ** 2).mean(), batches)
    torch.testing.assert_close(fisher["weight"], torch.tensor([[8.5, 10.0]]))
    anchor = {"weight": torch.tensor([[1.0, -2.0]])}
    theta = {"weight": torch.tensor([[1.5, -2.5]])}
    # lambda / 2 * (8.5 * 0.25 + 10 * 0.25) with lambda = 2
    assert float(ewc_penalty(theta, fisher, anchor, lam=2.0)) == pytest.approx(4.625)
    assert float(ewc_penalty(anchor, fisher, anchor, lam=2.0)) == 0.0


def test_ewc_penalty_zero_at_anchor_positive_after_a_change(runs):
    r = runs("ewc")
    m = r.method
    assert m.fisher and set(m.fisher) == set(m.anchored_params())
    assert float(m.penalty().detach()) == 0.0                          # the anchor is the final model
    name, p = max(m.anchored_params().items(), key=lambda kv: float(m.fisher[kv[0]].max()))
    with torch.no_grad():
        p.add_(0.01)
    try:
        expected = 0.5 * m.lam * float(m.fisher[name].double().sum()) * 0.01 ** 2
        assert float(m.penalty().detach()) == pytest.approx(expected, rel=1e-3) and expected > 0
    finally:
        with torch.no_grad():
            p.sub_(0.01)
    # Online accumulation with gamma = 1: the Fisher only grows from round to round.
    f0 = torch.load(r.out_dir / "checkpoints/round_00.pt", weights_only=True)["extra"]["fisher"]
    f1 = torch.load(r.out_dir / "checkpoints/round_01.pt", weights_only=True)["extra"]["fisher"]
    assert all((f1[k] >= f0[k]).all() for k in f0) and any((f1[k] > f0[k]).any() for k in f0)
    assert float(fresh(r, "round_02.pt").penalty().detach()) == 0.0


# --------------------------------------------------------------------------------- distillation
def test_kd_loss_matches_a_loop_over_pixels():
    torch.manual_seed(0)
    old, new = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    n_classes, T = torch.tensor([1, 2]), 2.0
    total = 0.0
    for b in range(2):
        k = int(n_classes[b]) + 1                         # background + the task's classes
        for i in range(2):
            for j in range(2):
                p = torch.softmax(old[b, :k, i, j] / T, 0)
                q = torch.softmax(new[b, :k, i, j] / T, 0)
                total += float((p * (p / q).log()).sum())
    assert float(kd_loss(old, new, n_classes, T)) == pytest.approx(T ** 2 * total / 8, rel=1e-5)


def test_local_pod_by_hand():
    h = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])        # squared: [[1, 4], [9, 16]]
    # scale 1: mean along W per row [2.5, 12.5], along H per column [5, 10]; scale 2: each pixel twice
    raw = torch.tensor([2.5, 12.5, 5.0, 10.0, 1, 1, 4, 4, 9, 9, 16, 16])
    torch.testing.assert_close(local_pod(h, scales=(1, 2))[0], raw / raw.norm())


def test_distill_loss_zero_when_model_equals_old_one(runs):
    m = runs("distill").method
    m.before_round(2, None)                                  # old model := current model
    x = torch.from_numpy(load_task(STREAM[2], 32, seed=2, n_synthetic=(16, 4, 8)).train.images[:6])
    owners = torch.tensor([0, 1, 0, 1, 0, 1])
    losses = m.distill_losses(2, x, owners, m.seg_prompts(2))
    assert float(losses["kd"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["pod"].detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in m.segmentor.encoder[0].parameters():
            p.add_(0.05 * torch.randn_like(p))
    losses = m.distill_losses(2, x, owners, m.seg_prompts(2))
    assert float(losses["kd"].detach()) > 1e-4 and float(losses["pod"].detach()) > 1e-6
    assert sorted(m.past_tasks(3, 6).tolist()) == [0, 0, 1, 1, 2, 2]   # stratified over past tasks


# --------------------------------------------------------------------------------- replay buffer
def test_replay_buffer_holds_exactly_the_budget_of_real_pairs(runs, tmp_path):
    cfg = small_cfg()
    out = tmp_path / "cut"
    run_stream(STREAM, "replay-buffer", cfg, out, progress=False, max_rounds=2)
    buffer = ReplayBuffer(dataclasses.replace(runs("finetune").method.ctx, work_dir=out / "work")).buffer
    assert buffer.tasks() == [0, 1]
    for j in (0, 1):
        real = load_task(STREAM[j], 32, seed=j, n_synthetic=(16, 4, 8)).train
        x, y = buffer.get(j)
        assert len(x) == len(y) == cfg.train.replay_per_task
        matches = set()
        for xi, yi in zip(np.asarray(x, np.float32), np.asarray(y)):
            k = int(np.argmin(np.abs(real.images - xi).reshape(len(real.images), -1).max(1)))
            np.testing.assert_allclose(xi, real.images[k], atol=1e-3)      # float16 on disk
            np.testing.assert_array_equal(yi, real.masks[k])
            matches.add(k)
        assert len(matches) == cfg.train.replay_per_task                 # distinct training pairs
    # A crash after round 2 stored its task but before the round was committed: resume drops it.
    buffer.put(2, np.zeros((3, 3, 32, 32)), np.zeros((3, 32, 32)))
    resumed = run_stream(STREAM, "replay-buffer", cfg, out, progress=False, resume=True).matrix
    np.testing.assert_array_equal(np.nan_to_num(resumed, nan=-1), np.nan_to_num(runs("replay-buffer").matrix, nan=-1))


def test_replay_buffer_default_budget_and_lost_buffer(runs, tmp_path):
    ctx = runs("replay-buffer").method.ctx
    cfg = small_cfg()
    cfg.train.replay_per_task = None
    m = ReplayBuffer(dataclasses.replace(ctx, cfg=cfg, work_dir=tmp_path / "w"))
    assert m.budget(200) == 20 and m.budget(16) == 2 and m.budget(3) == 1
    m.sizes = {0: 8}                                       # the checkpoint says task 0 is buffered
    with pytest.raises(FileNotFoundError, match="work dir"):
        m.before_round(1, None)


# ------------------------------------------------------------------------------------------ GR
def test_gr_masks_are_the_start_of_round_segmentor_predictions(runs):
    r = runs("gr")
    start_of_round_2 = fresh(r, "round_01.pt")
    for j in (0, 1):
        with np.load(r.out_dir / f"samples/round_02/task_{j:02d}.npz") as s:
            images, masks = torch.from_numpy(s["images"].astype(np.float32)), torch.from_numpy(s["masks"]).long()
        assert len(images) == 8
        torch.testing.assert_close(start_of_round_2.predict(images, j), masks, rtol=0, atol=0)
        assert int(masks.max()) <= r.method.ctx.cards[j].n_classes
