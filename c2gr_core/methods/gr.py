"""GR: deep generative replay of images only (Shin et al. 2017, sec. 4.3.1).

The generator is a prompted image denoiser (DDPM noise loss) with its own plain text prompt; it
learns the current task's images plus the images it replayed. For past task j it samples
images, and the masks come from the segmentor as it stands at the start of the round (the
previous round's "solver") segmenting them as task j. Those masks are only as good as that
segmentor, and under objective shift its errors are replayed and reinforced: what C2GR's joint
image-mask generation avoids. As in Shin et al., generator and solver are trained separately
(solver first, then generator), each by its own optimiser.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import DenoiserConfig
from ..diffusion import Teacher, image_loss, reverse_chain
from ..models.denoiser import Denoiser
from ..prompting.prompts import prompt_pool
from ..prompting.rups import PlainPrompt
from ..training import distributed
from ..training.trainer import Trainer
from . import register
from .base import SegmentorMethod, epoch_batches, steps_per_epoch
from .generative import GenerativeReplay


class ImageDenoiser(nn.Module):
    """eps_theta(x_k, k; zeta) for images alone, built on the joint `Denoiser`.

    `Denoiser` needs at least one mask channel; it gets a constant zero channel, never noised,
    and its output is dropped. The cost is one input and one output channel of the outer convs.
    """

    def __init__(self, cfg: DenoiserConfig, prompt_dim: int, n_tokens: int, image_channels: int = 3):
        super().__init__()
        self.image_channels = image_channels
        self.net = Denoiser(cfg, image_channels=image_channels, mask_channels=1, prompt_dim=prompt_dim,
                            n_tokens=n_tokens)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        dummy = x.new_zeros(x.shape[0], 1, *x.shape[2:])
        return self.net(torch.cat([x, dummy], 1), timesteps, prompt)[:, : self.image_channels]


@register("gr")
class GR(GenerativeReplay, SegmentorMethod):

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.gen_prompt = PlainPrompt(ctx.emb.e.shape[1], cfg.prompt.node_dim).to(ctx.device)
        self.denoiser = ImageDenoiser(cfg.denoiser, cfg.prompt.node_dim, cfg.prompt.n_tokens).to(ctx.device)
        self.init_generator(self.denoiser)

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "denoiser": self.denoiser, "gen_prompt": self.gen_prompt,
                **self.generator_modules()}

    @torch.no_grad()
    def label(self, images: torch.Tensor, task: int, chunk_size: int = 64) -> torch.Tensor:
        """Masks for replayed images: the current segmentor's prediction as task `task`."""
        return torch.cat([self.predict(images[s:s + chunk_size], task) for s in range(0, len(images), chunk_size)])

    @torch.no_grad()
    def generator_prompts(self, t: int) -> torch.Tensor:
        return self.gen_prompt(prompt_pool(self.ctx.emb, t))

    @torch.no_grad()
    def synthesise(self, t: int, j: int, n: int, generator: torch.Generator):
        cfg = self.ctx.cfg
        z_gen = self.generator_prompts(t - 1)
        images = reverse_chain(self.replay_denoiser, z_gen[j], n, 3, cfg.data.image_size, cfg=cfg.diffusion,
                               generator=generator, bf16=self.ctx.numerics.bf16,
                               progress=f"GR replay task {j + 1}/{t}" if self.ctx.progress else False)
        # The store keeps float16: label exactly the images that will be replayed.
        images = images.clamp(-1.0, 1.0).half().float()
        return images, self.label(images, j)

    def fit(self, t, data, replay, callbacks=()):
        tc = self.ctx.cfg.train
        split = data.train(t)
        self.train_sizes[t] = len(split)
        n_steps = steps_per_epoch(len(split), tc.batch_size)
        d = self.ctx.device

        def batches(rng):
            rep_rng = distributed.rank_generator(rng)  # under DDP each rank replays different pairs

            def epoch(_):
                for idx in epoch_batches(len(split), tc.batch_size, rng):  # this rank's shard
                    x, y = split.tensors(idx)
                    yield x, y, (replay.sample(tc.batch_size, rep_rng) if replay is not None else None)
            return epoch

        def solver_step(b):
            x, y, rep = b
            prompts = self.seg_prompts(t)
            out = {"seg_cur": self.seg_loss_on(x, y, torch.full((len(x),), t, dtype=torch.long), prompts)}
            if rep is not None:
                out["seg_rep"] = self.seg_loss_on(rep.images, rep.masks, rep.tasks, prompts)
            return {"loss": sum(out.values()), **out}

        def generator_step(b):
            x, _, rep = b
            z = self.gen_prompt(prompt_pool(self.ctx.emb, t))
            dc = self.ctx.cfg.diffusion
            out = {"gen_cur": image_loss(self.denoiser, x.to(d), z[t].expand(len(x), -1), self.scheduler, cfg=dc).total}
            if rep is not None:
                k = rep.tasks.to(d)
                distil = Teacher(self.teacher[0], self.teacher[1][k]) if self.teacher is not None else None
                out["gen_rep"] = image_loss(self.denoiser, rep.images.to(d), z[k], self.scheduler, cfg=dc,
                                            teacher=distil).total
            return {"loss": sum(out.values()), **out}

        self.segmentor.train()
        self.denoiser.train()
        history: dict = {}
        # As in Shin et al., solver first, then generator, each with its own optimiser; the generator
        # gets the same budget (gen_epochs, gen_lr) and EMA as C2GR's.
        phases = ((solver_step, [self.segmentor, self.seg_prompt], tc.seg_lr or tc.lr, tc.epochs, []),
                  (generator_step, [self.denoiser, self.gen_prompt], self.gen_lr, self.gen_epochs,
                   self.generator_callbacks()))
        for i, (step, mods, lr, epochs, extra_cbs) in enumerate(phases):
            rng = np.random.default_rng(self.ctx.round_seed(t, salt=1 + i))
            params = [p for m in mods for p in m.parameters()]
            trainer = Trainer(params, lr=lr, amp_bf16=self.ctx.numerics.bf16, device=str(d),
                              callbacks=list(callbacks) + extra_cbs)
            history.update(trainer.fit(step, batches(rng), epochs, n_steps))
        return history
