"""Replay quality (sec. 4.4.2) and cost (sec. 4.4.5): correspondence DSC, feature-FID, Inception
loading, the replay table of a real tiny run, learnable-parameter counts."""
from __future__ import annotations


import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from c2gr_core.models.segmentor import PromptedUNet
from c2gr_core.analysis.quality import COPY_LABEL, CORRESPONDENCE_LABEL, FEATURE_FID_LABEL, INCEPTION_FID_LABEL, InceptionFeatures, SegmentorFeatures, copy_ratio, correspondence_dsc, feature_fid, learnable_params, replay_quality
from c2gr_core.prompting.rups import PlainPrompt
from c2gr_core.experiment.runs import load_method, load_run_task, method_context
from data_catalog.catalog import get_card

from tiny_runs import STREAM, small_cfg, tiny_runs


@pytest.fixture(scope="module")
def runs():
    return tiny_runs()


@pytest.fixture(scope="module")
def joint(runs):
    return load_method(runs["joint"])


class FixedReference:
    """A stand-in reference whose predictions are given."""
    def __init__(self, pred):
        self.pred = torch.as_tensor(pred)
        self.calls = []

    def predict(self, images, task):
        self.calls.append((len(images), task))
        start = sum(n for n, _ in self.calls[:-1])
        return self.pred[start:start + len(images)]


# ------------------------------------------------------------------ correspondence DSC
def test_correspondence_dsc_by_hand():
    gen = torch.tensor([[[1, 1, 0], [2, 0, 0]],
                        [[0, 2, 2], [0, 0, 3]]])
    ref = torch.tensor([[[1, 0, 0], [2, 2, 0]],
                        [[0, 2, 0], [0, 0, 0]]])
    # class 1: |A|=2 |B|=1 |A&B|=1 -> 2/3; class 2: |A|=3 |B|=3 |A&B|=2 -> 4/6;
    # class 3: generated once, never predicted -> 0 (not NaN: the generator drew it)
    out = correspondence_dsc(torch.zeros(2, 3, 2, 3), gen, FixedReference(ref), task=5, n_classes=3, batch_size=1)
    np.testing.assert_allclose(out["per_class"], [2 / 3, 4 / 6, 0.0])
    assert out["mean"] == pytest.approx((2 / 3 + 4 / 6 + 0) / 3)
    # a class absent from both sides is left out of the mean
    out = correspondence_dsc(torch.zeros(2, 3, 2, 3), torch.where(gen == 3, 0, gen), FixedReference(ref), 0, n_classes=3)
    assert np.isnan(out["per_class"][2]) and out["mean"] == pytest.approx((2 / 3 + 4 / 6) / 2)


def test_correspondence_dsc_is_one_when_masks_are_the_references_predictions(joint):
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    masks = joint.predict(images, 1)
    out = correspondence_dsc(images, masks, joint, task=1, n_classes=3)
    present = [c for c in (1, 2, 3) if (masks == c).any()]
    assert present and out["mean"] == 1.0
    np.testing.assert_array_equal(out["per_class"][np.array(present) - 1], 1.0)
    other = torch.where(masks == present[0], 0, present[0])       # swap one class off and on
    assert correspondence_dsc(images, other, joint, 1, 3)["per_class"][present[0] - 1] == 0.0


def test_correspondence_dsc_bad_input():
    ref = FixedReference(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside 0..2"):
        correspondence_dsc(torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 3), ref, 0, n_classes=2)
    with pytest.raises(ValueError, match="same N"):
        correspondence_dsc(torch.zeros(2, 3, 4, 4), torch.zeros(1, 4, 4), ref, 0, n_classes=2)


# ------------------------------------------------------------------------ feature-FID
def identity(x):
    return x


