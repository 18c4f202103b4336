"""The joint image–mask denoising network eps_theta of eq. (1) and (3), prompted as in eq. (6).

A MONAI `DiffusionModelUNet` over the channel concatenation [x, y] (3 image channels + M mask
channels) with cross-attention to the task prompt zeta. The denoiser never knows the noise
schedule: it maps (noisy pair, timestep index, prompt) to predicted noise; samplers and losses
in `c2gr_core.diffusion` own the schedule.
"""
from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from ..config import DenoiserConfig
from .attention import AttentionByDevice


class Denoiser(AttentionByDevice, nn.Module):
    """eps_theta([x, y], k; zeta) -> predicted [eps_x, eps_y] of shape (B, 3 + M, H, W).

    Args:
        cfg: network sizes (channels, attention levels, heads, groups, cross-attention dim).
        image_channels: channels of x (3: grey modalities are replicated).
        mask_channels: M, channels of the continuous mask code y (C_max + 1 for one-hot incl. background).
        prompt_dim: P, the dimension of the task prompt zeta.
        n_tokens: context tokens the prompt is mapped to.
        fast_attention: True: torch's scaled_dot_product_attention inside MONAI's attention blocks;
            False: MONAI's einsum path; None: chosen by the input's device (models/attention.py).
    """

    def __init__(self, cfg: DenoiserConfig, image_channels: int = 3, mask_channels: int = 2,
                 prompt_dim: int = 32, n_tokens: int = 4, fast_attention: bool | None = None) -> None:
        super().__init__()
        self.attention = None if fast_attention is None else ("sdpa" if fast_attention else "math")
        for name, v in (("image_channels", image_channels), ("mask_channels", mask_channels),
                        ("prompt_dim", prompt_dim), ("n_tokens", n_tokens)):
            if int(v) < 1:
                raise ValueError(f"Denoiser: {name} must be >= 1, got {v}")
        if len(cfg.attention_levels) != len(cfg.channels):
            raise ValueError(f"DenoiserConfig: attention_levels {cfg.attention_levels} must have one entry per "
                             f"level of channels {cfg.channels}")
        bad = [c for c in cfg.channels if c % cfg.norm_groups]
        if bad:
            raise ValueError(f"DenoiserConfig: channels {bad} are not multiples of norm_groups={cfg.norm_groups}")
        self.image_channels = image_channels
        self.mask_channels = mask_channels
        self.prompt_dim = prompt_dim
        self.n_tokens = n_tokens
        self.cross_attention_dim = cfg.cross_attention_dim
        channels = image_channels + mask_channels
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=channels, out_channels=channels,
            channels=tuple(cfg.channels), attention_levels=tuple(cfg.attention_levels),
            num_res_blocks=cfg.num_res_blocks, num_head_channels=cfg.num_head_channels,
            norm_num_groups=cfg.norm_groups, with_conditioning=True,
            cross_attention_dim=cfg.cross_attention_dim, use_flash_attention=bool(fast_attention),
            num_class_embeds=1 if cfg.prompt_in_timestep else None,
        )
        self.prompt_in_timestep = cfg.prompt_in_timestep
        if cfg.prompt_in_timestep:
            # MONAI's class-conditioning slot adds class_embedding(class_labels) to the timestep
            # embedding that every ResnetBlock receives; a Linear on the prompt in place of its
            # Embedding table makes that slot carry the continuous prompt.
            self.unet.class_embedding = nn.Linear(prompt_dim, self.unet.time_embed[-1].out_features)
        # Eq. (6) attends from image features to the prompt. With a single context token the
        # softmax over keys is identically 1, so the "attention" would collapse to adding V*zeta
        # everywhere; n_tokens > 1 tokens give the softmax something to choose between.
        self.prompt_adapter = nn.Linear(prompt_dim, n_tokens * cfg.cross_attention_dim)

    def context(self, prompt: torch.Tensor) -> torch.Tensor:
        """Task prompt zeta (B, P) -> cross-attention context (B, n_tokens, cross_attention_dim)."""
        if prompt.ndim != 2 or prompt.shape[1] != self.prompt_dim:
            raise ValueError(f"Denoiser: prompt must have shape (B, {self.prompt_dim}), got {tuple(prompt.shape)}")
        return self.prompt_adapter(prompt).view(prompt.shape[0], self.n_tokens, self.cross_attention_dim)

    def forward(self, xy: torch.Tensor, timesteps: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """xy (B, 3+M, H, W), timesteps (B,) long in [0, K), prompt (B, P) -> predicted noise like xy."""
        c = self.image_channels + self.mask_channels
        if xy.ndim != 4 or xy.shape[1] != c:
            raise ValueError(f"Denoiser: input must have shape (B, {c}, H, W) (image {self.image_channels} + mask "
                             f"{self.mask_channels} channels), got {tuple(xy.shape)}")
        if timesteps.shape != (xy.shape[0],) or prompt.shape[0] != xy.shape[0]:
            raise ValueError(f"Denoiser: batch sizes differ: xy {xy.shape[0]}, timesteps {tuple(timesteps.shape)}, "
                             f"prompt {tuple(prompt.shape)}")
        f = 2 ** (len(self.unet.block_out_channels) - 1)
        if xy.shape[-1] % f or xy.shape[-2] % f:
            raise ValueError(f"Denoiser: image size {tuple(xy.shape[-2:])} must be divisible by {f} "
                             f"({len(self.unet.block_out_channels)} UNet levels)")
        self._select_attention(xy)
        return self.unet(xy, timesteps, context=self.context(prompt),
                         class_labels=prompt if self.prompt_in_timestep else None)

    def example_inputs(self, batch: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random (xy, timesteps, prompt) of one batch on the network's device (speed probes)."""
        g = torch.Generator().manual_seed(0)
        dev = next(self.parameters()).device
        c = self.image_channels + self.mask_channels
        return (torch.randn(batch, c, image_size, image_size, generator=g).to(dev),
                torch.randint(0, 1000, (batch,), generator=g).to(dev),
                torch.randn(batch, self.prompt_dim, generator=g).to(dev))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the paper's cost measure, sec. 4.4.5)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
