"""Joint image–mask diffusion: mask code, forward process, NJD / BJD losses and samplers (sec. 3.1).

The pair (x, y) is an image x in [-1, 1]^(3,H,W) and a mask y coded as M continuous channels in
[-1, 1] (`MaskCodec`). The denoiser eps_theta sees their channel concatenation [x, y] and never
knows the schedule; everything about the schedule lives here (MONAI supplies the betas and
cumulative alphas, the forward process and the timestep grid).

Why the reverse steps are written here instead of calling MONAI's `step()` (MONAI 1.6.1):
- `DDPMScheduler.step(t)` always moves to t - 1 (it uses betas[t] and alphas_cumprod[t - 1]) even
  after `set_timesteps(200)`. On the paper's 200-step subset of K = 1000 each call would remove
  one training step's worth of noise while the next call is told the sample sits ~5 steps lower,
  so the chain ends far too noisy. The respaced DDPM (Nichol & Dhariwal 2021; diffusers'
  `DDPMScheduler` with `previous_timestep`) uses the strided beta 1 - abar_t / abar_prev instead.
- `DDIMScheduler.step(t)` takes t_prev = t - K // n while `set_timesteps(n)` lays the grid out by
  a rounded linspace (n = 10: 999 -> 899 in the update, but the next call is at 888).
Both steps below take t_prev from the grid itself; with every step run (n = K) they reduce to
MONAI's (tests/c2gr_core/test_diffusion.py checks both facts).

The training recipe (`DiffusionConfig`): what the denoiser predicts (`prediction`: "eps" as in
eq. 1 and 3, or "v" = sqrt(abar) eps - sqrt(1 - abar) x0, Salimans & Ho 2022), how the timesteps
are weighted (`loss_weighting`: "uniform" as written in the paper, or "min_snr", Hang et al. 2023)
and an exponential moving average of the denoiser weights that samples the replay (`ema_decay`).
The paper does not say which parameterisation it used; at the sizes a CPU trains, eps with uniform
weights produced noise and v + min-SNR + EMA usable pairs (BENCHMARKS.md, generator diagnostic).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from c2gr_core.config import DiffusionConfig

SAMPLERS = ("ddpm", "ddim")
SCHEDULES = ("linear_beta", "scaled_linear_beta")
MASK_CODES = ("onehot",)
PREDICTIONS = ("eps", "v")
WEIGHTINGS = ("uniform", "min_snr")
REPLAY_TARGETS = ("data", "teacher")


# ---------------------------------------------------------------------------------- mask code
class MaskCodec:
    """One-hot code of a label map in [-1, 1]: +1 in the channel of the pixel's class, -1 elsewhere.

    `n_labels` counts the background: C_max + 1 for the universal model. decode(encode(y)) == y.
    """

    def __init__(self, n_labels: int) -> None:
        if int(n_labels) < 2:
            raise ValueError(f"MaskCodec: n_labels must be >= 2 (background + >= 1 class), got {n_labels}")
        self.n_labels = int(n_labels)

    @property
    def channels(self) -> int:
        return self.n_labels

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) integer labels in 0..n_labels-1 -> (B, n_labels, H, W) float32 in {-1, +1}."""
        if labels.is_floating_point() or labels.ndim != 3:
            raise ValueError(f"MaskCodec.encode: expected an integer label map (B, H, W), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.n_labels):
            raise ValueError(f"MaskCodec.encode: labels must lie in 0..{self.n_labels - 1}, found "
                             f"{int(labels.min())}..{int(labels.max())}")
        onehot = F.one_hot(labels, self.n_labels).permute(0, 3, 1, 2).float()
        return onehot * 2.0 - 1.0

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """(B, n_labels, H, W) continuous code -> (B, H, W) long labels (argmax over channels)."""
        if code.ndim != 4 or code.shape[1] != self.n_labels:
            raise ValueError(f"MaskCodec.decode: expected (B, {self.n_labels}, H, W), got {tuple(code.shape)}")
        return code.argmax(dim=1)


def make_codec(cfg: DiffusionConfig, n_labels: int) -> MaskCodec:
    """The mask code named by `cfg.mask_code` for `n_labels` labels (background included)."""
    if cfg.mask_code not in MASK_CODES:
        raise ValueError(f"DiffusionConfig.mask_code: unknown {cfg.mask_code!r}; allowed: {list(MASK_CODES)}")
    return MaskCodec(n_labels)


# ---------------------------------------------------------------------------- forward process
def make_scheduler(cfg: DiffusionConfig, kind: str = "ddpm") -> DDPMScheduler | DDIMScheduler:
    """MONAI scheduler with K = cfg.num_train_timesteps steps of cfg.schedule (sec. 4.2: K = 1000).

    Predicted x0 is clipped to [-1, 1] in the reverse steps: both the image and the mask code live there.
    """
    if kind not in SAMPLERS:
        raise ValueError(f"make_scheduler: unknown kind {kind!r}; allowed: {list(SAMPLERS)}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"DiffusionConfig.schedule: unknown {cfg.schedule!r}; allowed: {list(SCHEDULES)}")
    if int(cfg.num_train_timesteps) < 2:
        raise ValueError(f"DiffusionConfig.num_train_timesteps must be >= 2, got {cfg.num_train_timesteps}")
    if not 0.0 < cfg.beta_start < cfg.beta_end < 1.0:
        raise ValueError(f"DiffusionConfig: need 0 < beta_start < beta_end < 1, got {cfg.beta_start}, {cfg.beta_end}")
    check_recipe(cfg)
    common = dict(num_train_timesteps=int(cfg.num_train_timesteps), schedule=cfg.schedule,
                  beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=True)
    if kind == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    return DDIMScheduler(set_alpha_to_one=True, **common)


def check_recipe(cfg: DiffusionConfig) -> None:
    """Refuse a training recipe the losses and samplers do not know, naming the field."""
    if cfg.prediction not in PREDICTIONS:
        raise ValueError(f"DiffusionConfig.prediction: unknown {cfg.prediction!r}; allowed: {list(PREDICTIONS)}")
    if cfg.loss_weighting not in WEIGHTINGS:
        raise ValueError(f"DiffusionConfig.loss_weighting: unknown {cfg.loss_weighting!r}; allowed: {list(WEIGHTINGS)}")
    if isinstance(cfg.snr_gamma, bool) or not isinstance(cfg.snr_gamma, (int, float)) or not cfg.snr_gamma > 0:
        raise ValueError(f"DiffusionConfig.snr_gamma must be a number > 0, got {cfg.snr_gamma!r}")
    if cfg.replay_target not in REPLAY_TARGETS:
        raise ValueError(f"DiffusionConfig.replay_target: unknown {cfg.replay_target!r}; allowed: {list(REPLAY_TARGETS)}")
    if isinstance(cfg.ema_decay, bool) or not isinstance(cfg.ema_decay, (int, float)) or not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"DiffusionConfig.ema_decay must be a number in [0, 1) (0: no EMA), got {cfg.ema_decay!r}")


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Forward process of sec. 3.1.1: x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps, k (B,) per sample."""
    return scheduler.add_noise(original_samples=x0, noise=noise, timesteps=k)


def _abar(scheduler, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """abar_k per sample, shaped (B, 1, 1, 1) to broadcast over `like`."""
    a = scheduler.alphas_cumprod.to(like.device, torch.float32)[k.to(like.device)]
    return a.view(-1, *([1] * (like.ndim - 1)))


def target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """What the denoiser is trained to output for a part with clean value x0 and noise `noise`:
    eps itself, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, eq. in sec. 4)."""
    if prediction == "eps":
        return noise
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def snr_weights(scheduler, k: torch.Tensor, prediction: str, weighting: str, gamma: float) -> torch.Tensor:
    """(B,) loss weight of each sample's timestep. "uniform": 1 (eq. 1 and 3 as written).
    "min_snr" (Hang et al. 2023): the x0-space weight min(SNR, gamma) expressed in the space the
    denoiser predicts, min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v,
    with SNR_k = abar_k / (1 - abar_k)."""
    if weighting == "uniform":
        return torch.ones(k.shape, dtype=torch.float32, device=k.device)
    a = scheduler.alphas_cumprod.to(k.device, torch.float64)[k]
    snr = a / (1 - a)
    clipped = snr.clamp(max=float(gamma))
    return (clipped / snr if prediction == "eps" else clipped / (snr + 1)).float()


def _weighted_mse(pred: torch.Tensor, tgt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean over samples of w_i times sample i's mean squared error; with w = 1 the plain MSE."""
    per_sample = (pred.float() - tgt.float()).pow(2).flatten(1).mean(1)
    return (w.to(per_sample.device) * per_sample).mean()


