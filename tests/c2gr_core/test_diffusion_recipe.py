"""The training recipe of the generator: v-prediction, min-SNR weighting, EMA (diffusion.py).

Expected values are hand computations: abar_k from a loop over the betas, v and the weights from
their definitions in Python floats, losses as explicit sums over samples; the samplers are checked
against oracles that know the clean pair.
"""
import math

import pytest
import torch
from torch import nn

from c2gr_core.config import DiffusionConfig
from c2gr_core.diffusion import MaskCodec, NoiseDraws, Teacher, bjd_loss, timestep_weights, ddim_step, ddpm_step, image_loss, make_ema, make_scheduler, njd_loss, pixel_weights, channel_weights, reverse_chain, sample_pairs, snr_weights, x0_and_eps
from test_diffusion import ABAR, B, H, M, P, Recorder, _pair, hand_noisy

V_MIN_SNR = DiffusionConfig(prediction="v", loss_weighting="min_snr", snr_gamma=5.0)


def hand_v(x0, eps, k):
    """v_i = sqrt(abar_k_i) eps_i - sqrt(1 - abar_k_i) x0_i, sample by sample."""
    return torch.stack([math.sqrt(ABAR[int(ki)]) * eps[i] - math.sqrt(1 - ABAR[int(ki)]) * x0[i]
                        for i, ki in enumerate(k)])


def hand_weight(k: int, prediction: str, weighting: str, gamma: float = 5.0) -> float:
    if weighting == "uniform":
        return 1.0
    snr = ABAR[k] / (1 - ABAR[k])
    return min(snr, gamma) / (snr if prediction == "eps" else snr + 1)


def hand_loss(preds, targets, k, prediction, weighting) -> float:
    """(1/B) sum_i w(k_i) * mean over sample i's elements of (pred - target)^2."""
    total = 0.0
    for i, ki in enumerate(k):
        per = float(((preds[i] - targets[i]) ** 2).sum()) / preds[i].numel()
        total += hand_weight(int(ki), prediction, weighting) * per
    return total / len(k)


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_by_hand(prediction):
    sched = make_scheduler(DiffusionConfig())
    k = torch.tensor([0, 10, 60, 200, 500, 999])
    w = snr_weights(sched, k, prediction, "min_snr", 5.0)
    for ki, wi in zip(k.tolist(), w.tolist()):
        # MONAI keeps abar in float32: 1 - abar_0 = 1e-4 carries ~1e-4 relative rounding
        assert wi == pytest.approx(hand_weight(ki, prediction, "min_snr"), rel=5e-4), ki
    # where SNR <= gamma (large k) the eps weight is 1 and the v weight SNR / (SNR + 1); small k are damped
    assert w[-1].item() == pytest.approx(1.0 if prediction == "eps" else ABAR[999], rel=1e-3)
    assert w[0].item() < 0.01
    assert torch.equal(snr_weights(sched, k, prediction, "uniform", 5.0), torch.ones(6))


# ------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("prediction, weighting", [("v", "uniform"), ("eps", "min_snr"), ("v", "min_snr")])
def test_njd_loss_under_each_recipe_by_hand(prediction, weighting):
    x0, y0, prompt = _pair(5)
    g = torch.Generator().manual_seed(2)
    k = torch.tensor([3, 250, 940])
    ex, ey = torch.randn(x0.shape, generator=g), torch.randn(y0.shape, generator=g)
    den = Recorder()
    cfg = DiffusionConfig(prediction=prediction, loss_weighting=weighting)
    loss = njd_loss(den, x0, y0, prompt, make_scheduler(cfg), draws=NoiseDraws(k, ex, ey), cfg=cfg)
    xk, yk = hand_noisy(x0, ex, k), hand_noisy(y0, ey, k)
    pred = 0.5 * torch.cat([xk, yk], 1) + 0.1
    tgt = (torch.cat([hand_v(x0, ex, k), hand_v(y0, ey, k)], 1) if prediction == "v"
           else torch.cat([ex, ey], 1))
    assert loss.total.item() == pytest.approx(hand_loss(pred, tgt, k, prediction, weighting), rel=1e-5)


