"""Joint diffusion (sec. 3.1): mask code, forward process, eq. (1), eq. (3), reverse steps, samplers.

Expected values come from hand computations (schedule by a loop over the betas, losses from
explicit sums) and from classic independent facts (an oracle denoiser lets DDIM recover x0;
the respaced DDPM keeps the marginals of q(x_t | x_0)), never from the code under test.
"""
import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from c2gr_core.config import DiffusionConfig, preset
from c2gr_core.diffusion import MaskCodec, NoiseDraws, add_noise, bjd_loss, ddim_step, ddpm_step, draw_noise, make_scheduler, njd_loss, sample_pairs, timestep_grid
from c2gr_core.models.denoiser import Denoiser

B, M, H = 3, 3, 8          # batch, mask channels (2 foreground classes + background), image side
P = 5                      # prompt dim


def hand_alphas_cumprod(cfg: DiffusionConfig) -> list[float]:
    """abar_k = prod_{i<=k} (1 - beta_i), beta linear from beta_start to beta_end, by a loop."""
    k_max = cfg.num_train_timesteps
    out, prod = [], 1.0
    for i in range(k_max):
        beta = cfg.beta_start + (cfg.beta_end - cfg.beta_start) * i / (k_max - 1)
        prod *= 1.0 - beta
        out.append(prod)
    return out


ABAR = hand_alphas_cumprod(DiffusionConfig())


def hand_noisy(x0, eps, k):
    return torch.stack([math.sqrt(ABAR[int(ki)]) * x0[i] + math.sqrt(1 - ABAR[int(ki)]) * eps[i]
                        for i, ki in enumerate(k)])


class Recorder(nn.Module):
    """A denoiser whose output is known: a * input + b; it records every call."""

    def __init__(self, a=0.5, b=0.1, mask_channels=M):
        super().__init__()
        self.a, self.b, self.mask_channels, self.calls = a, b, mask_channels, []
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xy, t, prompt):
        self.calls.append((xy.clone(), t.clone(), prompt.clone()))
        return self.a * xy + self.b + 0 * self.dummy


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 3, H, H, generator=g) * 2 - 1
    labels = torch.randint(0, M, (B, H, H), generator=g)
    return x0, MaskCodec(M).encode(labels), torch.randn(B, P, generator=g)


def _sq(pred, target):
    # mean over all elements, written as an explicit sum
    return float(((pred - target) ** 2).sum() / pred.numel())


# ------------------------------------------------------------------------------------ codec
@pytest.mark.parametrize("n_labels", [2, 3, 4])
def test_codec_round_trip(n_labels):
    g = torch.Generator().manual_seed(n_labels)
    labels = torch.randint(0, n_labels, (4, 16, 16), generator=g).to(torch.uint8)
    codec = MaskCodec(n_labels)
    code = codec.encode(labels)
    assert code.shape == (4, n_labels, 16, 16)
    assert set(code.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal((code > 0).sum(1), torch.ones(4, 16, 16, dtype=torch.long))  # exactly one +1 per pixel
    assert code[0, int(labels[0, 3, 5]), 3, 5] == 1.0
    assert torch.equal(codec.decode(code), labels.long())


def test_codec_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="0..2"):
        MaskCodec(3).encode(torch.tensor([[[0, 3]]]))
    with pytest.raises(ValueError, match="n_labels"):
        MaskCodec(1)


# -------------------------------------------------------------------------- forward process
def test_add_noise_matches_hand_schedule():
    cfg = DiffusionConfig()
    sched = make_scheduler(cfg, "ddpm")
    x0, eps = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    k = torch.tensor([0, 1, 500, 999])
    assert torch.allclose(add_noise(sched, x0, eps, k), hand_noisy(x0, eps, k), atol=1e-5)
    assert ABAR[-1] < 1e-4  # K = 1000 linear schedule ends near pure noise


def test_make_scheduler_validates_options():
    with pytest.raises(ValueError, match="ddpm"):
        make_scheduler(DiffusionConfig(), "euler")
    with pytest.raises(ValueError, match="linear_beta"):
        make_scheduler(DiffusionConfig(schedule="cosine"), "ddim")
    assert isinstance(make_scheduler(DiffusionConfig(), "ddim"), DDIMScheduler)