def make_ema(denoiser: nn.Module, decay: float) -> AveragedModel | None:
    """EMA copy of the denoiser weights (decay 0: none). `update_parameters(denoiser)` after each
    optimiser step; sample with `.module`. Its weights are never trained, so they ask for no grad."""
    if not decay:
        return None
    ema = AveragedModel(denoiser, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)
    ema.requires_grad_(False)
    return ema


# ------------------------------------------------------------------------------------ losses
@dataclass
class NoiseDraws:
    """The random part of eq. (1)/(3): one timestep k and one (eps_x, eps_y) per sample."""
    k: torch.Tensor        # (B,) long
    eps_x: torch.Tensor    # like x0
    eps_y: torch.Tensor    # like y0


@dataclass
class Teacher:
    """A frozen copy of the generator as a round began, and the prompts it was trained with.

    With `replay_target = "teacher"` the loss on replayed pairs regresses the teacher's outputs on the
    same noised inputs instead of the analytic targets (generative distillation, Masip et al. 2023):
    the generator is asked to keep the function that produced the replay, not to re-learn the
    replay's pixels, whose errors would otherwise be learnt again every round."""
    denoiser: nn.Module
    prompt: torch.Tensor   # (B, P): the teacher's prompt for each pair


def _teacher_out(teacher: Teacher, inputs: torch.Tensor, k: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return teacher.denoiser(inputs, k, teacher.prompt.repeat(repeat, 1)).float()


@dataclass
class JointLoss:
    """`total` carries the gradient; `terms` are detached per-term values for logging."""
    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def _randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    # Drawing on the generator's device keeps a seeded run identical on CPU and GPU.
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def draw_noise(x0: torch.Tensor, y0: torch.Tensor, num_train_timesteps: int,
               generator: torch.Generator | None = None) -> NoiseDraws:
    """k ~ U{0..K-1}, eps_x, eps_y ~ N(0, I), drawn in that order from `generator`."""
    b = x0.shape[0]
    gdev = generator.device if generator is not None else x0.device
    k = torch.randint(0, int(num_train_timesteps), (b,), generator=generator, device=gdev).to(x0.device)
    return NoiseDraws(k, _randn(x0.shape, generator, x0.device), _randn(y0.shape, generator, y0.device))


def _check_pair(x0: torch.Tensor, y0: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    if x0.ndim != 4 or y0.ndim != 4 or x0.shape[0] != y0.shape[0] or x0.shape[2:] != y0.shape[2:]:
        raise ValueError(f"joint diffusion: x0 (B, 3, H, W) and y0 (B, M, H, W) must agree, got "
                         f"{tuple(x0.shape)} and {tuple(y0.shape)}")
    if not y0.is_floating_point():
        raise ValueError("joint diffusion: y0 must be the continuous mask code (MaskCodec.encode), not labels")
    if prompt.ndim == 1:
        prompt = prompt.unsqueeze(0).expand(x0.shape[0], -1)
    if prompt.ndim != 2 or prompt.shape[0] != x0.shape[0]:
        raise ValueError(f"joint diffusion: prompt must be (P,) or (B, P) with B = {x0.shape[0]}, "
                         f"got {tuple(prompt.shape)}")
    return prompt


def njd_loss(denoiser: nn.Module, x0: torch.Tensor, y0: torch.Tensor, prompt: torch.Tensor, scheduler,
             generator: torch.Generator | None = None, draws: NoiseDraws | None = None,
             cfg: DiffusionConfig | None = None, teacher: Teacher | None = None) -> JointLoss:
    """Naive joint diffusion, eq. (1): || [eps_x, eps_y] - eps_theta([x_k, y_k], k) ||^2.

    The squared norm is the mean squared error over all elements (batch, channels, pixels). With
    cfg.prediction = "v" the target is [v_x, v_y]; cfg.loss_weighting weights each sample's error
    by its timestep (`snr_weights`). cfg defaults to DiffusionConfig() (eps, uniform: eq. 1 as written).
    """
    cfg = cfg or DiffusionConfig()
    prompt = _check_pair(x0, y0, prompt)
    d = draws if draws is not None else draw_noise(x0, y0, scheduler.num_train_timesteps, generator)
    xk, yk = add_noise(scheduler, x0, d.eps_x, d.k), add_noise(scheduler, y0, d.eps_y, d.k)
    pred = denoiser(torch.cat([xk, yk], 1), d.k, prompt)
    a = _abar(scheduler, d.k, x0)
    tgt = torch.cat([target(cfg.prediction, x0, d.eps_x, a), target(cfg.prediction, y0, d.eps_y, a)], 1)
    if teacher is not None:
        tgt = _teacher_out(teacher, torch.cat([xk, yk], 1), d.k)
    w = snr_weights(scheduler, d.k, cfg.prediction, cfg.loss_weighting, cfg.snr_gamma)
    loss = _weighted_mse(pred, tgt, w)
    return JointLoss(loss, {"joint": loss.detach()})


def bjd_loss(denoiser: nn.Module, x0: torch.Tensor, y0: torch.Tensor, prompt: torch.Tensor, scheduler,
             batched: bool = True, generator: torch.Generator | None = None,
             draws: NoiseDraws | None = None, cfg: DiffusionConfig | None = None,
             teacher: Teacher | None = None) -> JointLoss:
    """Bayesian joint diffusion, eq. (3): the joint term of eq. (1) plus two conditional terms

        || [eps_x, 0] - eps_theta([x_k, y_0], k) ||^2    image denoised with the clean mask as reference
        || [0, eps_y] - eps_theta([x_0, y_k], k) ||^2    mask denoised with the clean image as reference

    with the same k, eps_x, eps_y per sample in all three. Each term is the mean squared error over
    all its elements; the loss is their sum. `batched` stacks the three inputs along the batch into
    one denoiser forward (same result as three forwards, see benchmarks/diffusion_speed.py for speed).

    Under cfg.prediction = "v" every part's target is `target("v", clean, noise, abar_k)`. The clean
    half of a conditional term carries no noise, so its target is v with eps = 0, i.e.
    -sqrt(1 - abar_k) * clean: the same definition as for a noisy part, and the direct analogue of
    eq. 3's zero under eps. (The other reading, "a v that the sampler would decode into eps = 0",
    is -sqrt((1 - abar_k) / abar_k) * clean: 160x the data at k = 999, which would swamp the loss.)
    The per-sample weights of cfg.loss_weighting apply to all three terms alike. With a `teacher`
    the targets of all three terms are the teacher's outputs on the same inputs (see `Teacher`).
    """
    cfg = cfg or DiffusionConfig()
    prompt = _check_pair(x0, y0, prompt)
    d = draws if draws is not None else draw_noise(x0, y0, scheduler.num_train_timesteps, generator)
    xk, yk = add_noise(scheduler, x0, d.eps_x, d.k), add_noise(scheduler, y0, d.eps_y, d.k)
    inputs = [torch.cat([xk, yk], 1), torch.cat([xk, y0], 1), torch.cat([x0, yk], 1)]
    a = _abar(scheduler, d.k, x0)
    tx, ty = target(cfg.prediction, x0, d.eps_x, a), target(cfg.prediction, y0, d.eps_y, a)
    cx = target(cfg.prediction, x0, torch.zeros_like(d.eps_x), a)   # clean image: no noise on this half
    cy = target(cfg.prediction, y0, torch.zeros_like(d.eps_y), a)   # clean mask: no noise on this half
    targets = [torch.cat([tx, ty], 1), torch.cat([tx, cy], 1), torch.cat([cx, ty], 1)]
    if teacher is not None:
        targets = list(_teacher_out(teacher, torch.cat(inputs, 0), d.k.repeat(3), repeat=3).chunk(3, dim=0))
    if batched:
        preds = denoiser(torch.cat(inputs, 0), d.k.repeat(3), prompt.repeat(3, 1)).chunk(3, dim=0)
    else:
        preds = [denoiser(inp, d.k, prompt) for inp in inputs]
    w = snr_weights(scheduler, d.k, cfg.prediction, cfg.loss_weighting, cfg.snr_gamma)
    names = ("joint", "image_given_mask", "mask_given_image")
    terms = {n: _weighted_mse(p, t, w) for n, p, t in zip(names, preds, targets)}
    total = terms["joint"] + terms["image_given_mask"] + terms["mask_given_image"]
    return JointLoss(total, {n: v.detach() for n, v in terms.items()})


def image_loss(denoiser: nn.Module, x0: torch.Tensor, prompt: torch.Tensor, scheduler,
               generator: torch.Generator | None = None, cfg: DiffusionConfig | None = None,
               teacher: Teacher | None = None) -> JointLoss:
    """The image-only objective of GR (Ho et al. eq. 14 under the same recipe): || eps - eps_theta(x_k, k) ||^2."""
    cfg = cfg or DiffusionConfig()
    if x0.ndim != 4:
        raise ValueError(f"image diffusion: x0 must be (B, C, H, W), got {tuple(x0.shape)}")
    gdev = generator.device if generator is not None else x0.device
    k = torch.randint(0, int(scheduler.num_train_timesteps), (x0.shape[0],), generator=generator,
                      device=gdev).to(x0.device)
    eps = _randn(x0.shape, generator, x0.device)
    xk = add_noise(scheduler, x0, eps, k)
    pred = denoiser(xk, k, prompt)
    w = snr_weights(scheduler, k, cfg.prediction, cfg.loss_weighting, cfg.snr_gamma)
    tgt = target(cfg.prediction, x0, eps, _abar(scheduler, k, x0)) if teacher is None else _teacher_out(teacher, xk, k)
    loss = _weighted_mse(pred, tgt, w)
    return JointLoss(loss, {"image": loss.detach()})


def joint_loss(cfg: DiffusionConfig, denoiser, x0, y0, prompt, scheduler, generator=None) -> JointLoss:
    """The loss named by `cfg.objective`: "bjd" (eq. 3, batched) or "njd" (eq. 1), under cfg's recipe."""
    if cfg.objective == "bjd":
        return bjd_loss(denoiser, x0, y0, prompt, scheduler, batched=True, generator=generator, cfg=cfg)
    if cfg.objective == "njd":
        return njd_loss(denoiser, x0, y0, prompt, scheduler, generator=generator, cfg=cfg)
    raise ValueError(f"DiffusionConfig.objective: unknown {cfg.objective!r}; allowed: ['bjd', 'njd']")


# ----------------------------------------------------------------------------- reverse steps
def _alphas(scheduler, t: int, t_prev: int, like: torch.Tensor):
    abar = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)
    a_t = abar[t]
    a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), device=like.device)
    return a_t, a_prev