@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_bjd_loss_under_v_by_hand_clean_half_target_is_v_without_noise(weighting):
    x0, y0, prompt = _pair(6)
    g = torch.Generator().manual_seed(4)
    k = torch.tensor([1, 500, 999])
    ex, ey = torch.randn(x0.shape, generator=g), torch.randn(y0.shape, generator=g)
    cfg = DiffusionConfig(prediction="v", loss_weighting=weighting)
    loss = bjd_loss(Recorder(), x0, y0, prompt, make_scheduler(cfg), draws=NoiseDraws(k, ex, ey), cfg=cfg)
    xk, yk = hand_noisy(x0, ex, k), hand_noisy(y0, ey, k)
    vx, vy = hand_v(x0, ex, k), hand_v(y0, ey, k)
    # "no noise on this half": v with eps = 0, i.e. -sqrt(1 - abar_k) * clean
    cx = torch.stack([-math.sqrt(1 - ABAR[int(ki)]) * x0[i] for i, ki in enumerate(k)])
    cy = torch.stack([-math.sqrt(1 - ABAR[int(ki)]) * y0[i] for i, ki in enumerate(k)])
    inputs = [torch.cat([xk, yk], 1), torch.cat([xk, y0], 1), torch.cat([x0, yk], 1)]
    targets = [torch.cat([vx, vy], 1), torch.cat([vx, cy], 1), torch.cat([cx, vy], 1)]
    expected = [hand_loss(0.5 * i + 0.1, t, k, "v", weighting) for i, t in zip(inputs, targets)]
    for name, e in zip(("joint", "image_given_mask", "mask_given_image"), expected):
        assert loss.terms[name].item() == pytest.approx(e, rel=1e-5), name
    assert loss.total.item() == pytest.approx(sum(expected), rel=1e-5)


class VOracle(nn.Module):
    """Knows (x0, y0, eps) and answers in v: the true v of a noisy part, -sqrt(1 - abar) * clean for a
    part that equals the clean data (no noise), or, with no noise given, the v implied by x_t and x0."""

    def __init__(self, x0, y0=None, ex=None, ey=None):
        super().__init__()
        self.x0, self.y0, self.ex, self.ey = x0, y0, ex, ey
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xy, t, prompt):
        a = torch.tensor([ABAR[int(ti)] for ti in t]).view(-1, 1, 1, 1)
        if self.ex is None:  # sampling: eps = (x_t - sqrt(a) x0) / sqrt(1 - a), then v from its definition
            x0 = self.x0[: xy.shape[0]]
            eps = (xy - a.sqrt() * x0) / (1 - a).sqrt()
            return a.sqrt() * eps - (1 - a).sqrt() * x0
        n = xy.shape[0] // self.x0.shape[0]
        x0, y0, ex, ey = (v.repeat(n, 1, 1, 1) for v in (self.x0, self.y0, self.ex, self.ey))
        clean_x = (xy[:, :3] == x0).flatten(1).all(1).view(-1, 1, 1, 1)
        clean_y = (xy[:, 3:] == y0).flatten(1).all(1).view(-1, 1, 1, 1)
        vx = torch.where(clean_x, -(1 - a).sqrt() * x0, a.sqrt() * ex - (1 - a).sqrt() * x0)
        vy = torch.where(clean_y, -(1 - a).sqrt() * y0, a.sqrt() * ey - (1 - a).sqrt() * y0)
        return torch.cat([vx, vy], 1)


def test_bjd_v_oracle_has_zero_loss():
    x0, y0, prompt = _pair(7)
    g = torch.Generator().manual_seed(0)
    draws = NoiseDraws(torch.tensor([10, 500, 990]), torch.randn(x0.shape, generator=g),
                       torch.randn(y0.shape, generator=g))
    loss = bjd_loss(VOracle(x0, y0, draws.eps_x, draws.eps_y), x0, y0, prompt, make_scheduler(V_MIN_SNR),
                    draws=draws, cfg=V_MIN_SNR)
    assert loss.total.item() == pytest.approx(0.0, abs=1e-10)