# ---------------------------------------------------------------------------------- eq. (1)
def test_njd_loss_eq1_by_hand():
    x0, y0, prompt = _pair()
    den = Recorder()
    loss = njd_loss(den, x0, y0, prompt, make_scheduler(DiffusionConfig()), generator=torch.Generator().manual_seed(7))
    # the same draws, in the documented order k, eps_x, eps_y
    g = torch.Generator().manual_seed(7)
    k = torch.randint(0, 1000, (B,), generator=g)
    ex, ey = torch.randn(x0.shape, generator=g), torch.randn(y0.shape, generator=g)
    (xy, t, z), = den.calls
    xk, yk = hand_noisy(x0, ex, k), hand_noisy(y0, ey, k)
    assert torch.equal(t, k) and torch.equal(z, prompt)
    assert torch.allclose(xy, torch.cat([xk, yk], 1), atol=1e-5)
    expected = _sq(0.5 * torch.cat([xk, yk], 1) + 0.1, torch.cat([ex, ey], 1))
    assert loss.total.item() == pytest.approx(expected, rel=1e-5)
    assert loss.total.requires_grad and set(loss.terms) == {"joint"}


# ---------------------------------------------------------------------------------- eq. (3)
@pytest.mark.parametrize("batched", [True, False])
def test_bjd_loss_eq3_inputs_targets_and_value_by_hand(batched):
    x0, y0, prompt = _pair(1)
    g = torch.Generator().manual_seed(3)
    k = torch.tensor([0, 421, 999])
    ex, ey = torch.randn(x0.shape, generator=g), torch.randn(y0.shape, generator=g)
    den = Recorder()
    loss = bjd_loss(den, x0, y0, prompt, make_scheduler(DiffusionConfig()), batched=batched,
                    draws=NoiseDraws(k, ex, ey))
    if batched:
        (xy, t, z), = den.calls
        assert xy.shape[0] == 3 * B and torch.equal(t, k.repeat(3)) and torch.equal(z, prompt.repeat(3, 1))
        inputs = list(xy.chunk(3))
    else:
        assert len(den.calls) == 3 and all(torch.equal(c[1], k) for c in den.calls)
        inputs = [c[0] for c in den.calls]
    xk, yk = hand_noisy(x0, ex, k), hand_noisy(y0, ey, k)
    # term 1: both noisy
    assert torch.allclose(inputs[0][:, :3], xk, atol=1e-5) and torch.allclose(inputs[0][:, 3:], yk, atol=1e-5)
    # term 2: noisy image, the mask part is exactly the clean y_0
    assert torch.allclose(inputs[1][:, :3], xk, atol=1e-5) and torch.equal(inputs[1][:, 3:], y0)
    # term 3: the image part is exactly the clean x_0, noisy mask
    assert torch.equal(inputs[2][:, :3], x0) and torch.allclose(inputs[2][:, 3:], yk, atol=1e-5)
    zx, zy = torch.zeros_like(ex), torch.zeros_like(ey)
    hand_inputs = [torch.cat([xk, yk], 1), torch.cat([xk, y0], 1), torch.cat([x0, yk], 1)]
    targets = [torch.cat([ex, ey], 1), torch.cat([ex, zy], 1), torch.cat([zx, ey], 1)]
    per_term = [_sq(0.5 * i + 0.1, t) for i, t in zip(hand_inputs, targets)]
    names = ["joint", "image_given_mask", "mask_given_image"]
    for name, v in zip(names, per_term):
        assert loss.terms[name].item() == pytest.approx(v, rel=1e-5)
    assert loss.total.item() == pytest.approx(sum(per_term), rel=1e-5)


