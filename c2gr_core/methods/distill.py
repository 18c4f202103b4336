"""Feature distillation in the PLOP / LwF family (sec. 4.3.1), for a prompted segmentor.

At the start of round t a frozen copy of the segmentor (and its prompt projection) is kept: the
model as it stood after round t-1. On the current task's images - the only data there is - each
sample is given one past task j (stratified: the batch is split evenly over the past tasks) and
both models segment it *as task j*, prompted by zeta_j. The new model is pulled towards the old
one on two things:

- outputs (LwF, Li & Hoiem 2017): T^2 KL(softmax(z_old / T) || softmax(z_new / T)) per pixel,
  over background + task j's classes only;
- intermediate features (PLOP's Local POD, Douillard et al. 2021): each encoder level
  and the bottleneck, squared, pooled along width and along height inside 1x1, 2x2 and 4x4
  windows, concatenated, L2-normalised; the loss is the Euclidean distance between the old and
  new embeddings, averaged over samples and levels.

PLOP's pseudo-labels have no counterpart here: a past task's objective is not a class of the
current one. The old model is not checkpointed: it is the model loaded from round t-1's
checkpoint, so a resumed run copies the same one in before_round.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.segmentor import PromptedUNet
from ..prompting.prompts import prompt_pool
from ..training import distributed
from . import register
from .base import SegmentorMethod


@contextlib.contextmanager
def capture_levels(seg: PromptedUNet):
    """Collects the prompt-modulated encoder levels and bottleneck (tau_l of eq. 6) of one forward."""
    feats: list[torch.Tensor] = []
    mods = list(seg.encoder_attn) + [seg.bottleneck_attn]
    hooks = [m.register_forward_hook(lambda _m, _i, out: feats.append(out)) for m in mods]
    try:
        yield feats
    finally:
        for h in hooks:
            h.remove()


def local_pod(h: torch.Tensor, scales=(1, 2, 4)) -> torch.Tensor:
    """PLOP's Local POD embedding of a feature map (B, C, H, W): (B, D), L2-normalised.

    Squared activations are averaged along W and along H inside each window of an s x s grid,
    for every scale s (scales finer than the map are skipped).
    """
    b, _, hh, ww = h.shape
    h = h.pow(2)
    emb = []
    for s in scales:
        if hh < s or ww < s:
            continue
        kh, kw = hh // s, ww // s
        for i in range(s):
            for j in range(s):
                win = h[..., i * kh:(i + 1) * kh, j * kw:(j + 1) * kw]
                emb += [win.mean(dim=3).reshape(b, -1), win.mean(dim=2).reshape(b, -1)]
    return F.normalize(torch.cat(emb, dim=1), dim=1)


def pod_loss(old: list[torch.Tensor], new: list[torch.Tensor], scales=(1, 2, 4)) -> torch.Tensor:
    """Mean over levels of the mean over samples of ||POD(old_l) - POD(new_l)||_2."""
    return torch.stack([(local_pod(o, scales) - local_pod(n, scales)).norm(dim=1).mean()
                        for o, n in zip(old, new)]).mean()


def kd_loss(old_logits: torch.Tensor, new_logits: torch.Tensor, n_classes: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 KL(p_old^T || p_new^T), pixel mean, softmax over background + each sample's classes."""
    total, count = old_logits.new_zeros(()), 0
    for n in n_classes.unique().tolist():
        sel = n_classes == n
        lo = F.log_softmax(old_logits[sel, : n + 1] / temperature, dim=1)
        ln = F.log_softmax(new_logits[sel, : n + 1] / temperature, dim=1)
        kl = (lo.exp() * (lo - ln)).sum(dim=1)            # (b, H, W)
        total = total + kl.sum()
        count += kl.numel()
    return temperature ** 2 * total / count


@register("distill")
class Distill(SegmentorMethod):
    kd_weight = 1.0        # LwF weights its distillation term 1 (lambda_o = 1)
    temperature = 2.0      # LwF's T = 2
    pod_weight = 0.01      # PLOP's pod_factor
    pod_scales = (1, 2, 4)  # PLOP's Local POD scales

    def __init__(self, ctx):
        super().__init__(ctx)
        self.old_segmentor: PromptedUNet | None = None
        self.old_prompt: nn.Module | None = None
        self._rng = np.random.default_rng(0)

    def before_round(self, t: int, data) -> None:
        self._rng = distributed.rank_generator(np.random.default_rng(self.ctx.round_seed(t, salt=3)))
        if t == 0:
            self.old_segmentor = self.old_prompt = None
            return
        self.old_segmentor = copy.deepcopy(self.segmentor).eval().requires_grad_(False)
        self.old_prompt = copy.deepcopy(self.seg_prompt).eval().requires_grad_(False)

    def past_tasks(self, t: int, batch: int) -> torch.Tensor:
        """One past task per sample, the batch split evenly over tasks 0..t-1 (shuffled)."""
        owner = np.arange(batch) % t
        self._rng.shuffle(owner)
        return torch.from_numpy(owner).long()

    def distill_losses(self, t: int, images: torch.Tensor, owners: torch.Tensor,
                       prompts: torch.Tensor) -> dict[str, torch.Tensor]:
        d = self.ctx.device
        x, owners = images.to(d), owners.to(d)
        with torch.no_grad():
            old_z = self.old_prompt(prompt_pool(self.ctx.emb, t - 1))
            with capture_levels(self.old_segmentor) as old_feats:
                old_logits = self.old_segmentor(x, old_z[owners])
        with capture_levels(self.segmentor) as new_feats:
            new_logits = self.segmentor(x, prompts[owners])
        n = self.ctx.n_classes.to(d)[owners]
        return {"kd": self.kd_weight * kd_loss(old_logits, new_logits, n, self.temperature),
                "pod": self.pod_weight * pod_loss(old_feats, new_feats, self.pod_scales)}

    def extra_loss(self, t, images, masks, prompts):
        if t == 0 or self.old_segmentor is None:
            return {}
        return self.distill_losses(t, images, self.past_tasks(t, len(images)), prompts)
