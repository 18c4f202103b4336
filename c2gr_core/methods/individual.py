"""IndividualTrain (sec. 4.3.1): one segmentor per task, selected by the task id at inference.

Round t builds a fresh prompted segmentor (and its prompt projection), trains it on task t only
and keeps it; task j is always predicted by model j, so nothing is forgotten by construction,
at the price of storing every model (its learnable parameters grow linearly with the stream).
"""
from __future__ import annotations

import torch
from torch import nn

from ..losses import predict as predict_labels
from ..models.segmentor import PromptedUNet
from ..prompting.prompts import prompt_pool
from ..prompting.rups import PlainPrompt
from . import register
from .base import SegmentorMethod


@register("individual")
class IndividualTrain(SegmentorMethod):

    def __init__(self, ctx):
        super().__init__(ctx)
        # The base class built one segmentor already; models are made per round in before_round
        # instead, so model t is seeded by round t alone and a resumed run builds the same ones.
        self.segmentors = nn.ModuleList()
        self.prompts = nn.ModuleList()

    def _segmentor(self) -> PromptedUNet:
        cfg = self.ctx.cfg
        return PromptedUNet(cfg.segmentor, in_channels=3, out_channels=self.ctx.c_max + 1,
                            prompt_dim=cfg.prompt.node_dim, n_tokens=cfg.prompt.n_tokens).to(
            self.ctx.device, memory_format=self.ctx.numerics.memory_format)

    def _new_model(self) -> None:
        cfg, d = self.ctx.cfg, self.ctx.device
        self.prompts.append(PlainPrompt(self.ctx.emb.e.shape[1], cfg.prompt.node_dim).to(d))
        self.segmentors.append(self._segmentor())

    def probe_networks(self):
        # No model exists before round 0; time one like those the rounds build (its initial weights do
        # not matter, and drawing them must not move the run's random stream).
        with torch.random.fork_rng():
            net = self._segmentor()
        return [(net, net.example_inputs(self.probe_batch(net), self.ctx.cfg.data.image_size))]

    def _select(self, t: int) -> None:
        # SegmentorMethod trains self.segmentor / self.seg_prompt: point them at model t.
        self.segmentor, self.seg_prompt = self.segmentors[t], self.prompts[t]

    def before_round(self, t: int, data) -> None:
        while len(self.segmentors) <= t:
            self._new_model()
        self._select(t)

    def modules(self) -> dict[str, nn.Module]:
        return {"segmentors": self.segmentors, "prompts": self.prompts}

    def trainer(self, params, callbacks=()):
        # The base fit() offers every stored model's parameters; only model t is trained (the others
        # would get no gradient, which DDP refuses and which must not move them anyway).
        return super().trainer([p for m in (self.segmentor, self.seg_prompt) for p in m.parameters()], callbacks)

    def extra_state(self) -> dict:
        return {"n_models": len(self.segmentors)}

    def load_state_dict(self, state: dict) -> None:
        n = int(state.get("extra", {}).get("n_models", 0))
        while len(self.segmentors) < n:
            self._new_model()
        del self.segmentors[n:], self.prompts[n:]
        super().load_state_dict(state)
        if n:
            self._select(n - 1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, task: int) -> torch.Tensor:
        if task >= len(self.segmentors):
            raise ValueError(f"IndividualTrain has models for tasks 0..{len(self.segmentors) - 1}, "
                             f"not for task {task} (not trained yet)")
        seg = self.segmentors[task]
        seg.eval()
        d = self.ctx.device
        zeta = self.prompts[task](prompt_pool(self.ctx.emb, task))[task: task + 1]
        logits = seg(images.to(d), zeta.expand(len(images), -1))
        return predict_labels(logits, int(self.ctx.cards[task].n_classes)).cpu()