class Oracle(nn.Module):
    """Knows (x0, y0, eps): predicts eps for the noisy part and 0 for a part equal to the clean data."""

    def __init__(self, x0, y0, ex, ey):
        super().__init__()
        self.x0, self.y0, self.ex, self.ey = x0, y0, ex, ey
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xy, t, prompt):
        n = xy.shape[0] // self.x0.shape[0]
        x0, y0, ex, ey = (v.repeat(n, 1, 1, 1) for v in (self.x0, self.y0, self.ex, self.ey))
        clean_x = (xy[:, :3] == x0).flatten(1).all(1).view(-1, 1, 1, 1)
        clean_y = (xy[:, 3:] == y0).flatten(1).all(1).view(-1, 1, 1, 1)
        return torch.cat([torch.where(clean_x, 0 * ex, ex), torch.where(clean_y, 0 * ey, ey)], 1)


def test_bjd_zero_targets_are_where_eq3_puts_them():
    x0, y0, prompt = _pair(2)
    draws = draw_noise(x0, y0, 1000, torch.Generator().manual_seed(0))
    draws.k = torch.tensor([10, 500, 990])  # no k with abar_k = 1, so noisy parts differ from clean ones
    oracle = Oracle(x0, y0, draws.eps_x, draws.eps_y)
    loss = bjd_loss(oracle, x0, y0, prompt, make_scheduler(DiffusionConfig()), draws=draws)
    assert loss.total.item() == 0.0
    # an oracle that (wrongly) predicts noise everywhere is penalised only by the two conditional terms
    full = bjd_loss(lambda xy, t, z: torch.cat([draws.eps_x, draws.eps_y], 1).repeat(3, 1, 1, 1),
                    x0, y0, prompt, make_scheduler(DiffusionConfig()), draws=draws)
    assert full.terms["joint"].item() == 0.0
    assert full.terms["image_given_mask"].item() == pytest.approx(_sq(draws.eps_y, 0 * draws.eps_y) * M / (3 + M))
    assert full.terms["mask_given_image"].item() == pytest.approx(_sq(draws.eps_x, 0 * draws.eps_x) * 3 / (3 + M))


def _unzeroed_tiny_denoiser(seed=0):
    # MONAI zero-initialises the output conv and each transformer's proj_out, so a fresh network
    # outputs 0 whatever its input; give those weights small random values so the tests can see.
    torch.manual_seed(seed)
    cfg = preset("tiny")
    net = Denoiser(cfg.denoiser, mask_channels=M, prompt_dim=P)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    return net


def test_bjd_batched_equals_unbatched_with_real_denoiser():
    x0, y0, prompt = _pair(4)
    net, sched = _unzeroed_tiny_denoiser(), make_scheduler(DiffusionConfig())
    a = bjd_loss(net, x0, y0, prompt, sched, batched=True, generator=torch.Generator().manual_seed(5))
    ga = torch.autograd.grad(a.total, net.prompt_adapter.weight)[0]
    b = bjd_loss(net, x0, y0, prompt, sched, batched=False, generator=torch.Generator().manual_seed(5))
    gb = torch.autograd.grad(b.total, net.prompt_adapter.weight)[0]
    assert a.total.item() > 0
    assert a.total.item() == pytest.approx(b.total.item(), rel=1e-5)
    for name in a.terms:
        assert a.terms[name].item() == pytest.approx(b.terms[name].item(), rel=1e-5)
    assert ga.abs().sum() > 0 and torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


def test_cross_attention_prompt_changes_output():
    net = _unzeroed_tiny_denoiser().eval()
    xy, t = torch.randn(2, 3 + M, 32, 32), torch.tensor([100, 700])
    z = torch.randn(2, P)
    with torch.no_grad():
        diff = (net(xy, t, z) - net(xy, t, z + 1.0)).abs().max().item()
        # the prompt reaches the output only through the cross-attention blocks
        for mod in net.unet.modules():
            if hasattr(mod, "proj_out") and hasattr(mod, "transformer_blocks"):
                mod.proj_out.conv.weight.zero_()
                mod.proj_out.conv.bias.zero_()
        diff_off = (net(xy, t, z) - net(xy, t, z + 1.0)).abs().max().item()
    assert diff > 1e-4 and diff_off == 0.0


