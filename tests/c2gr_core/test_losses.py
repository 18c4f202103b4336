"""L_seg = L_dice + L_ce with excluded classes, and the per-class DSC, against hand-worked numbers."""
from __future__ import annotations

import math

import pytest
import torch

from c2gr_core.losses import ce_loss, dice_counts, dice_loss, dice_per_class, predict, seg_loss, task_dsc

EPS = 1e-5  # MONAI DiceLoss smooth_nr = smooth_dr


def _example():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    n = torch.tensor([1, 2, 3])
    masks = torch.stack([torch.randint(0, int(k) + 1, (5, 5)) for k in n]).to(torch.uint8)
    return logits, masks, n


@pytest.mark.parametrize("batch_dice", [True, False])
def test_excluded_channels_do_not_affect_the_loss(batch_dice):
    logits, masks, n = _example()
    base = seg_loss(logits, masks, n, batch_dice)
    moved = logits.clone()
    moved[0, 2:] += 40 * torch.randn(2, 5, 5, dtype=torch.float64)   # sample 0 has 1 class
    moved[1, 3] -= 25.0                                             # sample 1 has 2 classes
    assert seg_loss(moved, masks, n, batch_dice) == base
    # the same change counts once those channels are included
    full = torch.tensor([3, 3, 3])
    assert seg_loss(moved, masks, full, batch_dice) != seg_loss(logits, masks, full, batch_dice)
    x = logits.clone().requires_grad_(True)
    seg_loss(x, masks, n, batch_dice).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 2:].abs().max() == 0 and x.grad[1, 3].abs().max() == 0
    assert x.grad[2, 3].abs().max() > 0


# A 2x2 image of a 1-class task in a C_max = 2 head; channel 2 is excluded and very confident.
Z = torch.tensor([[[[1.0, -0.5], [0.2, 2.0]],      # background
                   [[0.0, 1.5], [-1.0, 0.3]],      # class 1
                   [[50.0, 50.0], [50.0, 50.0]]]], dtype=torch.float64)  # excluded class 2
Y = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)


def _hand_probs():
    p = {}
    for i in range(2):
        for j in range(2):
            z0, z1 = float(Z[0, 0, i, j]), float(Z[0, 1, i, j])
            s = math.exp(z0) + math.exp(z1)
            p[i, j] = (math.exp(z0) / s, math.exp(z1) / s)
    return p


def test_ce_against_a_hand_loop_over_pixels():
    p = _hand_probs()
    want = sum(-math.log(p[i, j][int(Y[0, i, j])]) for i in range(2) for j in range(2)) / 4
    assert float(ce_loss(Z, Y, 1)) == pytest.approx(want, rel=1e-12)


def test_dice_against_a_hand_computation():
    p = _hand_probs()
    inter = sum(p[i, j][1] for i in range(2) for j in range(2) if Y[0, i, j] == 1)
    psum = sum(p[i, j][1] for i in range(2) for j in range(2))
    want = 1 - (2 * inter + EPS) / (psum + 2 + EPS)                  # |G| = 2; background not in Dice
    assert float(dice_loss(Z, Y, 1)) == pytest.approx(want, rel=1e-9)
    assert float(seg_loss(Z, Y, 1)) == pytest.approx(want + float(ce_loss(Z, Y, 1)), rel=1e-12)


def test_batch_and_per_sample_dice_by_hand():
    logits, masks, n = _example()
    probs = []
    for b in range(3):
        z = logits[b, : int(n[b]) + 1]
        probs.append(torch.softmax(z, 0))
    def parts(b, c):
        p, g = probs[b][c], (masks[b] == c).double()
        return float((p * g).sum()), float(p.sum()), float(g.sum())
    # per sample: mean over included (sample, foreground class) pairs
    pairs = [(b, c) for b in range(3) for c in range(1, int(n[b]) + 1)]
    per = [1 - (2 * i + EPS) / (ps + gs + EPS) for i, ps, gs in (parts(b, c) for b, c in pairs)]
    assert float(dice_loss(logits, masks, n, batch_dice=False)) == pytest.approx(sum(per) / len(per), rel=1e-9)
    # batch: per class pooled over the samples that include it, then mean over classes 1..3
    pooled = []
    for c in range(1, 4):
        i, ps, gs = (sum(v) for v in zip(*(parts(b, c) for b in range(3) if n[b] >= c)))
        pooled.append(1 - (2 * i + EPS) / (ps + gs + EPS))
    assert float(dice_loss(logits, masks, n, batch_dice=True)) == pytest.approx(sum(pooled) / 3, rel=1e-9)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_perfect_prediction_gives_zero_dice(batch_dice):
    _, masks, n = _example()
    masks[0] = 0                       # a sample whose class is absent from its ground truth
    onehot = torch.nn.functional.one_hot(masks.long(), 4).permute(0, 3, 1, 2).double()
    logits = 60 * onehot - 30
    assert float(dice_loss(logits, masks, n, batch_dice)) < 1e-4
    assert float(ce_loss(logits, masks, n)) < 1e-12
    wrong = 60 * (1 - onehot) - 30
    assert float(dice_loss(wrong, masks, n, batch_dice)) > 0.9