def test_image_loss_under_v_min_snr_by_hand():
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(B, 3, H, H, generator=g) * 2 - 1
    den = Recorder()
    loss = image_loss(den, x0, torch.randn(B, P), make_scheduler(V_MIN_SNR), generator=torch.Generator().manual_seed(9),
                      cfg=V_MIN_SNR)
    g = torch.Generator().manual_seed(9)  # documented order: k, then eps
    k = torch.randint(0, 1000, (B,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    (xk, t, _), = den.calls
    assert torch.equal(t, k) and torch.allclose(xk, hand_noisy(x0, eps, k), atol=1e-5)
    expected = hand_loss(0.5 * hand_noisy(x0, eps, k) + 0.1, hand_v(x0, eps, k), k, "v", "min_snr")
    assert loss.total.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- samplers
def test_v_output_reads_as_the_same_x0_and_eps():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(2, 4, 4, 4, generator=g) * 2 - 1, torch.randn(2, 4, 4, 4, generator=g)
    for k in (0, 300, 999):
        a = torch.tensor(ABAR[k])
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = hand_v(x0, eps, [k, k])
        got_x0, got_eps = x0_and_eps(v, xt, a, "v")
        assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps, atol=1e-4), k
        got_x0, got_eps = x0_and_eps(eps, xt, a, "eps")
        assert torch.allclose(got_x0, x0, atol=2e-3) and torch.equal(got_eps, eps), k


@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddim", 25), ("ddpm", 200)])
def test_v_oracle_recovers_known_pair(sampler, steps):
    codec = MaskCodec(M)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, M, (2, H, H), generator=g)
    x0 = torch.cat([torch.rand(2, 3, H, H, generator=g) * 1.8 - 0.9, codec.encode(labels)], 1)
    cfg = DiffusionConfig(prediction="v")
    images, out_labels = sample_pairs(VOracle(x0), torch.zeros(P), 2, H, codec, sampler=sampler, steps=steps,
                                      cfg=cfg, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(images, x0[:, :3], atol=1e-4)
    assert torch.equal(out_labels, labels)


@pytest.mark.parametrize("step", ["ddim", "ddpm"])
def test_one_step_to_the_end_reads_the_output_as_configured(step):
    """From x_500 a last step (t_prev = -1) returns the predicted x0: exact when the oracle's v is read
    as v, far off when the same numbers are read as eps."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, H, H, generator=g) * 1.8 - 0.9
    xt = math.sqrt(ABAR[500]) * x0 + math.sqrt(1 - ABAR[500]) * torch.randn(x0.shape, generator=g)
    v = VOracle(x0)(xt, torch.tensor([500, 500]), None)
    sched = make_scheduler(DiffusionConfig(), step)
    fn = ddim_step if step == "ddim" else ddpm_step
    assert torch.allclose(fn(sched, v, 500, -1, xt, prediction="v"), x0, atol=1e-5)
    assert (fn(sched, v, 500, -1, xt, prediction="eps") - x0).abs().mean() > 0.1


def test_reverse_chain_is_the_pair_sampler_for_any_channel_count():
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 3, H, H, generator=g) * 1.8 - 0.9   # images only, as GR samples them
    out = reverse_chain(VOracle(x0), torch.zeros(P), 3, 3, H, sampler="ddim", steps=10,
                        cfg=DiffusionConfig(prediction="v"))
    assert out.shape == (3, 3, H, H) and torch.allclose(out, x0, atol=1e-4)
    with pytest.raises(ValueError, match="sampler"):
        reverse_chain(VOracle(x0), torch.zeros(P), 1, 3, H, sampler="euler")


# -------------------------------------------------------------------------------- EMA
def test_ema_follows_the_exponential_average_by_hand():
    net = nn.Linear(3, 2)
    ema = make_ema(net, 0.9)
    assert make_ema(net, 0.0) is None
    assert not any(p.requires_grad for p in ema.parameters())
    hand = None
    for step in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(float(step + 1))
        ema.update_parameters(net)
        cur = [p.detach().clone() for p in net.parameters()]
        # the first update copies the weights; then ema <- 0.9 ema + 0.1 w
        hand = cur if hand is None else [0.9 * h + 0.1 * c for h, c in zip(hand, cur)]
    for h, e in zip(hand, ema.module.parameters()):
        assert torch.allclose(h, e, atol=1e-6)
    # state_dict round trip (what the round checkpoint stores)
    again = make_ema(nn.Linear(3, 2), 0.9)
    again.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.module.parameters(), ema.module.parameters()))
    assert int(again.n_averaged) == 4


@pytest.mark.parametrize("field, value", [("prediction", "x0"), ("loss_weighting", "p2"), ("snr_gamma", 0),
                                          ("ema_decay", 1.0), ("ema_decay", True), ("mask_balance", 1.5),
                                          ("mask_balance", -0.1), ("mask_balance", True), ("mask_balance", "0.5"),
                                          ("mask_balance_by", "class")])
def test_bad_recipe_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        make_scheduler(DiffusionConfig(**{field: value}))


# ------------------------------------------------------------------- class-balanced pixels
def _labels_8_2() -> torch.Tensor:
    """One 2x5 mask: eight background pixels, two of class 1 (fractions 0.8 / 0.2)."""
    return torch.tensor([[[0, 0, 0, 0, 1], [0, 0, 0, 1, 0]]])


@pytest.mark.parametrize("balance, w_bg, w_fg", [(0.5, 5 / 6, 5 / 3), (1.0, 0.625, 2.5)])
def test_pixel_weights_hand_worked(balance, w_bg, w_fg):
    """f = 0.8 / 0.2. beta 0.5: raw 0.8^-0.5, 0.2^-0.5 (ratio 2), mean (8 * 1 + 2 * 2) / 10 = 1.2 in units of
    the background's raw weight, so 1 / 1.2 = 5/6 and 2 / 1.2 = 5/3. beta 1: raw 1.25 and 5, mean 2, so 0.625
    and 2.5: each class then carries half the total weight."""
    labels = _labels_8_2()
    w = pixel_weights(MaskCodec(3).encode(labels), balance)
    assert w.shape == (1, 1, 2, 5)
    expected = torch.where(labels == 1, w_fg, w_bg).unsqueeze(1).float()
    assert torch.allclose(w, expected, rtol=1e-6)
    assert pixel_weights(MaskCodec(3).encode(labels), 0) is None


def _hand_pix(labels, balance):
    """Per sample, by a loop over pixels: f_c ** -balance of the pixel's class, divided by its mean."""
    out = []
    for lab in labels:
        n = lab.numel()
        frac = {int(c): float((lab == c).sum()) / n for c in lab.unique()}
        raw = [[frac[int(v)] ** -balance for v in row] for row in lab]
        mean = sum(map(sum, raw)) / n
        out.append([[v / mean for v in row] for row in raw])
    return out


def test_pixel_weights_are_per_sample_fractions_by_a_loop():
    g = torch.Generator().manual_seed(11)
    labels = torch.randint(0, M, (B, H, H), generator=g)
    labels[0] = (labels[0] > 0).long()          # sample 0 has one class absent: it must not matter
    w = pixel_weights(MaskCodec(M).encode(labels), 0.5)
    for i, expected in enumerate(_hand_pix(labels, 0.5)):
        for r in range(H):
            for c in range(H):
                assert w[i, 0, r, c].item() == pytest.approx(expected[r][c], rel=1e-5)


def hand_weighted_loss(preds, targets, k, weight, prediction="v", weighting="min_snr") -> float:
    """(1/B) sum_i w(k_i) * (1 / n_i) sum over channels and pixels of weight(i, ch, r, c) (pred - target)^2."""
    total = 0.0
    for i, ki in enumerate(k):
        s = 0.0
        for ch in range(preds.shape[1]):
            for r in range(preds.shape[2]):
                for c in range(preds.shape[3]):
                    s += weight(i, ch, r, c) * float(preds[i, ch, r, c] - targets[i, ch, r, c]) ** 2
        total += hand_weight(int(ki), prediction, weighting) * s / preds[i].numel()
    return total / len(k)


def hand_pixel_loss(preds, targets, k, pix, prediction, weighting) -> float:
    """`hand_weighted_loss` with weight p_hw of sample i's pixel in every channel."""
    return hand_weighted_loss(preds, targets, k, lambda i, ch, r, c: float(pix[i][r][c]), prediction, weighting)


def test_njd_and_bjd_weight_every_term_by_the_clean_mask_pixels():
    x0, _, prompt = _pair(12)
    g = torch.Generator().manual_seed(13)
    labels = torch.randint(0, M, (B, H, H), generator=g)
    labels[:, :6] = 0                                   # a dominant background, as in real masks
    y0 = MaskCodec(M).encode(labels)
    k = torch.tensor([5, 300, 900])
    ex, ey = torch.randn(x0.shape, generator=g), torch.randn(y0.shape, generator=g)
    cfg = DiffusionConfig(prediction="v", loss_weighting="min_snr", mask_balance=0.5)
    sched = make_scheduler(cfg)
    pix = _hand_pix(labels, 0.5)
    xk, yk = hand_noisy(x0, ex, k), hand_noisy(y0, ey, k)
    vx, vy = hand_v(x0, ex, k), hand_v(y0, ey, k)

    njd = njd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey), cfg=cfg)
    inp = torch.cat([xk, yk], 1)
    assert njd.total.item() == pytest.approx(
        hand_pixel_loss(0.5 * inp + 0.1, torch.cat([vx, vy], 1), k, pix, "v", "min_snr"), rel=1e-5)

    bjd = bjd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey), cfg=cfg)
    cx = torch.stack([-math.sqrt(1 - ABAR[int(ki)]) * x0[i] for i, ki in enumerate(k)])
    cy = torch.stack([-math.sqrt(1 - ABAR[int(ki)]) * y0[i] for i, ki in enumerate(k)])
    inputs = [inp, torch.cat([xk, y0], 1), torch.cat([x0, yk], 1)]
    targets = [torch.cat([vx, vy], 1), torch.cat([vx, cy], 1), torch.cat([cx, vy], 1)]
    for name, i, t in zip(("joint", "image_given_mask", "mask_given_image"), inputs, targets):
        assert bjd.terms[name].item() == pytest.approx(
            hand_pixel_loss(0.5 * i + 0.1, t, k, pix, "v", "min_snr"), rel=1e-5), name
    # and the weights matter: the unweighted loss differs
    plain = bjd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey),
                     cfg=DiffusionConfig(prediction="v", loss_weighting="min_snr"))
    assert abs(plain.total.item() - bjd.total.item()) > 1e-3 * plain.total.item()


