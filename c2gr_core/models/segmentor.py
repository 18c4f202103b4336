"""The prompted universal segmentor f_theta^zeta of sec. 3.2.2 and 4.2.

A 2D UNet (paper preset: channels 32, 64, 128, 256, 512, 512, 512) built from MONAI blocks, with
`C_max + 1` output channels shared by all tasks. The task prompt zeta tells it which task it is
segmenting: at EVERY level - each encoder level, the bottleneck and each decoder level - the
features h_l are combined with the prompt by the residual cross-attention of eq. (6):

    tau_l = h_l + softmax((Q_l h_l)(K_l zeta)^T / sqrt(d_l)) (V_l zeta)

with pixels as queries and prompt tokens as keys/values. The attention is MONAI's
`CrossAttentionBlock`, multi-head: d_l is the per-head dimension (`cfg.num_head_channels`), the
heads are concatenated and mixed by an output projection W_O. With one head W_O V_l is just a
factorised V_l (plus a constant bias), so the single-head case is eq. (6) exactly; the test
checks both against an explicit loop over pixels.
"""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, CrossAttentionBlock, ResidualUnit, UpSample
from torch import nn

from ..config import SegmentorConfig
from .attention import AttentionByDevice


class PromptCrossAttention(nn.Module):
    """tau = h + CrossAttention(h, context) over the pixels of h: eq. (6) for one level.

    Args:
        channels: C_l, feature channels of h_l (the query input size).
        context_dim: size of each prompt token (`cfg.cross_attention_dim`).
        head_channels: d_l, the dimension per head; C_l // d_l heads.
        fast_attention: torch's scaled_dot_product_attention (same maths, less memory).
    """

    def __init__(self, channels: int, context_dim: int, head_channels: int, fast_attention: bool = True) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"PromptCrossAttention: channels={channels} is not a multiple of "
                             f"head_channels={head_channels}")
        self.channels = channels
        self.num_heads = channels // head_channels
        self.head_channels = head_channels
        # No normalisation in front of Q: eq. (6) projects h_l itself; h_l comes out of a
        # GroupNorm'd residual unit, so its scale is already controlled.
        self.attn = CrossAttentionBlock(hidden_size=channels, num_heads=self.num_heads,
                                        hidden_input_size=channels, context_input_size=context_dim,
                                        dim_head=head_channels, qkv_bias=False,
                                        use_flash_attention=fast_attention)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """h (B, C_l, H, W), context (B, N, D) -> tau (B, C_l, H, W)."""
        b, c, hh, ww = h.shape
        seq = h.flatten(2).transpose(1, 2)                       # pixels become the query sequence
        out = self.attn(seq, context=context)
        return h + out.transpose(1, 2).reshape(b, c, hh, ww)


