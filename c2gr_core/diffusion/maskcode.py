"""How a label map becomes continuous channels for the joint denoiser, and back (sec. 3.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import MASK_CODES, DiffusionConfig

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

