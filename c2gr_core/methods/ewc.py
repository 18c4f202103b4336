"""EWC (Kirkpatrick et al. 2017, sec. 4.3.1): a quadratic penalty anchoring important weights.

After round t the diagonal Fisher information F_t of the segmentor and its prompt projection is
estimated on task t's training data, and from round t+1 on the loss gets

    L_EWC = lambda / 2 * sum_p F_p (theta_p - theta*_p)^2                 (Kirkpatrick eq. 3)

with theta* the parameters at the end of the latest round. Fishers are accumulated online over
rounds, F <- gamma F + F_t (online EWC, Schwarz et al. 2018; gamma = 1 sums every task's Fisher,
which is what a separate penalty per past task amounts to when all anchors are the latest
parameters). Fisher and anchors travel in the checkpoint, so a resumed run continues the same.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..losses import ce_loss
from . import register
from .base import SegmentorMethod, epoch_batches


def diagonal_fisher(params: dict[str, nn.Parameter], loss_fn: Callable[[object], torch.Tensor],
                    batches: Iterable[object]) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher: mean over batches of the squared gradient of the batch loss.

    The per-batch (not per-sample) squared gradient is the estimate avalanche's EWCPlugin and
    most continual-segmentation code use; a per-sample Fisher costs one backward per image.
    """
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    n = 0
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(batch), list(params.values()), allow_unused=True)
        for (k, _), g in zip(params.items(), grads):
            if g is not None:
                fisher[k] += g.detach() ** 2
        n += 1
    if n == 0:
        raise ValueError("diagonal_fisher: no batches to estimate the Fisher information from")
    return {k: f / n for k, f in fisher.items()}


def ewc_penalty(params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
                anchor: dict[str, torch.Tensor], lam: float) -> torch.Tensor:
    """lambda / 2 * sum_p F_p (theta_p - theta*_p)^2 over the anchored parameters (Kirkpatrick eq. 3)."""
    terms = [(fisher[k] * (p - anchor[k]) ** 2).sum() for k, p in params.items() if k in fisher]
    if not terms:
        raise ValueError("ewc_penalty: none of the parameters has a Fisher estimate")
    return 0.5 * lam * torch.stack(terms).sum()


@register("ewc")
class EWC(SegmentorMethod):
    # lambda: the batch Fisher of the pixel-mean CE is small (tiny preset, 3-task synthetic stream:
    # median 5e-8, max ~1e-2, sum ~0.7 over 51k weights), and lambda = 1e4 puts the penalty at about
    # a third of L_seg late in a round: strong enough to matter, not so strong that a new task
    # cannot be learnt (Kirkpatrick et al. tune lambda per benchmark).
    lam = 1e4
    gamma = 1.0           # online decay of past Fishers; 1 keeps every task's Fisher in full
    fisher_batches = 8    # batches of the task's training data in one Fisher estimate

    def __init__(self, ctx):
        super().__init__(ctx)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def anchored_params(self) -> dict[str, nn.Parameter]:
        return {f"{m}.{k}": p for m, mod in (("segmentor", self.segmentor), ("seg_prompt", self.seg_prompt))
                for k, p in mod.named_parameters() if p.requires_grad}

    def penalty(self) -> torch.Tensor:
        if not self.fisher:
            return torch.zeros((), device=self.ctx.device)
        return ewc_penalty(self.anchored_params(), self.fisher, self.anchor, self.lam)

    def extra_loss(self, t, images, masks, prompts):
        return {"ewc": self.penalty()} if self.fisher else {}

    def after_round(self, t: int, data) -> None:
        split = data.train(t)
        rng = np.random.default_rng(self.ctx.round_seed(t, salt=2))
        bs = self.ctx.cfg.train.batch_size
        # The whole split on every rank (not this rank's shard): all ranks hold the same Fisher,
        # the one rank 0 checkpoints.
        idx = list(epoch_batches(len(split), bs, rng, rank=0, world=1))[: self.fisher_batches]
        batches = [split.tensors(i) for i in idx]

        d = self.ctx.device
        n_cls = int(self.ctx.cards[t].n_classes)

        def loss(batch):
            # The log-likelihood of the labels (pixel-mean CE), as in Kirkpatrick's Fisher; the
            # Dice half of L_seg is not a likelihood.
            x, y = batch
            zeta = self.seg_prompts(t)[t].expand(len(x), -1)
            return ce_loss(self.segmentor(x.to(d), zeta), y.to(d), n_cls)

        self.segmentor.eval()
        new = diagonal_fisher(self.anchored_params(), loss, batches)
        self.fisher = {k: self.gamma * self.fisher[k] + f if k in self.fisher else f for k, f in new.items()}
        self.anchor = {k: p.detach().clone() for k, p in self.anchored_params().items()}

    def extra_state(self) -> dict:
        return {"fisher": {k: v.cpu() for k, v in self.fisher.items()},
                "anchor": {k: v.cpu() for k, v in self.anchor.items()}}

    def load_extra_state(self, state: dict) -> None:
        d = self.ctx.device
        self.fisher = {k: v.to(d) for k, v in state.get("fisher", {}).items()}
        self.anchor = {k: v.to(d) for k, v in state.get("anchor", {}).items()}