def x0_and_eps(output: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor, prediction: str = "eps"):
    """The denoiser's output read as (predicted x_0, predicted eps) at cumulative alpha a_t.

    eps: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (Ho et al. eq. 15).
    v:   x0 = sqrt(a) x_t - sqrt(1 - a) v,  eps = sqrt(1 - a) x_t + sqrt(a) v (Salimans & Ho 2022).
    """
    if prediction == "eps":
        return (sample - (1.0 - a_t).sqrt() * output) / a_t.sqrt(), output
    if prediction == "v":
        return a_t.sqrt() * sample - (1.0 - a_t).sqrt() * output, (1.0 - a_t).sqrt() * sample + a_t.sqrt() * output
    raise ValueError(f"prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")


def ddpm_step(scheduler, output: torch.Tensor, t: int, t_prev: int, sample: torch.Tensor,
              generator: torch.Generator | None = None, prediction: str = "eps") -> torch.Tensor:
    """One ancestral step x_t -> x_{t_prev} of a (possibly strided) DDPM, Ho et al. eq. (6)-(7).

    `output` is the denoiser's prediction (eps or v, see `prediction`). t_prev = -1 marks the
    last step (abar_prev = 1, no noise added).
    """
    # 1. cumulative alphas at both ends and the beta of the strided step t -> t_prev
    a_t, a_prev = _alphas(scheduler, t, t_prev, sample)
    beta_t = 1.0 - a_t / a_prev
    # 2. predicted x_0 from the denoiser's output
    x0, _ = x0_and_eps(output, sample, a_t, prediction)
    # 3. clip predicted x_0 to the data range
    x0 = x0.clamp(-1.0, 1.0)
    # 4. posterior mean coefficients of q(x_{t_prev} | x_t, x_0) (Ho et al. eq. 7)
    c0 = a_prev.sqrt() * beta_t / (1.0 - a_t)
    ct = (1.0 - beta_t).sqrt() * (1.0 - a_prev) / (1.0 - a_t)
    # 5. posterior mean
    mean = c0 * x0 + ct * sample
    # 6. add noise with the posterior variance ("fixed small"), except on the last step
    if t_prev < 0:
        return mean
    var = ((1.0 - a_prev) / (1.0 - a_t) * beta_t).clamp(min=1e-20)
    return mean + var.sqrt() * _randn(sample.shape, generator, sample.device, sample.dtype)