def exact_moments(n, mean, cov, seed=0):
    """n points whose sample mean and (n-1)-normalised covariance are exactly `mean` and `cov`."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T   # whiten: sample cov = I
    return torch.from_numpy(mean + z @ np.linalg.cholesky(cov).T)


def test_copy_ratio_by_hand():
    # 1-pixel images: training set {0, 10}; held-out real 1 and 9 lie 1 from it (median 1);
    # generated 0.5 and 10 lie 0.5 and 0 from it (median 0.25).
    img = lambda *v: torch.tensor(v, dtype=torch.float32).reshape(-1, 1, 1, 1)  # noqa: E731
    assert copy_ratio(img(0.5, 10), img(0, 10), img(1, 9)) == pytest.approx(0.25)
    assert copy_ratio(img(0, 10, 10), img(0, 10), img(1, 9)) == 0.0


def test_copy_ratio_near_one_for_new_draws_and_near_zero_for_copies():
    g = torch.Generator().manual_seed(0)
    train, held_out, new = (torch.randn(n, 3, 8, 8, generator=g) for n in (48, 64, 64))
    assert copy_ratio(new, train, held_out) == pytest.approx(1.0, abs=0.1)
    copies = train[torch.randint(0, 48, (64,), generator=g)] + 0.01 * torch.randn(64, 3, 8, 8, generator=g)
    assert copy_ratio(copies, train, held_out) < 0.05
    # chunks of the training set give the same nearest neighbours
    assert copy_ratio(copies, train, held_out, chunk=5) == pytest.approx(copy_ratio(copies, train, held_out), rel=1e-12)
    assert copy_ratio(new, train.numpy(), held_out, chunk=7) == pytest.approx(copy_ratio(new, train, held_out), rel=1e-12)


def test_copy_ratio_bad_input():
    x = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match="generated_images"):
        copy_ratio(torch.zeros(0, 3, 8, 8), x, x + 1)
    with pytest.raises(ValueError, match="different sizes"):
        copy_ratio(torch.zeros(4, 3, 4, 4), x, x + 1)
    with pytest.raises(ValueError, match="held-out images include copies"):
        copy_ratio(x, x, x)
    with pytest.raises(ValueError, match="chunk"):
        copy_ratio(x, x, x + 1, chunk=0)


def test_feature_fid_matches_the_frechet_distance_of_two_gaussians():
    a = exact_moments(50, np.array([0.0, 0.0]), np.diag([1.0, 4.0]))
    b = exact_moments(60, np.array([1.0, 2.0]), np.diag([4.0, 1.0]), seed=1)
    # diagonal covariances commute: |dmu|^2 + sum (sigma_a - sigma_b)^2 = 1 + 4 + (1-2)^2 + (2-1)^2
    assert feature_fid(a, b, identity) == pytest.approx(7.0, abs=1e-6)
    # a general pair, by hand with numpy/scipy
    ca, cb = np.array([[2.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.3], [-0.3, 0.5]])
    ma, mb = np.array([0.5, -1.0]), np.array([-0.5, 0.0])
    a, b = exact_moments(40, ma, ca, seed=2), exact_moments(40, mb, cb, seed=3)
    hand = np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2 * np.real(scipy.linalg.sqrtm(ca @ cb)))
    assert feature_fid(a, b, identity) == pytest.approx(hand, abs=1e-6)


def test_feature_fid_zero_for_the_same_set_and_growing_with_a_shift(joint):
    real = torch.from_numpy(load_run_task(tiny_runs()["joint"], 0).test.images)
    ext = SegmentorFeatures(joint, 0, batch_size=3)
    assert ext.label == FEATURE_FID_LABEL and "FID" != ext.label
    feats = ext(real)
    assert feats.shape == (len(real), 32)                              # channels[-1] of the tiny segmentor
    assert abs(feature_fid(real, real, ext)) < 1e-4
    fids = [feature_fid(real, (real + s).clamp(-1, 1), ext) for s in (0.2, 0.6)]
    assert 0 < fids[0] < fids[1]
    # 2-D toy: shifting every point by (s, s) adds exactly 2 s^2
    x = exact_moments(30, np.zeros(2), np.eye(2))
    assert [feature_fid(x, x + s, identity) for s in (0, 1, 2)] == pytest.approx([0, 2, 8], abs=1e-6)


def test_feature_fid_bad_input():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="at least 2"):
        feature_fid(x, x[:1], identity)
    with pytest.raises(ValueError, match=r"\(N, F >= 2\)"):
        feature_fid(x[:, :1], x[:, :1], identity)


# ------------------------------------------------------------------- Inception loading
def test_inception_weights_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not downloaded.*local file"):
        InceptionFeatures(tmp_path / "inception.pt")
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        InceptionFeatures(None)


def test_inception_loading_path(tmp_path):
    # Only the loading path is tested: these are randomly initialised weights, not ImageNet ones,
    # so the features mean nothing. Real use needs a user-supplied torchvision state dict.
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception.pt")
    ext = InceptionFeatures(tmp_path / "inception.pt")
    assert ext.label == INCEPTION_FID_LABEL
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    f = ext(x)
    assert f.shape == (3, 2048) and torch.isfinite(f).all()
    # the same net by hand: [-1,1] -> ImageNet normalisation at 299, then torchvision's transform_input,
    # which maps it back to [-1, 1]; pool3 is the flattened average pool before fc.
    net.eval()
    y = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        h = y
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            h = getattr(net, name)(h)
        expected = h.mean(dim=(2, 3))
    torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-4)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a torchvision inception_v3"):
        InceptionFeatures(tmp_path / "other.pt")


# --------------------------------------------------------------------- the replay table
def test_replay_quality_on_a_tiny_run(runs):
    rows = replay_quality(runs["c2gr"], runs["joint"])
    assert [r["task"] for r in rows] == ["fundus-a"] and rows[0]["round"] == 1
    r = rows[0]
    assert r["n_pairs"] == 8 and r["n_real"] == small_cfg().data.n_test   # replay_per_task pairs were kept
    assert 0.0 <= r[CORRESPONDENCE_LABEL] <= 1.0 and set(r["per_class"]) == {"optic disc", "optic cup"}
    assert np.isfinite(r[FEATURE_FID_LABEL]) and r[FEATURE_FID_LABEL] > 0
    assert not any(k == "FID" for k in r) and INCEPTION_FID_LABEL not in r
    assert np.isfinite(r[COPY_LABEL]) and r[COPY_LABEL] > 0
    # the same table from an already loaded reference
    again = replay_quality(runs["c2gr"], load_method(runs["joint"]), round=1)
    assert again[0][FEATURE_FID_LABEL] == pytest.approx(r[FEATURE_FID_LABEL], rel=1e-6)


def test_replay_quality_errors(runs, tmp_path):
    with pytest.raises(ValueError, match="no replayed samples"):
        replay_quality(runs["joint"], runs["joint"])
    with pytest.raises(ValueError, match=r"rounds with samples: \[1\]"):
        replay_quality(runs["c2gr"], runs["joint"], round=0)
    only_mms = get_method_on(["mms-a"], "joint")
    with pytest.raises(ValueError, match="never trained on task 'fundus-a'"):
        replay_quality(runs["c2gr"], only_mms)


def get_method_on(names, method):
    from c2gr_core.methods import get_method

    ctx = method_context(small_cfg(), [get_card(n) for n in names])
    return get_method(method)(ctx)


# ------------------------------------------------------------------------------- cost
def test_learnable_params(runs):
    cfg = small_cfg()
    n_joint = learnable_params("joint", cfg, STREAM)
    seg = PromptedUNet(cfg.segmentor, 3, 4, cfg.prompt.node_dim, cfg.prompt.n_tokens)
    plain = PlainPrompt(64, cfg.prompt.node_dim)        # the hash encoder gives 64-d embeddings
    assert n_joint == sum(p.numel() for p in [*seg.parameters(), *plain.parameters()])
    n_c2gr = learnable_params("c2gr", cfg, STREAM)
    assert n_c2gr > n_joint                              # + denoiser and prompt graph
    assert n_c2gr == load_method(runs["c2gr"]).n_learnable_params()
    # IndividualTrain allocates one model per round: the count is at the end of the stream
    assert learnable_params("individual", cfg, STREAM) == 2 * n_joint
    assert learnable_params("individual", cfg, STREAM[:1]) == learnable_params("joint", cfg, STREAM[:1])
    with pytest.raises(ValueError, match="unknown method"):
        learnable_params("nope", cfg, STREAM)