def test_channel_weights_hand_worked():
    """The mask of `_labels_8_2` (shares 0.8 / 0.2, class 2 absent) as a batch: raw 0.8^-0.5 and 0.2^-0.5
    (ratio 2), sum_c f_c raw_c = 0.8 * 1 + 0.2 * 2 = 1.2 in units of the background's raw weight, so
    5/6 and 5/3 (the same numbers as per pixel); the absent class 1; the three image channels 1."""
    w = channel_weights(MaskCodec(3).encode(_labels_8_2()), 0.5, image_channels=3)
    assert w.shape == (1, 6, 1, 1)
    assert torch.allclose(w.flatten(), torch.tensor([1, 1, 1, 5 / 6, 5 / 3, 1.0]), rtol=1e-6)
    assert channel_weights(MaskCodec(3).encode(_labels_8_2()), 0, image_channels=3) is None


def test_channel_weights_pool_the_whole_batch_by_a_loop():
    g = torch.Generator().manual_seed(17)
    labels = torch.randint(0, M, (B, H, H), generator=g)
    labels[:, :5] = 0
    w = channel_weights(MaskCodec(M).encode(labels), 0.5, image_channels=3).flatten()
    counts = [sum(int(v == c) for lab in labels for row in lab for v in row) for c in range(M)]
    n = sum(counts)
    raw = [(cnt / n) ** -0.5 if cnt else None for cnt in counts]
    norm = sum(cnt / n * r for cnt, r in zip(counts, raw) if r is not None)
    expected = [1.0, 1.0, 1.0] + [r / norm if r is not None else 1.0 for r in raw]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)