def ddim_step(scheduler, output: torch.Tensor, t: int, t_prev: int, sample: torch.Tensor, eta: float = 0.0,
              generator: torch.Generator | None = None, prediction: str = "eps") -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev}, Song et al. eq. (12) and (16); eta = 0 is deterministic."""
    # 1. cumulative alphas at t and at the previous grid point (1 after the last step)
    a_t, a_prev = _alphas(scheduler, t, t_prev, sample)
    # 2. predicted x_0 ("f_theta(x_t)" of eq. 12) and predicted noise
    x0, eps = x0_and_eps(output, sample, a_t, prediction)
    # 3. clip predicted x_0 to the data range
    x0 = x0.clamp(-1.0, 1.0)
    # 4. sigma_t(eta) of eq. (16)
    sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt()
    # 5. direction pointing to x_t
    direction = (1.0 - a_prev - sigma ** 2).clamp(min=0.0).sqrt() * eps
    # 6. x_{t_prev} without the random part
    prev = a_prev.sqrt() * x0 + direction
    # 7. random part (eta > 0 only)
    if eta > 0 and t_prev >= 0:
        prev = prev + sigma * _randn(sample.shape, generator, sample.device, sample.dtype)
    return prev


def timestep_grid(scheduler, steps: int) -> list[tuple[int, int]]:
    """(t, t_prev) pairs of the reverse chain on MONAI's grid for `steps` steps; t_prev = -1 ends it."""
    if not 1 <= int(steps) <= scheduler.num_train_timesteps:
        raise ValueError(f"sampler steps must be in 1..{scheduler.num_train_timesteps}, got {steps}")
    scheduler.set_timesteps(int(steps))
    ts = [int(t) for t in scheduler.timesteps]
    return list(zip(ts, ts[1:] + [-1]))