def test_dsc_per_class_hand_worked():
    gt = torch.tensor([[[1, 1, 0], [2, 2, 0], [0, 0, 0]],     # image A, task with 2 classes
                       [[1, 0, 0], [1, 0, 0], [0, 0, 0]]])    # image B, task with 1 class
    pred = torch.tensor([[[1, 0, 0], [2, 2, 2], [0, 0, 0]],
                         [[1, 1, 0], [0, 0, 0], [2, 0, 0]]])  # the 2 in B is not B's class: ignored
    n = torch.tensor([2, 1])
    # class 1: A |P&G|=1 |P|=1 |G|=2, B 1, 2, 2 -> 2*2/(3+4); class 2: A only, 2, 3, 2 -> 2*2/(3+2)
    counts = dice_counts(pred, gt, n)
    torch.testing.assert_close(counts, torch.tensor([[2.0, 2.0], [3.0, 3.0], [4.0, 2.0]], dtype=torch.float64))
    dsc = dice_per_class(pred, gt, n)
    torch.testing.assert_close(dsc, torch.tensor([4 / 7, 4 / 5], dtype=torch.float64))
    assert task_dsc(dsc, 2) == pytest.approx((4 / 7 + 4 / 5) / 2)
    # summing counts of batches equals counting the whole split at once
    torch.testing.assert_close(dice_counts(pred[:1], gt[:1], n[:1], c_max=2) + dice_counts(pred[1:], gt[1:], n[1:], c_max=2),
                               counts)
    # a class with empty ground truth over the whole split is NaN (MONAI ignore_empty=True), not in the mean
    only_b = dice_per_class(pred[1:], gt[1:], torch.tensor([2]))
    assert only_b[0] == pytest.approx(0.5) and math.isnan(only_b[1])
    assert task_dsc(only_b, 2) == pytest.approx(0.5)


def test_predict_never_outputs_an_excluded_class():
    logits, _, n = _example()
    logits[:, 3] += 100.0                                       # channel 3 wins wherever allowed
    lab = predict(logits, n)
    assert lab.shape == (3, 5, 5)
    for b in range(3):
        assert int(lab[b].max()) <= int(n[b])
    assert (lab[2] == 3).all()
    torch.testing.assert_close(lab[0], logits[0, :2].argmax(0))


def test_bad_input_is_named():
    logits, masks, n = _example()
    bad = masks.clone()
    bad[0, 0, 0] = 2                                            # sample 0 only has class 1
    with pytest.raises(ValueError, match=r"sample\(s\) \[0\]"):
        seg_loss(logits, bad, n)
    with pytest.raises(ValueError, match="n_classes must lie in"):
        seg_loss(logits, masks, torch.tensor([1, 2, 4]))
    with pytest.raises(ValueError, match="masks must have shape"):
        seg_loss(logits, masks[:, :4], n)
    with pytest.raises(ValueError, match="logits must have shape"):
        predict(logits[0], n)


def test_groups_pool_the_dice_within_each_task_only():
    """A mixed replay batch: Dice pooled per task then averaged equals the mean of per-task losses."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6, 6)
    masks = torch.randint(0, 3, (4, 6, 6))
    n = torch.tensor([2, 2, 1, 1])
    masks[2:] = masks[2:].clamp(max=1)
    groups = torch.tensor([0, 0, 1, 1])
    from c2gr_core.losses import ce_loss, dice_loss, seg_loss
    want = (dice_loss(logits[:2], masks[:2], n[:2]) + dice_loss(logits[2:], masks[2:], n[2:])) / 2 \
        + ce_loss(logits, masks, n)
    assert torch.allclose(seg_loss(logits, masks, n, groups=groups), want)
    assert not torch.allclose(seg_loss(logits, masks, n), want)