def test_channel_weights_keep_the_minimiser_at_the_mean_pixel_weights_do_not():
    """The best constant output for a mask channel under the weighted squared error: with per-channel
    weights the plain mean of the targets (gradient 0 there), with per-pixel weights by the clean
    class a mean pulled towards the up-weighted class (the generated foreground's growth)."""
    labels = _labels_8_2().repeat(2, 1, 1)
    y0 = MaskCodec(3).encode(labels)
    mean = y0.mean(dim=(0, 2, 3), keepdim=True).expand_as(y0).clone().requires_grad_(True)
    by_channel = channel_weights(y0, 0.5, image_channels=0)
    for weights, zero in ((by_channel, True), (pixel_weights(y0, 0.5), False)):
        (grad,) = torch.autograd.grad(((mean - y0).pow(2) * weights).mean(), mean)
        per_channel = grad.sum(dim=(0, 2, 3))
        assert (per_channel.abs().max().item() < 1e-6) == zero, (zero, per_channel)


@pytest.mark.parametrize("balance_by", ["channel", "mixed", "timestep"])
def test_njd_and_bjd_weight_channels_by_the_batch_shares(balance_by):
    """"channel": every term's squared error, channel c times w_c of the batch's class shares (computed
    here by counting); "mixed": the same, except BJD's image-given-mask term (clean mask in its input),
    which keeps the per-pixel weights of `_hand_pix`; "timestep": as "mixed", but where the mask is
    noised sample i's weight is abar_{k_i} * its pixel weight + (1 - abar_{k_i}) * the channel weight."""
    x0, _, prompt = _pair(12)
    g = torch.Generator().manual_seed(19)
    labels = torch.randint(0, M, (B, H, H), generator=g)
    labels[:, :6] = 0
    y0 = MaskCodec(M).encode(labels)
    k = torch.tensor([5, 300, 900])
    ex, ey = torch.randn(x0.shape, generator=g), torch.randn(y0.shape, generator=g)
    cfg = DiffusionConfig(prediction="v", loss_weighting="min_snr", mask_balance=0.5, mask_balance_by=balance_by)
    sched = make_scheduler(cfg)
    counts = [int((labels == c).sum()) for c in range(M)]
    raw = [(c / labels.numel()) ** -0.5 if c else None for c in counts]
    norm = sum(c / labels.numel() * r for c, r in zip(counts, raw) if r is not None)
    wc = [1.0] * x0.shape[1] + [r / norm if r is not None else 1.0 for r in raw]
    pix = _hand_pix(labels, 0.5)

    def by_channel(pred, tgt):
        def weight(i, ch, r, c):
            a = ABAR[int(k[i])] if balance_by == "timestep" else 0.0
            return a * pix[i][r][c] + (1 - a) * wc[ch]
        return hand_weighted_loss(pred, tgt, k, weight)

    xk, yk = hand_noisy(x0, ex, k), hand_noisy(y0, ey, k)
    vx, vy = hand_v(x0, ex, k), hand_v(y0, ey, k)
    inp = torch.cat([xk, yk], 1)
    njd = njd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey), cfg=cfg)
    assert njd.total.item() == pytest.approx(by_channel(0.5 * inp + 0.1, torch.cat([vx, vy], 1)), rel=1e-5)

    bjd = bjd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey), cfg=cfg)
    cx = torch.stack([-math.sqrt(1 - ABAR[int(ki)]) * x0[i] for i, ki in enumerate(k)])
    cy = torch.stack([-math.sqrt(1 - ABAR[int(ki)]) * y0[i] for i, ki in enumerate(k)])
    cases = [("joint", inp, torch.cat([vx, vy], 1), False),
             ("image_given_mask", torch.cat([xk, y0], 1), torch.cat([vx, cy], 1), True),
             ("mask_given_image", torch.cat([x0, yk], 1), torch.cat([cx, vy], 1), False)]
    for name, i, t, mask_given in cases:
        if balance_by in ("mixed", "timestep") and mask_given:
            expected = hand_pixel_loss(0.5 * i + 0.1, t, k, pix, "v", "min_snr")
        else:
            expected = by_channel(0.5 * i + 0.1, t)
        assert bjd.terms[name].item() == pytest.approx(expected, rel=1e-5), name
    per_pixel = DiffusionConfig(prediction="v", loss_weighting="min_snr", mask_balance=0.5)
    assert abs(njd_loss(Recorder(), x0, y0, prompt, sched, draws=NoiseDraws(k, ex, ey), cfg=per_pixel).total.item()
               - njd.total.item()) > 1e-3 * njd.total.item()


