"""What every generative-replay method shares (C2GR and its ablations, CGR, GR).

One recipe and one replay loop, so that the comparison is BJD vs NJD vs image-only and coupled vs
not, never a better generator for one of them:

- the denoiser is trained under `cfg.diffusion`'s recipe (prediction, loss weighting) for
  `train.gen_epochs` epochs per round at `train.gen_lr`, the segmentor for `train.epochs` at
  `train.seg_lr` (both default to the shared values);
- an EMA of the denoiser weights (`diffusion.ema_decay` > 0), updated after every optimiser step
  and kept across rounds, samples the replay; it is saved in the round checkpoint;
- `replay(t)` draws `replay_per_task` (default: the task's training-set size, sec. 4.2) samples
  for every past task through `diffusion.reverse_chain`, each task from its own seeded generator;
- with `diffusion.replay_target = "teacher"` the generator's loss on replayed pairs distils the
  generator as the round began (`self.teacher`) instead of regressing the pairs' analytic targets.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..diffusion import make_ema, make_scheduler
from ..training.replay import ReplayStore


class EMACallback:
    """Trainer callback: update the EMA after each optimiser step."""

    def __init__(self, ema, module: nn.Module):
        self.ema, self.module = ema, module

    def __call__(self, event: str, trainer) -> None:
        if event == "on_step_end":
            self.ema.update_parameters(self.module)


def generator_budget(cfg) -> tuple[int, float]:
    """(generator epochs per round, generator learning rate) of `cfg.train`, validated."""
    tc = cfg.train
    gen_epochs = tc.epochs if tc.gen_epochs is None else tc.gen_epochs
    if isinstance(gen_epochs, bool) or not isinstance(gen_epochs, int) or gen_epochs < tc.epochs:
        # The coupled methods train both networks together for `epochs`: fewer generator epochs
        # than that cannot be honoured.
        raise ValueError(f"train.gen_epochs must be an integer >= train.epochs ({tc.epochs}) or None, "
                         f"got {tc.gen_epochs!r}")
    gen_lr = tc.lr if tc.gen_lr is None else tc.gen_lr
    if isinstance(gen_lr, bool) or not isinstance(gen_lr, (int, float)) or not gen_lr > 0:
        raise ValueError(f"train.gen_lr must be a number > 0 or None, got {tc.gen_lr!r}")
    return gen_epochs, float(gen_lr)


class GenerativeReplay:
    """Mixin for a Method whose replay comes from a denoiser. Call `init_generator(denoiser)` in
    __init__ after the denoiser is on its device; implement `synthesise(t, j, n, generator)`."""

    def init_generator(self, denoiser: nn.Module) -> None:
        cfg = self.ctx.cfg
        self.gen_epochs, self.gen_lr = generator_budget(cfg)
        self.denoiser_trained = denoiser
        self.ema = make_ema(denoiser, cfg.diffusion.ema_decay)
        # Training uses the K-step forward process; the sampler only changes the reverse process.
        self.scheduler = make_scheduler(cfg.diffusion, "ddpm")
        make_scheduler(cfg.diffusion, cfg.diffusion.sampler)  # a bad sampler fails now, not at round 2
        self.store = ReplayStore(self.ctx.work_dir / "replay")
        self.train_sizes: dict[int, int] = {}
        self.teacher: tuple[nn.Module, torch.Tensor] | None = None

    @property
    def replay_denoiser(self) -> nn.Module:
        """The weights that sample replay: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.denoiser_trained

    def generator_modules(self) -> dict[str, nn.Module]:
        return {"ema": self.ema} if self.ema is not None else {}

    def generator_callbacks(self) -> list:
        return [EMACallback(self.ema, self.denoiser_trained)] if self.ema is not None else []

    def extra_state(self) -> dict:
        return {"train_sizes": {str(k): v for k, v in self.train_sizes.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.train_sizes = {int(k): int(v) for k, v in state.get("train_sizes", {}).items()}

    def generator_prompts(self, t: int) -> torch.Tensor:
        """(t + 1, P) prompts the generator gives tasks 0..t after round t."""
        raise NotImplementedError

    def synthesise(self, t: int, j: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def replay(self, t: int) -> ReplayStore | None:
        """Stage 1 of sec. 3.3: synthesise pairs for every past task."""
        self.store.clear()
        self.teacher = None
        if t == 0:
            return None
        if self.ctx.cfg.diffusion.replay_target == "teacher":
            # The generator as it stands now (the weights that sample the replay) teaches this round.
            net = copy.deepcopy(self.replay_denoiser).eval().requires_grad_(False)
            self.teacher = (net, self.generator_prompts(t - 1).detach())
        for j in range(t):
            n = self.ctx.cfg.train.replay_per_task or self.train_sizes[j]
            gen = torch.Generator().manual_seed(self.ctx.round_seed(t, salt=100 + j))
            images, labels = self.synthesise(t, j, n, gen)
            self.store.put(j, images, labels)
        return self.store