# ---------------------------------------------------------------------------- reverse steps
class NoiseOracle(nn.Module):
    """Returns the true noise of a known x0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""

    def __init__(self, x0, abar):
        super().__init__()
        self.x0, self.abar, self.mask_channels = x0, abar, x0.shape[1] - 3
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, xy, t, prompt):
        a = torch.tensor([self.abar[int(ti)] for ti in t]).view(-1, 1, 1, 1)
        return (xy - a.sqrt() * self.x0[: xy.shape[0]]) / (1 - a).sqrt()


@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddim", 25), ("ddpm", 200)])
def test_oracle_denoiser_recovers_known_pair(sampler, steps):
    codec = MaskCodec(M)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, M, (2, H, H), generator=g)
    x0 = torch.cat([torch.rand(2, 3, H, H, generator=g) * 1.8 - 0.9, codec.encode(labels)], 1)
    images, out_labels = sample_pairs(NoiseOracle(x0, ABAR), torch.zeros(P), 2, H, codec, sampler=sampler,
                                      steps=steps, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(images, x0[:, :3], atol=1e-4)
    assert torch.equal(out_labels, labels)


def test_strided_ddpm_keeps_marginals_of_q():
    """With the true noise, x_t of a 200-step DDPM over K = 1000 must stay ~ N(sqrt(abar_t) x0, 1 - abar_t)."""
    cfg = DiffusionConfig()
    sched = make_scheduler(cfg, "ddpm")
    grid = timestep_grid(sched, 200)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3 + M, 32, 32, generator=g) * 2 - 1
    oracle = NoiseOracle(x0, ABAR)
    t0 = grid[0][0]
    x = math.sqrt(ABAR[t0]) * x0 + math.sqrt(1 - ABAR[t0]) * torch.randn(x0.shape, generator=g)
    for t, t_prev in grid[:100]:
        x = ddpm_step(sched, oracle(x, torch.full((4,), t), None), t, t_prev, x, g)
    t_end = grid[99][1]
    assert 300 < t_end < 700
    signal = lambda x: float((x * x0).sum() / (x0 * x0).sum())  # regression coefficient of x on x0
    resid = x - math.sqrt(ABAR[t_end]) * x0
    assert signal(x) == pytest.approx(math.sqrt(ABAR[t_end]), rel=0.03)
    assert abs(resid.mean().item()) < 0.02
    assert resid.var().item() == pytest.approx(1 - ABAR[t_end], rel=0.03)

    # MONAI's own DDPM step (MONAI 1.6.1) moves t -> t-1 whatever the grid, so on the strided grid
    # it has removed only ~100 training steps of noise; this is why diffusion.py writes the step itself.
    x = math.sqrt(ABAR[t0]) * x0 + math.sqrt(1 - ABAR[t0]) * torch.randn(x0.shape, generator=g)
    sched.set_timesteps(200)
    for t, _ in grid[:100]:
        x = sched.step(oracle(x, torch.full((4,), t), None), t, x, g)[0]
    assert signal(x) < 0.3 * math.sqrt(ABAR[t_end])


def test_steps_equal_monai_when_every_step_is_run():
    """On the full grid (n = K) our DDPM and DDIM steps must equal MONAI's reference steps."""
    cfg = DiffusionConfig(num_train_timesteps=20)
    ddpm, ddim = make_scheduler(cfg, "ddpm"), make_scheduler(cfg, "ddim")
    grid = timestep_grid(ddpm, 20)
    ddim.set_timesteps(20)
    assert [t for t, _ in grid] == list(range(19, -1, -1))
    g = torch.Generator().manual_seed(0)
    for t, t_prev in grid:
        x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
        ours = ddpm_step(ddpm, eps, t, t_prev, x, torch.Generator().manual_seed(t))
        ref = DDPMScheduler.step(ddpm, eps, t, x, torch.Generator().manual_seed(t))[0]
        # at t = 0 MONAI's x0 coefficient is betas[0] / (1 - abar_0) = 0.9998 in float32, not 1
        assert torch.allclose(ours, ref, atol=1e-5 if t else 5e-4), t
        assert torch.allclose(ddim_step(ddim, eps, t, t_prev, x), ddim.step(eps, t, x)[0], atol=1e-5), t


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_eta_step_by_hand(eta):
    """DDIM with eta (Song et al. eq. 16) on a strided grid: sigma = eta * sqrt(posterior variance), mean
    sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps. At eta 1 this is the ancestral DDPM's posterior
    q(x_prev | x_t, x0) (Ho et al. eq. 7), whose mean is written here in its own coefficients."""
    sched = make_scheduler(DiffusionConfig(), "ddim")
    t, t_prev = 600, 560                             # a strided step (40 training steps apart)
    a, ap = ABAR[t], ABAR[t_prev]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 1.8 - 0.9   # inside [-1, 1]: no clipping
    eps = torch.randn(2, 3, 4, 4, generator=g)
    xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(7))
    beta = 1 - a / ap
    post_var = (1 - ap) / (1 - a) * beta
    if eta == 1.0:
        mean = math.sqrt(ap) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - ap) / (1 - a) * xt
    else:
        mean = math.sqrt(ap) * x0 + math.sqrt(1 - ap - eta ** 2 * post_var) * eps
    expected = mean + eta * math.sqrt(post_var) * z
    got = ddim_step(sched, eps, t, t_prev, xt, eta, torch.Generator().manual_seed(7))
    assert torch.allclose(got, expected, atol=1e-5)
    # the last step adds no noise whatever eta is, and draws none: the chain's next chunk starts from the
    # same generator, so a draw here would move every later sample
    g_last = torch.Generator().manual_seed(7)
    last = ddim_step(sched, eps, 5, -1, xt, eta, g_last)
    assert torch.allclose(last, ddim_step(sched, eps, 5, -1, xt, 0.0), atol=1e-6)
    assert torch.equal(torch.randn(3, generator=g_last), torch.randn(3, generator=torch.Generator().manual_seed(7)))