# ------------------------------------------------------------------- replay distillation
@pytest.mark.parametrize("teacher_weighting, weights", [(None, "min_snr"), ("uniform", "uniform")])
@pytest.mark.parametrize("loss_name", ["njd", "bjd", "image"])
def test_teacher_outputs_replace_the_targets(loss_name, teacher_weighting, weights):
    """replay_target = "teacher": each term regresses the frozen teacher's output on the very input
    the student sees, prompted by the teacher's own prompt; weights as for data targets, or as
    diffusion.teacher_weighting says (every taught row weighs 1 under "uniform")."""
    x0, y0, prompt = _pair(8)
    teacher_prompt = torch.randn(B, P)
    student, teacher = Recorder(a=0.5, b=0.1), Recorder(a=-0.3, b=0.2)
    g = torch.Generator().manual_seed(5)
    k = torch.tensor([20, 400, 800])
    draws = NoiseDraws(k, torch.randn(x0.shape, generator=g), torch.randn(y0.shape, generator=g))
    cfg = DiffusionConfig(prediction="v", loss_weighting="min_snr", snr_gamma=5.0, replay_target="teacher",
                          teacher_weighting=teacher_weighting)
    sched = make_scheduler(cfg)
    tch = Teacher(teacher, teacher_prompt)
    if loss_name == "image":
        loss = image_loss(student, x0, prompt, sched, generator=torch.Generator().manual_seed(1), cfg=cfg, teacher=tch)
    else:
        fn = njd_loss if loss_name == "njd" else bjd_loss
        loss = fn(student, x0, y0, prompt, sched, draws=draws, cfg=cfg, teacher=tch)
    (s_in, s_t, s_z), = student.calls
    (t_in, t_t, t_z), = teacher.calls
    assert torch.equal(s_in, t_in) and torch.equal(s_t, t_t)          # the same noised inputs and steps
    reps = s_in.shape[0] // B
    assert torch.equal(t_z, teacher_prompt.repeat(reps, 1)) and torch.equal(s_z, prompt.repeat(reps, 1))
    kk = s_t[:B]
    expected = sum(hand_loss((0.5 * c + 0.1), (-0.3 * c + 0.2), kk, "v", weights) for c in s_in.chunk(reps))
    assert loss.total.item() == pytest.approx(expected, rel=1e-5)
    assert loss.total.requires_grad and not any(p.grad is not None for p in teacher.parameters())


