"""diffusion.term_sampling "one": each pair trains one of BJD's three terms (eq. 3), weighted 3.

The rows the denoiser sees and the loss are built here by hand, pair by pair, from the definitions
(x_k = sqrt(abar) x0 + sqrt(1 - abar) eps; v = sqrt(abar) eps - sqrt(1 - abar) x0; a clean half's
target is v with eps = 0). Unbiasedness is checked exactly: over the three rotations of one
assignment every pair meets every term once, so their mean loss is eq. 3's sum.
"""
import math

import pytest
import torch

from c2gr_core.config import DiffusionConfig
from c2gr_core.diffusion import NoiseDraws, Teacher, bjd_loss, draw_noise, draw_terms, make_scheduler
from test_diffusion import ABAR, B, H, M, Recorder, _pair, hand_noisy
from test_diffusion_recipe import hand_v, hand_weight

ONE = DiffusionConfig(prediction="v", loss_weighting="min_snr", term_sampling="one")


def _draws(x0, y0, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.tensor([30, 450, 920])[:len(x0)], torch.randn(x0.shape, generator=g),
            torch.randn(y0.shape, generator=g))


def test_each_pair_sees_its_terms_input_and_target_by_hand():
    x0, y0, prompt = _pair(4)
    k, ex, ey = _draws(x0, y0)
    term = torch.tensor([2, 0, 1])           # pair 0 mask given image, pair 1 joint, pair 2 image given mask
    den = Recorder()
    loss = bjd_loss(den, x0, y0, prompt, make_scheduler(ONE), draws=NoiseDraws(k, ex, ey, term), cfg=ONE)
    assert len(den.calls) == 1 and den.calls[0][0].shape[0] == B      # one row per pair, one forward
    xk, yk, vx, vy = hand_noisy(x0, ex, k), hand_noisy(y0, ey, k), hand_v(x0, ex, k), hand_v(y0, ey, k)
    total = 0.0
    for i, (ki, ti) in enumerate(zip(k.tolist(), term.tolist())):
        clean = -math.sqrt(1 - ABAR[ki])
        image_in, image_tgt = (x0[i], clean * x0[i]) if ti == 2 else (xk[i], vx[i])
        mask_in, mask_tgt = (y0[i], clean * y0[i]) if ti == 1 else (yk[i], vy[i])
        row = torch.cat([image_in, mask_in])
        torch.testing.assert_close(den.calls[0][0][i], row, rtol=1e-5, atol=1e-6)
        err = float(((0.5 * row + 0.1 - torch.cat([image_tgt, mask_tgt])) ** 2).sum()) / row.numel()
        total += 3 * hand_weight(ki, "v", "min_snr") * err
    assert loss.total.item() == pytest.approx(total / B, rel=1e-5)


@pytest.mark.parametrize("balance_by", ["pixel", "mixed", "timestep"])
@pytest.mark.parametrize("with_teacher", [False, True])
def test_the_mean_over_the_three_rotations_is_eq3s_sum(balance_by, with_teacher):
    """Over the rotations (term + r) % 3 every pair meets each term once, so the mean of the three
    one-term losses (each 3x its term) is the all-terms loss, pair by pair, with class weights and a teacher."""
    x0, y0, prompt = _pair(6)
    k, ex, ey = _draws(x0, y0, seed=8)
    all_cfg = DiffusionConfig(prediction="v", loss_weighting="min_snr", mask_balance=0.5, mask_balance_by=balance_by,
                              replay_target="teacher", teacher_weighting="uniform", teacher_scale=0.5)
    one_cfg = DiffusionConfig(**{**all_cfg.__dict__, "term_sampling": "one"})
    sched = make_scheduler(all_cfg)
    teacher = Teacher(Recorder(a=-0.3, b=0.2), torch.randn(2, prompt.shape[1]),
                      torch.tensor([False, True, True])) if with_teacher else None
    full = bjd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey), cfg=all_cfg, teacher=teacher,
                    reduce=False)
    base = torch.tensor([1, 2, 0])
    rotations = [bjd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey, (base + r) % 3),
                          cfg=one_cfg, teacher=teacher, reduce=False) for r in range(3)]
    torch.testing.assert_close(sum(r.total for r in rotations) / 3, full.total, rtol=1e-5, atol=1e-7)
    # each rotation on its own is not the sum: the estimator is unbiased, not exact
    assert not torch.allclose(rotations[0].total, full.total, rtol=1e-3)


def test_draw_terms_balances_each_batch_and_is_uniform_for_each_pair():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_terms(16, g) for _ in range(3000)])
    counts = torch.stack([(draws == j).sum(1) for j in range(3)], 1)      # per batch, pairs on each term
    assert counts.sort(1).values.unique(dim=0).tolist() == [[5, 5, 6]]    # in every batch, in some order
    share = torch.stack([(draws == j).float().mean(0) for j in range(3)])  # (term, pair)
    assert (share - 1 / 3).abs().max() < 0.04                              # 3000 draws: std 0.009


def test_term_draws_come_after_the_noise_and_all_stays_eq3():
    x0, y0, prompt = _pair(9)
    a = draw_noise(x0, y0, 1000, torch.Generator().manual_seed(5))
    b = draw_noise(x0, y0, 1000, torch.Generator().manual_seed(5), one_term=True)
    assert a.term is None and b.term is not None and sorted(b.term.tolist()) == [0, 1, 2]
    for f in ("k", "eps_x", "eps_y"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    den = Recorder()
    bjd_loss(den, x0, y0, prompt, make_scheduler(DiffusionConfig()), draws=a, cfg=DiffusionConfig(prediction="v"))
    assert den.calls[0][0].shape[0] == 3 * B                                # "all": three rows a pair
    with pytest.raises(ValueError, match="term_sampling"):
        bjd_loss(den, x0, y0, prompt, make_scheduler(DiffusionConfig()), draws=b, cfg=DiffusionConfig())
    with pytest.raises(ValueError, match="term_sampling"):
        make_scheduler(DiffusionConfig(term_sampling="two"))
