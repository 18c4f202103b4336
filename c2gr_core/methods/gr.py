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
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..config import DenoiserConfig, DiffusionConfig
from ..coupled import prompt_pool
from ..diffusion import add_noise, ddim_step, ddpm_step, make_scheduler, timestep_grid
from ..models.denoiser import Denoiser
from ..replay import ReplayStore
from ..rups import PlainPrompt
from ..trainer import Trainer
from . import register
from .base import SegmentorMethod, epoch_batches, steps_per_epoch


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


def noise_loss(denoiser: nn.Module, x0: torch.Tensor, prompt: torch.Tensor, scheduler) -> torch.Tensor:
    """The DDPM objective (Ho et al. eq. 14): || eps - eps_theta(x_k, k) ||^2, k ~ U{0..K-1}."""
    k = torch.randint(0, scheduler.num_train_timesteps, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    return F.mse_loss(denoiser(add_noise(scheduler, x0, eps, k), k, prompt).float(), eps)


@torch.no_grad()
def sample_images(denoiser: nn.Module, prompt: torch.Tensor, n: int, image_size: int, cfg: DiffusionConfig,
                  generator: torch.Generator | None = None, chunk_size: int = 64, progress: bool = False,
                  image_channels: int = 3) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] by the reverse process of cfg.sampler / cfg.sample_steps,
    prompted by one task's zeta (P,); the image-only counterpart of `diffusion.sample_pairs`."""
    if n < 1:
        raise ValueError(f"sample_images: n must be >= 1, got {n}")
    scheduler = make_scheduler(cfg, cfg.sampler)
    grid = timestep_grid(scheduler, cfg.sample_steps)
    device = next(denoiser.parameters()).device
    was_training = denoiser.training
    denoiser.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(grid) * -(-n // chunk_size), desc=f"GR {cfg.sampler}-{cfg.sample_steps}")
    out = []
    try:
        for start in range(0, n, chunk_size):
            b = min(chunk_size, n - start)
            zeta = prompt.to(device).unsqueeze(0).expand(b, -1)
            # 1. pure noise, drawn on the generator's device so CPU and GPU runs match
            x = torch.randn((b, image_channels, image_size, image_size), generator=generator,
                            device=generator.device if generator is not None else device).to(device)
            # 2. the reverse chain on the sampler's timestep grid
            for t, t_prev in grid:
                eps = denoiser(x, torch.full((b,), t, device=device, dtype=torch.long), zeta).float()
                x = (ddpm_step(scheduler, eps, t, t_prev, x, generator) if cfg.sampler == "ddpm"
                     else ddim_step(scheduler, eps, t, t_prev, x, 0.0, generator))
                if bar is not None:
                    bar.update(1)
            out.append(x.clamp(-1.0, 1.0))
    finally:
        denoiser.train(was_training)
        if bar is not None:
            bar.close()
    return torch.cat(out)


@register("gr")
class GR(SegmentorMethod):

    def __init__(self, ctx):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.gen_prompt = PlainPrompt(ctx.emb.e.shape[1], cfg.prompt.node_dim).to(ctx.device)
        self.denoiser = ImageDenoiser(cfg.denoiser, cfg.prompt.node_dim, cfg.prompt.n_tokens).to(ctx.device)
        self.scheduler = make_scheduler(cfg.diffusion, "ddpm")   # training uses the K-step forward process
        self.store = ReplayStore(ctx.work_dir / "replay")
        self.train_sizes: dict[int, int] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "denoiser": self.denoiser, "gen_prompt": self.gen_prompt}

    def extra_state(self) -> dict:
        return {"train_sizes": {str(k): v for k, v in self.train_sizes.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.train_sizes = {int(k): int(v) for k, v in state.get("train_sizes", {}).items()}

    @torch.no_grad()
    def label(self, images: torch.Tensor, task: int, chunk_size: int = 64) -> torch.Tensor:
        """Masks for replayed images: the current segmentor's prediction as task `task`."""
        return torch.cat([self.predict(images[s:s + chunk_size], task) for s in range(0, len(images), chunk_size)])

    @torch.no_grad()
    def replay(self, t: int) -> ReplayStore | None:
        self.store.clear()
        if t == 0:
            return None
        cfg = self.ctx.cfg
        z_gen = self.gen_prompt(prompt_pool(self.ctx.emb, t - 1))
        for j in range(t):
            n = cfg.train.replay_per_task or self.train_sizes[j]
            gen = torch.Generator().manual_seed(self.ctx.round_seed(t, salt=100 + j))
            images = sample_images(self.denoiser, z_gen[j], n, cfg.data.image_size, cfg.diffusion,
                                   generator=gen, progress=self.ctx.progress)
            # The store keeps float16: label exactly the images that will be replayed.
            images = images.half().float()
            self.store.put(j, images, self.label(images, j))
        return self.store

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
                    x = torch.from_numpy(np.asarray(split.images[idx]))
                    y = torch.from_numpy(np.asarray(split.masks[idx])).long()
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
            out = {"gen_cur": noise_loss(self.denoiser, x.to(d), z[t].expand(len(x), -1), self.scheduler)}
            if rep is not None:
                out["gen_rep"] = noise_loss(self.denoiser, rep.images.to(d), z[rep.tasks.to(d)], self.scheduler)
            return {"loss": sum(out.values()), **out}

        self.segmentor.train()
        self.denoiser.train()
        history: dict = {}
        phases = ((solver_step, [self.segmentor, self.seg_prompt], tc.seg_lr or tc.lr),
                  (generator_step, [self.denoiser, self.gen_prompt], tc.lr))
        for i, (step, mods, lr) in enumerate(phases):
            rng = np.random.default_rng(self.ctx.round_seed(t, salt=1 + i))
            params = [p for m in mods for p in m.parameters()]
            trainer = Trainer(params, lr=lr, amp_bf16=tc.amp_bf16, device=str(d), callbacks=list(callbacks))
            history.update(trainer.fit(step, batches(rng), tc.epochs, n_steps))
        return history