class PromptedUNet(AttentionByDevice, nn.Module):
    """f_theta(x; zeta) -> logits (B, out_channels, H, W), prompt-modulated at every level.

    Level i (0..L-1, L = len(cfg.channels)) works at resolution H / 2^i with cfg.channels[i]
    channels. Encoder levels 0..L-2 and the bottleneck (level L-1) are MONAI ResidualUnits, each
    from level 1 on downsampling by a stride-2 convolution; decoder levels L-2..0 upsample by a
    transposed convolution, concatenate the skip of their level and fuse with a ResidualUnit. Each
    of these 2L-1 levels ends in a `PromptCrossAttention`.

    Args:
        cfg: channels per level, cross-attention dim, channels per head, GroupNorm groups.
        in_channels: 3 (grey modalities are replicated).
        out_channels: C_max + 1 (background + the largest class count in the stream).
        prompt_dim: P, the dimension of the task prompt zeta.
        n_tokens: cross-attention tokens the prompt is mapped to.
        fast_attention: True: torch's scaled_dot_product_attention inside the attention blocks;
            False: MONAI's einsum path; None: chosen by the input's device (models/attention.py).
    """

    def __init__(self, cfg: SegmentorConfig, in_channels: int = 3, out_channels: int = 4,
                 prompt_dim: int = 32, n_tokens: int = 4, fast_attention: bool | None = None) -> None:
        super().__init__()
        self.attention = None if fast_attention is None else ("sdpa" if fast_attention else "math")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("prompt_dim", prompt_dim), ("n_tokens", n_tokens)):
            if int(v) < 1:
                raise ValueError(f"PromptedUNet: {name} must be >= 1, got {v}")
        ch = tuple(int(c) for c in cfg.channels)
        if len(ch) < 2:
            raise ValueError(f"SegmentorConfig: channels {ch} needs at least 2 levels (encoder + bottleneck)")
        for what, div in (("norm_groups", cfg.norm_groups), ("num_head_channels", cfg.num_head_channels)):
            bad = [c for c in ch if c % div]
            if bad:
                raise ValueError(f"SegmentorConfig: channels {bad} are not multiples of {what}={div}")
        self.channels = ch
        self.in_channels, self.out_channels = in_channels, out_channels
        self.prompt_dim, self.n_tokens = prompt_dim, n_tokens
        self.cross_attention_dim = cfg.cross_attention_dim
        self.size_divisor = 2 ** (len(ch) - 1)

        # Eq. (6) attends from pixels to the prompt tokens. With a single token the softmax over
        # one key is identically 1 and the "attention" collapses to adding the same V*zeta at every
        # pixel; n_tokens > 1 give the softmax something to choose between, per pixel.
        self.prompt_adapter = nn.Linear(prompt_dim, n_tokens * cfg.cross_attention_dim)

        norm = ("group", {"num_groups": cfg.norm_groups})

        def unit(cin: int, cout: int, stride: int) -> ResidualUnit:
            return ResidualUnit(spatial_dims=2, in_channels=cin, out_channels=cout, strides=stride,
                                kernel_size=3, subunits=2, act="PRELU", norm=norm)

        def attn(c: int) -> PromptCrossAttention:
            return PromptCrossAttention(c, cfg.cross_attention_dim, cfg.num_head_channels, bool(fast_attention))

        # Encoder levels 0..L-2, then the bottleneck (level L-1).
        self.encoder = nn.ModuleList()
        self.encoder_attn = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(ch[:-1]):
            self.encoder.append(unit(prev, c, 1 if i == 0 else 2))
            self.encoder_attn.append(attn(c))
            prev = c
        self.bottleneck = unit(prev, ch[-1], 2)
        self.bottleneck_attn = attn(ch[-1])

        # Decoder levels L-2..0 (deepest first).
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.decoder_attn = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            self.upsample.append(UpSample(spatial_dims=2, in_channels=ch[i + 1], out_channels=ch[i],
                                          scale_factor=2, mode="deconv"))
            self.decoder.append(unit(2 * ch[i], ch[i], 1))
            self.decoder_attn.append(attn(ch[i]))
        self.head = Convolution(spatial_dims=2, in_channels=ch[0], out_channels=out_channels,
                                kernel_size=1, conv_only=True)

    @property
    def n_levels(self) -> int:
        """Levels with a prompt cross-attention: (L-1) encoder + bottleneck + (L-1) decoder."""
        return 2 * len(self.channels) - 1

    def context(self, prompt: torch.Tensor) -> torch.Tensor:
        """Task prompt zeta (B, P) -> cross-attention tokens (B, n_tokens, cross_attention_dim)."""
        if prompt.ndim != 2 or prompt.shape[1] != self.prompt_dim:
            raise ValueError(f"PromptedUNet: prompt must have shape (B, {self.prompt_dim}), "
                             f"got {tuple(prompt.shape)}")
        return self.prompt_adapter(prompt).view(prompt.shape[0], self.n_tokens, self.cross_attention_dim)

    def _check(self, x: torch.Tensor, prompt: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PromptedUNet: image must have shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.shape[-2] % self.size_divisor or x.shape[-1] % self.size_divisor:
            raise ValueError(f"PromptedUNet: image size {tuple(x.shape[-2:])} must be divisible by "
                             f"{self.size_divisor} ({len(self.channels)} UNet levels)")
        if prompt.shape[0] != x.shape[0]:
            raise ValueError(f"PromptedUNet: batch sizes differ: image {x.shape[0]}, prompt {tuple(prompt.shape)}")
        self._select_attention(x)

    def _encode(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        h = x
        for block, att in zip(self.encoder, self.encoder_attn):
            h = att(block(h), ctx)
            skips.append(h)
        return skips, self.bottleneck_attn(self.bottleneck(h), ctx)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1], prompt (B, P) -> logits (B, C_max + 1, H, W)."""
        self._check(x, prompt)
        ctx = self.context(prompt)
        skips, h = self._encode(x, ctx)
        for up, block, att, skip in zip(self.upsample, self.decoder, self.decoder_attn, reversed(skips)):
            h = att(block(torch.cat([up(h), skip], dim=1)), ctx)
        return self.head(h)

    def example_inputs(self, batch: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (image, prompt) of one batch on the network's device (speed probes)."""
        g = torch.Generator().manual_seed(0)
        dev = next(self.parameters()).device
        return (torch.rand(batch, self.in_channels, image_size, image_size, generator=g).to(dev) * 2 - 1,
                torch.randn(batch, self.prompt_dim, generator=g).to(dev))

    def features(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Prompt-modulated bottleneck features, global-average-pooled: (B, channels[-1]) (t-SNE, Fig. 8)."""
        self._check(x, prompt)
        _, h = self._encode(x, self.context(prompt))
        return h.mean(dim=(2, 3))
