"""Segmentation loss L_seg = L_dice + L_ce (sec. 3.3) and the DSC of sec. 4.1.2, over a universal head.

The segmentor has C_max + 1 output channels (0 = background); a task with n classes uses channels
0..n. Channels above n_classes[b] are *excluded* for sample b: their logits are set to -inf before
the softmax, so the softmax (hence CE, Dice and `predict`) runs over background + the task's classes
only, and whatever the network puts in an excluded channel has no effect and gets no gradient.

Conventions (the paper does not fix them):
- Dice term: foreground classes only (background is left to CE, as in nnU-Net and as the DSC metric
  averages foreground classes), averaged over each sample's included classes. By default a batch
  Dice (nnU-Net's 2D setting): per class, intersections and sizes are summed over the samples that
  include the class before the ratio, which keeps slices where a small structure is absent from
  dominating; `batch_dice=False` gives MONAI's per-sample Dice averaged over included (sample, class)
  pairs. Smoothing is MONAI's default (1e-5 in numerator and denominator).
- DSC metric: per class over a whole split, 2 * sum|P & G| / (sum|P| + sum|G|) (sums over images),
  which avoids the empty-image problem; a class whose ground truth is empty over the whole split gets
  NaN and is left out of the task mean (MONAI DiceMetric's ignore_empty=True). The task DSC is the mean
  over its foreground classes (`task_dsc`). Accumulate `dice_counts` over batches for a large split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


def _as_n_classes(n_classes: torch.Tensor | int, batch: int, n_channels: int, where: str) -> torch.Tensor:
    n = torch.as_tensor(n_classes, dtype=torch.long)
    if n.ndim == 0:
        n = n.expand(batch)
    if n.shape != (batch,):
        raise ValueError(f"{where}: n_classes must be an int or shape ({batch},), got {tuple(n.shape)}")
    if (n < 1).any() or (n > n_channels - 1).any():
        raise ValueError(f"{where}: n_classes must lie in [1, {n_channels - 1}] (C_max = channels - 1), "
                         f"got {n.tolist()}")
    return n


def included_channels(n_classes: torch.Tensor, n_channels: int) -> torch.Tensor:
    """(B, n_channels) bool: channel c is part of sample b's task iff c <= n_classes[b] (0 = background)."""
    return torch.arange(n_channels, device=n_classes.device)[None, :] <= n_classes[:, None]


def masked_logits(logits: torch.Tensor, n_classes: torch.Tensor | int) -> torch.Tensor:
    """Logits with each sample's excluded channels set to -inf (softmax gives them exactly 0)."""
    if logits.ndim != 4:
        raise ValueError(f"masked_logits: logits must have shape (B, C_max+1, H, W), got {tuple(logits.shape)}")
    n = _as_n_classes(n_classes, logits.shape[0], logits.shape[1], "masked_logits").to(logits.device)
    keep = included_channels(n, logits.shape[1])[:, :, None, None]
    return logits.masked_fill(~keep, float("-inf"))


def _check_masks(masks: torch.Tensor, logits_shape: torch.Size, n: torch.Tensor, where: str) -> torch.Tensor:
    b, _, h, w = logits_shape
    if masks.shape != (b, h, w):
        raise ValueError(f"{where}: masks must have shape ({b}, {h}, {w}) to match the logits, got {tuple(masks.shape)}")
    masks = masks.long()
    over = masks > n.to(masks.device)[:, None, None]
    if (masks < 0).any() or over.any():
        bad = sorted(set(over.nonzero()[:, 0].tolist()) | set((masks < 0).nonzero()[:, 0].tolist()))
        raise ValueError(f"{where}: masks of sample(s) {bad} hold labels outside 0..n_classes")
    return masks


def _prepare(logits, masks, n_classes, where):
    z = masked_logits(logits, n_classes)                            # checks the logits' shape first
    n = _as_n_classes(n_classes, logits.shape[0], logits.shape[1], where).to(logits.device)
    masks = _check_masks(masks, logits.shape, n, where).to(logits.device)
    return z, masks, n


def ce_loss(logits: torch.Tensor, masks: torch.Tensor, n_classes: torch.Tensor | int) -> torch.Tensor:
    """L_ce of sec. 3.3: pixel-mean cross-entropy, softmax over background + each sample's classes."""
    z, masks, _ = _prepare(logits, masks, n_classes, "ce_loss")
    return F.cross_entropy(z, masks)


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, n_classes: torch.Tensor | int,
              batch_dice: bool = True) -> torch.Tensor:
    """L_dice of sec. 3.3: MONAI soft Dice on the masked softmax, mean over included foreground classes."""
    z, masks, n = _prepare(logits, masks, n_classes, "dice_loss")
    probs = torch.softmax(z, dim=1)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=False, batch=batch_dice,
                    reduction="none")(probs, masks[:, None])
    keep = included_channels(n, logits.shape[1])[:, 1:]            # (B, C_max) foreground
    if batch_dice:
        # Excluded samples add exactly 0 to the pooled sums (prob 0, label absent), so only classes
        # no sample includes need removing from the mean.
        dice, keep = dice.reshape(-1), keep.any(dim=0)
    else:
        dice = dice.reshape(keep.shape)
    return dice[keep].mean()


