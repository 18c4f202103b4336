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

Layout: schedule.py (forward process, grid), losses.py (eq. 1 / 3, image-only, recipe),
samplers.py (reverse steps and the one reverse-chain loop), maskcode.py, ema.py.
"""
from __future__ import annotations

from ..config import MASK_CODES, PREDICTIONS, REPLAY_TARGETS, SAMPLERS, SCHEDULES, WEIGHTINGS
from .ema import make_ema
from .losses import (JointLoss, NoiseDraws, Teacher, bjd_loss, draw_noise, draw_terms, image_loss, joint_loss, njd_loss,
                     pixel_weights, channel_weights, mask_weights, snr_weights, target, timestep_weights)
from .maskcode import MaskCodec, make_codec
from .samplers import ddim_step, ddpm_step, reverse_chain, sample_pairs, x0_and_eps
from .schedule import add_noise, check_recipe, make_scheduler, timestep_grid

__all__ = ["MASK_CODES", "PREDICTIONS", "REPLAY_TARGETS", "SAMPLERS", "SCHEDULES", "WEIGHTINGS", "JointLoss",
           "MaskCodec", "NoiseDraws", "Teacher", "add_noise", "bjd_loss", "check_recipe", "ddim_step", "ddpm_step",
           "draw_noise", "draw_terms", "image_loss", "joint_loss", "make_codec", "make_ema", "make_scheduler", "njd_loss",
           "pixel_weights", "channel_weights", "mask_weights", "reverse_chain", "sample_pairs", "snr_weights", "target", "timestep_grid", "timestep_weights", "x0_and_eps"]
