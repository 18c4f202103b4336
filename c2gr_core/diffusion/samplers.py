"""The reverse process: DDPM (strided) and DDIM steps with their numbered equations, and the one
reverse-chain loop every generative method samples through (`reverse_chain`, `sample_pairs`)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import PREDICTIONS, SAMPLERS, DiffusionConfig
from .maskcode import MaskCodec
from .schedule import _alphas, make_scheduler, randn, timestep_grid

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
    return mean + var.sqrt() * randn(sample.shape, generator, sample.device, sample.dtype)


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
        prev = prev + sigma * randn(sample.shape, generator, sample.device, sample.dtype)
    return prev



@torch.no_grad()
def reverse_chain(denoiser: nn.Module, prompt: torch.Tensor, n: int, channels: int, image_size: int,
                  sampler: str | None = None, steps: int | None = None, cfg: DiffusionConfig | None = None,
                  generator: torch.Generator | None = None, progress=False, chunk_size: int = 64,
                  eta: float | None = None, bf16: bool = False) -> torch.Tensor:
    """n samples (n, channels, H, W) drawn from pure noise by the reverse process (sec. 3.1).

    The one reverse-chain loop of the workbench: joint pairs (`sample_pairs`) and GR's images use it.
    prompt: (P,) for one task or (n, P) per sample. sampler/steps default to cfg.sampler/cfg.sample_steps
    (paper: DDPM, 200 steps over K = 1000), DDIM's eta to cfg.ddim_eta; the output is read as cfg.prediction. Samples are drawn
    `chunk_size` at a time; `progress` (True or a description) shows a bar over reverse steps, or
    is an open bar (anything with `update(n)`, e.g. a tqdm the caller owns and closes) that each
    reverse step advances by one: the replay inspector draws in several calls under one bar.
    bf16: the denoiser runs under bf16 autocast (a run trained so, training/numerics.py); the chain
    itself (x_t, the step arithmetic) stays fp32.
    """
    cfg = cfg or DiffusionConfig()
    sampler = cfg.sampler if sampler is None else sampler
    steps = int(cfg.sample_steps if steps is None else steps)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown {sampler!r}; allowed: {list(SAMPLERS)}")
    if eta is not None and eta != 0 and sampler != "ddim":
        raise ValueError(f"sampling: eta {eta} given for the {sampler!r} sampler; only DDIM has an eta")
    # cfg.ddim_eta belongs to DDIM: a caller that picks the DDPM sampler on such a config gets plain DDPM.
    eta = float(cfg.ddim_eta if eta is None else eta)
    if not 0 <= eta <= 1:
        raise ValueError(f"sampling: eta must be in [0, 1] (Song et al. eq. 16), got {eta}")
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
    bar, own_bar = None, False
    if hasattr(progress, "update"):
        bar = progress
    elif progress:
        from tqdm.auto import tqdm
        own_bar = True
        desc = progress if isinstance(progress, str) else f"{sampler}-{steps}"
        bar = tqdm(total=len(grid) * -(-n // chunk_size), desc=desc)
    out = []
    try:
        for start in range(0, n, chunk_size):
            zeta = prompt[start:start + chunk_size]
            b = zeta.shape[0]
            # 1. pure noise, drawn on the generator's device so CPU and GPU runs match
            xy = randn((b, channels, image_size, image_size), generator, device)
            # 2. the reverse chain on the sampler's timestep grid
            for t, t_prev in grid:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
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
        if own_bar:
            bar.close()
    return torch.cat(out)


def sample_pairs(denoiser: nn.Module, prompt: torch.Tensor, n: int, image_size: int, codec: MaskCodec,
                 sampler: str | None = None, steps: int | None = None, cfg: DiffusionConfig | None = None,
                 generator: torch.Generator | None = None, progress=False, chunk_size: int = 64,
                 eta: float | None = None, image_channels: int = 3, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n image–mask pairs with `reverse_chain`, prompted by zeta.

    Returns images (n, 3, H, W) clamped to [-1, 1] and labels (n, H, W) long in 0..n_labels-1.
    """
    mask_channels = getattr(denoiser, "mask_channels", codec.channels)
    if mask_channels != codec.channels:
        raise ValueError(f"sample_pairs: codec has {codec.channels} channels, denoiser expects {mask_channels}")
    xy = reverse_chain(denoiser, prompt, n, image_channels + codec.channels, image_size, sampler=sampler,
                       steps=steps, cfg=cfg, generator=generator, progress=progress, chunk_size=chunk_size, eta=eta, bf16=bf16)
    return xy[:, :image_channels].clamp(-1.0, 1.0), codec.decode(xy[:, image_channels:])