@pytest.mark.parametrize("teacher_weighting, scale", [("uniform", 1.0), ("uniform", 0.25), (None, 2.5)])
def test_teacher_weighting_leaves_the_untaught_rows_to_the_recipe(teacher_weighting, scale):
    cfg = DiffusionConfig(prediction="v", loss_weighting="min_snr", snr_gamma=5.0, replay_target="teacher",
                          teacher_weighting=teacher_weighting, teacher_scale=scale)
    k = torch.tensor([20, 400, 800])
    tch = Teacher(Recorder(), torch.randn(2, P), rows=torch.tensor([True, False, True]))
    w = timestep_weights(make_scheduler(cfg), k, cfg, tch)
    taught = [scale * (1.0 if teacher_weighting == "uniform" else hand_weight(int(i), "v", "min_snr")) for i in (20, 800)]
    assert w.tolist() == pytest.approx([taught[0], hand_weight(400, "v", "min_snr"), taught[1]], rel=5e-4)
    # without a teacher (the current task's batch): the recipe's weights
    assert timestep_weights(make_scheduler(cfg), k, cfg).tolist() == pytest.approx(
        [hand_weight(int(i), "v", "min_snr") for i in k], rel=5e-4)


@pytest.mark.parametrize("field, value", [("teacher_weighting", "min-snr"), ("teacher_scale", 0.0),
                                          ("teacher_scale", float("inf")), ("teacher_scale", True),
                                          ("loss_weighting", "snr"), ("prediction", "x0")])
def test_a_recipe_the_losses_do_not_know_is_refused_by_name(field, value):
    """A DiffusionConfig built in code skips the run's validation; the scheduler checks the recipe
    itself, so a misspelt weighting cannot fall through to min-SNR unnoticed."""
    cfg = DiffusionConfig(prediction="v", loss_weighting="min_snr", replay_target="teacher")
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=rf"DiffusionConfig\.{field}"):
        make_scheduler(cfg)
