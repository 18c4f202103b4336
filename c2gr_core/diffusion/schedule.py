"""The forward process and the timestep grid: MONAI supplies the betas, cumulative alphas and grid.

`check_recipe` refuses a training recipe the losses and samplers do not know, naming the field.
"""
from __future__ import annotations

import math

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ..config import (MASK_BALANCE_BY, PREDICTIONS, REPLAY_TARGETS, SAMPLERS, SCHEDULES, TERM_SAMPLING, WEIGHTINGS,
                      DiffusionConfig)

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
    mb = cfg.mask_balance
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not 0 <= mb <= 1:
        raise ValueError(f"DiffusionConfig.mask_balance must be a number in [0, 1] (0: every pixel alike), got {mb!r}")
    if cfg.teacher_weighting is not None and cfg.teacher_weighting not in WEIGHTINGS:
        raise ValueError(f"DiffusionConfig.teacher_weighting: unknown {cfg.teacher_weighting!r}; allowed: "
                         f"None, {list(WEIGHTINGS)}")
    ts = cfg.teacher_scale
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 < ts < math.inf:
        raise ValueError(f"DiffusionConfig.teacher_scale must be a finite number > 0, got {ts!r}")
    if cfg.mask_balance_by not in MASK_BALANCE_BY:
        raise ValueError(f"DiffusionConfig.mask_balance_by: unknown {cfg.mask_balance_by!r}; allowed: {list(MASK_BALANCE_BY)}")
    if cfg.term_sampling not in TERM_SAMPLING:
        raise ValueError(f"DiffusionConfig.term_sampling: unknown {cfg.term_sampling!r}; allowed: {list(TERM_SAMPLING)}")


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Forward process of sec. 3.1.1: x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps, k (B,) per sample."""
    return scheduler.add_noise(original_samples=x0, noise=noise, timesteps=k)


def _abar(scheduler, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """abar_k per sample, shaped (B, 1, 1, 1) to broadcast over `like`."""
    a = scheduler.alphas_cumprod.to(like.device, torch.float32)[k.to(like.device)]
    return a.view(-1, *([1] * (like.ndim - 1)))




def _alphas(scheduler, t: int, t_prev: int, like: torch.Tensor):
    abar = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)
    a_t = abar[t]
    a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), device=like.device)
    return a_t, a_prev



def timestep_grid(scheduler, steps: int) -> list[tuple[int, int]]:
    """(t, t_prev) pairs of the reverse chain on MONAI's grid for `steps` steps; t_prev = -1 ends it."""
    if not 1 <= int(steps) <= scheduler.num_train_timesteps:
        raise ValueError(f"sampler steps must be in 1..{scheduler.num_train_timesteps}, got {steps}")
    scheduler.set_timesteps(int(steps))
    ts = [int(t) for t in scheduler.timesteps]
    return list(zip(ts, ts[1:] + [-1]))


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) of `shape` on `device`, drawn from `generator` (or torch's global one)."""
    # Drawing on the generator's device keeps a seeded run identical on CPU and GPU.
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