# ---------------------------------------------------------------------------------- sampling
@torch.no_grad()
def reverse_chain(denoiser: nn.Module, prompt: torch.Tensor, n: int, channels: int, image_size: int,
                  sampler: str | None = None, steps: int | None = None, cfg: DiffusionConfig | None = None,
                  generator: torch.Generator | None = None, progress: bool | str = False, chunk_size: int = 64,
                  eta: float = 0.0) -> torch.Tensor:
    """n samples (n, channels, H, W) drawn from pure noise by the reverse process (sec. 3.1).

    The one reverse-chain loop of the workbench: joint pairs (`sample_pairs`) and GR's images use it.
    prompt: (P,) for one task or (n, P) per sample. sampler/steps default to cfg.sampler/cfg.sample_steps
    (paper: DDPM, 200 steps over K = 1000); the output is read as cfg.prediction. Samples are drawn
    `chunk_size` at a time; `progress` (True or a description) shows a bar over reverse steps.
    """
    cfg = cfg or DiffusionConfig()
    sampler = cfg.sampler if sampler is None else sampler
    steps = int(cfg.sample_steps if steps is None else steps)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown {sampler!r}; allowed: {list(SAMPLERS)}")
    if n < 1 or chunk_size < 1:
        raise ValueError(f"sampling: n and chunk_size must be >= 1, got {n}, {chunk_size}")
    prompt = prompt.unsqueeze(0).expand(n, -1) if prompt.ndim == 1 else prompt
    if prompt.ndim != 2 or prompt.shape[0] != n:
        raise ValueError(f"sampling: prompt must be (P,) or ({n}, P), got {tuple(prompt.shape)}")
    scheduler = make_scheduler(cfg, sampler)
    grid = timestep_grid(scheduler, steps)
    param = next(denoiser.parameters(), None)
    device = param.device if param is not None else prompt.device
    prompt = prompt.to(device)

    was_training = denoiser.training
    denoiser.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        desc = progress if isinstance(progress, str) else f"{sampler}-{steps}"
        bar = tqdm(total=len(grid) * -(-n // chunk_size), desc=desc)
    out = []
    try:
        for start in range(0, n, chunk_size):
            zeta = prompt[start:start + chunk_size]
            b = zeta.shape[0]
            # 1. pure noise, drawn on the generator's device so CPU and GPU runs match
            xy = _randn((b, channels, image_size, image_size), generator, device)
            # 2. the reverse chain on the sampler's timestep grid
            for t, t_prev in grid:
                pred = denoiser(xy, torch.full((b,), t, device=device, dtype=torch.long), zeta).float()
                if sampler == "ddpm":
                    xy = ddpm_step(scheduler, pred, t, t_prev, xy, generator, cfg.prediction)
                else:
                    xy = ddim_step(scheduler, pred, t, t_prev, xy, eta, generator, cfg.prediction)
                if bar is not None:
                    bar.update(1)
            out.append(xy)
    finally:
        denoiser.train(was_training)
        if bar is not None:
            bar.close()
    return torch.cat(out)


def sample_pairs(denoiser: nn.Module, prompt: torch.Tensor, n: int, image_size: int, codec: MaskCodec,
                 sampler: str | None = None, steps: int | None = None, cfg: DiffusionConfig | None = None,
                 generator: torch.Generator | None = None, progress: bool | str = False, chunk_size: int = 64,
                 eta: float = 0.0, image_channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n image–mask pairs with `reverse_chain`, prompted by zeta.

    Returns images (n, 3, H, W) clamped to [-1, 1] and labels (n, H, W) long in 0..n_labels-1.
    """
    mask_channels = getattr(denoiser, "mask_channels", codec.channels)
    if mask_channels != codec.channels:
        raise ValueError(f"sample_pairs: codec has {codec.channels} channels, denoiser expects {mask_channels}")
    xy = reverse_chain(denoiser, prompt, n, image_channels + codec.channels, image_size, sampler=sampler,
                       steps=steps, cfg=cfg, generator=generator, progress=progress, chunk_size=chunk_size, eta=eta)
    return xy[:, :image_channels].clamp(-1.0, 1.0), codec.decode(xy[:, image_channels:])
