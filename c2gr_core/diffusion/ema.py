"""EMA of the denoiser weights that samples the replay (torch's AveragedModel, not a hand loop)."""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

def make_ema(denoiser: nn.Module, decay: float) -> AveragedModel | None:
    """EMA copy of the denoiser weights (decay 0: none). `update_parameters(denoiser)` after each
    optimiser step; sample with `.module`. Its weights are never trained, so they ask for no grad."""
    if not decay:
        return None
    ema = AveragedModel(denoiser, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)
    ema.requires_grad_(False)
    return ema