def seg_loss(logits: torch.Tensor, masks: torch.Tensor, n_classes: torch.Tensor | int,
             batch_dice: bool = True, groups: torch.Tensor | None = None) -> torch.Tensor:
    """L_seg = L_dice + L_ce (sec. 3.3) with each sample's excluded channels removed.

    Args:
        logits: (B, C_max + 1, H, W) raw segmentor output.
        masks: (B, H, W) integer label maps, 0 = background, 1..n_classes[b] the task's classes.
        n_classes: (B,) long (or an int for the whole batch), each sample's task class count.
        batch_dice: pool the Dice over the batch per class (default) or per sample (see module doc).
        groups: (B,) task ids of a batch that mixes tasks (replay). The Dice is then pooled within
            each task and averaged over tasks, as eq. 7 averages per-set losses; without it, class 1
            of one task (optic disc) would be pooled with class 1 of another (left ventricle).
    Returns:
        scalar loss.
    """
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # under CPU bf16 autocast the Dice softmax would otherwise run in bf16
    if groups is not None and batch_dice and len(torch.unique(groups)) > 1:
        n = torch.as_tensor(n_classes, device=logits.device)
        n = n.expand(logits.shape[0]) if n.ndim == 0 else n
        parts = [dice_loss(logits[groups == g], masks[groups == g], n[groups == g], True)
                 for g in torch.unique(groups)]
        return torch.stack(parts).mean() + ce_loss(logits, masks, n_classes)
    return dice_loss(logits, masks, n_classes, batch_dice) + ce_loss(logits, masks, n_classes)


def predict(logits: torch.Tensor, n_classes: torch.Tensor | int) -> torch.Tensor:
    """(B, C_max + 1, H, W) logits -> (B, H, W) long label maps; never an excluded class."""
    return masked_logits(logits, n_classes).argmax(dim=1)


def dice_counts(pred_labels: torch.Tensor, masks: torch.Tensor, n_classes: torch.Tensor | int,
                c_max: int | None = None) -> torch.Tensor:
    """(3, c_max) float64 sums over the images that include each class: |P & G|, |P|, |G| for classes 1..c_max.

    Sum these over the batches of a split and pass the total to `dice_from_counts`.
    `c_max` defaults to the largest n_classes (fix it when accumulating batches).
    """
    if pred_labels.ndim != 3 or pred_labels.shape != masks.shape:
        raise ValueError(f"dice_counts: pred_labels and masks must both be (B, H, W), got "
                         f"{tuple(pred_labels.shape)} and {tuple(masks.shape)}")
    n = torch.as_tensor(n_classes, dtype=torch.long)
    if n.ndim == 0:
        n = n.expand(pred_labels.shape[0])
    c_max = int(n.max()) if c_max is None else int(c_max)
    n = _as_n_classes(n, pred_labels.shape[0], c_max + 1, "dice_counts").to(masks.device)
    masks = _check_masks(masks, torch.Size((masks.shape[0], 1, *masks.shape[1:])), n, "dice_counts")
    pred = pred_labels.long().to(masks.device)
    out = torch.zeros(3, c_max, dtype=torch.float64)
    for c in range(1, c_max + 1):
        use = (n >= c)[:, None, None]                   # images whose task has class c
        p, g = (pred == c) & use, (masks == c) & use
        out[0, c - 1] = (p & g).sum().item()
        out[1, c - 1] = p.sum().item()
        out[2, c - 1] = g.sum().item()
    return out


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """(c_max,) DSC per foreground class from summed `dice_counts`; NaN where the ground truth is empty."""
    inter, p, g = counts.double()
    dsc = 2 * inter / (p + g).clamp(min=1)
    return torch.where(g > 0, dsc, torch.full_like(dsc, float("nan")))


def dice_per_class(pred_labels: torch.Tensor, masks: torch.Tensor, n_classes: torch.Tensor | int,
                   c_max: int | None = None) -> torch.Tensor:
    """(c_max,) per-class DSC pooled over the given images (module doc); NaN for classes with empty GT."""
    return dice_from_counts(dice_counts(pred_labels, masks, n_classes, c_max))


def task_dsc(per_class: torch.Tensor, n: int) -> float:
    """The paper's task DSC: mean over the task's foreground classes 1..n, ignoring NaN (empty GT)."""
    v = per_class[:n]
    v = v[~torch.isnan(v)]
    return float(v.mean()) if v.numel() else float("nan")
