"""Coupled optimisation of segmentor, denoiser and prompt graph (sec. 3.3, eq. 7-9).

    L_ME = L_seg^{D_t}(f^{zeta_t}) + 1/(t-1) sum_i L_seg^{R_i}(f^{zeta_i})          (7)
    L_MU = L_BJ^{D_t}(eps^{zeta_t}) + 1/(t-1) sum_i L_BJ^{R_i}(eps^{zeta_i})        (8)
    L    = L_ME + L_MU                                                            (9)

With RUPS one prompt module produces zeta for both networks, so the segmentation loss and the
diffusion loss both reach the prompt graph. The "w/o RUPS" ablation gives each network its own
plain projected text prompt: nothing is shared and the two optimisations are uncoupled.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from ..config import ExperimentConfig
from ..diffusion import NoiseDraws, Teacher, draw_noise, joint_loss, make_codec
from ..losses import seg_loss
from ..models.denoiser import Denoiser
from ..models.segmentor import PromptedUNet
from ..prompting.prompts import TaskEmbeddings, prompt_pool
from ..prompting.rups import build_prompt_module
from ..training.replay import PairBatch

__all__ = ["C2GRModel", "PairBatch", "coupled_loss", "prompt_pool"]


class C2GRModel(nn.Module):
    """Segmentor f_theta, denoiser eps_theta and the prompt module(s) of one C2GR learner."""

    def __init__(self, cfg: ExperimentConfig, c_max: int, emb: TaskEmbeddings, coupled: bool | None = None,
                 objective: str | None = None):
        """`coupled` / `objective` default to cfg.prompt.rups / cfg.diffusion.objective."""
        super().__init__()
        cfg = copy.deepcopy(cfg)
        cfg.prompt.rups = cfg.prompt.rups if coupled is None else coupled
        cfg.diffusion.objective = objective or cfg.diffusion.objective
        if cfg.diffusion.objective not in ("bjd", "njd"):
            raise ValueError(f"diffusion.objective must be 'bjd' or 'njd', got {cfg.diffusion.objective!r}")
        self.rups, self.objective, self.diffusion_cfg = cfg.prompt.rups, cfg.diffusion.objective, cfg.diffusion
        P, n_tok = cfg.prompt.node_dim, cfg.prompt.n_tokens
        self.segmentor = PromptedUNet(cfg.segmentor, in_channels=3, out_channels=c_max + 1, prompt_dim=P, n_tokens=n_tok)
        self.denoiser = Denoiser(cfg.denoiser, image_channels=3, mask_channels=c_max + 1, prompt_dim=P, n_tokens=n_tok)
        self.codec = make_codec(cfg.diffusion, c_max + 1)
        if self.rups:
            self.prompt = build_prompt_module(cfg.prompt, emb)
        else:  # one plain prompt per network: nothing shared
            self.seg_prompt, self.gen_prompt = build_prompt_module(cfg.prompt, emb), build_prompt_module(cfg.prompt, emb)

    def parameter_counts(self) -> dict[str, int]:
        """Learnable parameters of each part (sec. 4.4.5 / Fig. 9)."""
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        prompt = count(self.prompt) if self.rups else count(self.seg_prompt) + count(self.gen_prompt)
        return {"segmentor": count(self.segmentor), "denoiser": count(self.denoiser), "prompt": prompt,
                "total": count(self)}

    def prompts(self, emb: TaskEmbeddings, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(zeta for the segmentor, zeta for the denoiser), each (t+1, P); the same tensor under RUPS."""
        pool = prompt_pool(emb, t)
        dev = next(self.parameters()).device
        pool = (pool[0].to(dev), {s: c.to(dev) for s, c in pool[1].items()})
        if self.rups:
            z = self.prompt(pool)
            return z, z
        return self.seg_prompt(pool), self.gen_prompt(pool)

    def generator_parameters(self) -> list[nn.Parameter]:
        """What a generator-only phase trains: the denoiser and a prompt only the generator uses."""
        own = [] if self.rups else list(self.gen_prompt.parameters())
        return list(self.denoiser.parameters()) + own

    def diffusion_loss(self, x, y_labels, prompt, scheduler, teacher: Teacher | None = None,
                       parts: tuple[int, ...] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The generator's loss on (x, y). With `parts` (row counts summing to len(x)) the rows are
        batches of their own, run through the denoiser in one forward: one loss per part, each
        with its own noise drawn in part order (the draws separate forwards would make)."""
        y0 = self.codec.encode(y_labels)
        if parts is None:
            return joint_loss(self.diffusion_cfg, self.denoiser, x, y0, prompt, scheduler, teacher=teacher).total
        k = self.diffusion_cfg.num_train_timesteps
        one_term = self.diffusion_cfg.term_sampling == "one" and self.diffusion_cfg.objective == "bjd"  # as joint_loss reads it
        draws = [draw_noise(xp, yp, k, one_term=one_term) for xp, yp in zip(x.split(parts), y0.split(parts))]
        draws = NoiseDraws(*(torch.cat([getattr(d, f) for d in draws]) for f in ("k", "eps_x", "eps_y")),
                           term=torch.cat([d.term for d in draws]) if one_term else None)
        per_sample = joint_loss(self.diffusion_cfg, self.denoiser, x, y0, prompt, scheduler, teacher=teacher,
                                draws=draws, reduce=False, parts=tuple(parts)).total
        return [p.mean() for p in per_sample.split(parts)]


def coupled_loss(model: C2GRModel, emb: TaskEmbeddings, t: int, current: PairBatch, replay: PairBatch | None,
                 scheduler, n_classes: torch.Tensor, train_segmentor: bool = True,
                 train_generator: bool = True, train_prompt: bool = True,
                 teacher: tuple[nn.Module, torch.Tensor] | None = None,
                 one_forward: bool = True) -> dict[str, torch.Tensor]:
    """L = L_ME + L_MU (eq. 9) on one current-task batch and one replay batch.

    train_prompt=False computes the prompts without gradient (a generator-only phase of C2GR must not
    move the shared RUPS prompts away from those the segmentor was trained with). `teacher`
    (frozen denoiser, its (t, P) prompts) makes the replay batch's diffusion term distil it
    (diffusion.replay_target = "teacher"; see diffusion.Teacher).

    The replay batch is stratified over past tasks (ReplayStore.sample), so its mean loss is an
    unbiased estimate of the 1/(t-1) sum over replay sets in eq. 7-8.

    With `one_forward` both batches go through each network in one forward (current rows first) and
    are scored as the separate batches of eq. 7-8: the same losses as one forward per batch (GroupNorm
    and attention act per pair; the noise is drawn batch by batch in the same order). Fewer, larger
    kernels are faster on some CPUs and slower on others, so a run chooses (training/numerics.py).
    """
    dev = next(model.parameters()).device
    with contextlib.nullcontext() if train_prompt else torch.no_grad():
        z_seg, z_gen = model.prompts(emb, t)
    n_classes = n_classes.to(dev)
    parts = [(name, b) for name, b in (("cur", current), ("rep", replay)) if b is not None]
    out: dict[str, torch.Tensor] = {}
    for group in [parts] if one_forward else [[p] for p in parts]:
        sizes = tuple(len(b.images) for _, b in group)
        x = torch.cat([b.images for _, b in group]).to(dev)
        y = torch.cat([b.masks for _, b in group]).to(dev)
        k = torch.cat([b.tasks for _, b in group]).to(dev)
        if train_segmentor:
            logits = model.segmentor(x, z_seg[k])
            for (name, _), lg, yp, kp in zip(group, logits.split(sizes), y.split(sizes), k.split(sizes)):
                out[f"seg_{name}"] = seg_loss(lg, yp, n_classes[kp], groups=kp)
        if train_generator:
            distil = None
            if teacher is not None and replay is not None and any(name == "rep" for name, _ in group):
                rows = torch.cat([torch.full((n,), name == "rep", device=dev) for (name, _), n in zip(group, sizes)])
                distil = Teacher(teacher[0], teacher[1][k[rows]], rows)
            losses = model.diffusion_loss(x, y, z_gen[k], scheduler, teacher=distil, parts=sizes)
            out.update({f"gen_{name}": v for (name, _), v in zip(group, losses)})
    # Summed in eq. 9's order whatever the grouping, so both groupings add the same terms in the same order.
    me = sum(out[f"seg_{name}"] for name, _ in parts if f"seg_{name}" in out)
    mu = sum(out[f"gen_{name}"] for name, _ in parts if f"gen_{name}" in out)
    return {"loss": me + mu, "L_ME": torch.as_tensor(me), "L_MU": torch.as_tensor(mu), **out}