def test_config_ddim_eta_reaches_the_chain_and_is_refused_where_it_means_nothing():
    net = _unzeroed_tiny_denoiser()
    codec, prompt = MaskCodec(M), torch.randn(P)

    def draw(cfg, **kw):
        return sample_pairs(net, prompt, 2, 32, codec, cfg=cfg, steps=3, generator=torch.Generator().manual_seed(0),
                            **kw)[0]
    with_eta = draw(DiffusionConfig(sampler="ddim", ddim_eta=1.0))
    assert torch.equal(with_eta, draw(DiffusionConfig(sampler="ddim"), eta=1.0))   # the field is the default eta
    assert not torch.allclose(with_eta, draw(DiffusionConfig(sampler="ddim")), atol=1e-3)
    # an explicit eta wins over the field; the DDPM sampler has none, so the field does not reach it
    assert torch.equal(draw(DiffusionConfig(sampler="ddim", ddim_eta=1.0), eta=0.0), draw(DiffusionConfig(sampler="ddim")))
    assert torch.equal(draw(DiffusionConfig(sampler="ddim", ddim_eta=1.0), sampler="ddpm"),
                       draw(DiffusionConfig(sampler="ddpm")))
    with pytest.raises(ValueError, match="only DDIM has an eta"):
        draw(DiffusionConfig(), sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        draw(DiffusionConfig(), sampler="ddim", eta=1.5)


# --------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_return_valid_pairs_and_restore_mode(sampler):
    net = _unzeroed_tiny_denoiser().train()
    codec = MaskCodec(M)
    kw = dict(sampler=sampler, steps=3, chunk_size=2)
    prompt = torch.randn(P)
    images, labels = sample_pairs(net, prompt, 5, 32, codec, generator=torch.Generator().manual_seed(0), **kw)
    assert images.shape == (5, 3, 32, 32) and labels.shape == (5, 32, 32) and labels.dtype == torch.long
    assert images.min() >= -1 and images.max() <= 1
    assert labels.min() >= 0 and labels.max() <= M - 1
    assert net.training
    again, _ = sample_pairs(net, prompt, 5, 32, codec, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(images, again)


def test_sample_pairs_validates_options():
    net = _unzeroed_tiny_denoiser()
    with pytest.raises(ValueError, match="ddim"):
        sample_pairs(net, torch.randn(P), 1, 32, MaskCodec(M), sampler="euler")
    with pytest.raises(ValueError, match="codec"):
        sample_pairs(net, torch.randn(P), 1, 32, MaskCodec(M + 1))
