"""C2GR (BJD + RUPS, coupled) and its ablations of Fig. 5: w/o BJD (NJD) and w/o RUPS."""
from __future__ import annotations

import numpy as np
import torch

from ..diffusion import sample_pairs
from ..losses import predict as predict_labels
from ..training import distributed
from ..training.trainer import Trainer
from . import register
from .base import Method, StreamContext, epoch_batches, steps_per_epoch
from .coupled import C2GRModel, PairBatch, coupled_loss
from .generative import GenerativeReplay


@register("c2gr")
class C2GR(GenerativeReplay, Method):
    """Generative replay of image-mask pairs with segmentor and denoiser coupled by one prompt."""

    objective = "bjd"     # eq. 3
    coupled = True        # RUPS: one prompt graph shared by both networks
    sequential = False    # CGR trains the two networks one after the other instead
    generates_pairs = True
    one_forward_step = True   # coupled_loss; whether it does is chosen per run (training/numerics.py)

    @classmethod
    def forced_settings(cls) -> dict:
        return {"prompt.rups": cls.coupled, "diffusion.objective": cls.objective}

    def __init__(self, ctx: StreamContext):
        super().__init__(ctx)
        self.model = C2GRModel(ctx.cfg, ctx.c_max, ctx.emb, coupled=self.coupled,
                               objective=self.objective).to(ctx.device)
        self.init_generator(self.model.denoiser)
        self.seen = -1

    def modules(self):
        return {"model": self.model, **self.generator_modules()}

    def extra_state(self) -> dict:
        return {**super().extra_state(), "seen": self.seen}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.seen = int(state.get("seen", -1))

    # --- round hooks ---------------------------------------------------------------------
    @torch.no_grad()
    def generator_prompts(self, t: int) -> torch.Tensor:
        return self.model.prompts(self.ctx.emb, t)[1]

    @torch.no_grad()
    def synthesise(self, t: int, j: int, n: int, generator: torch.Generator):
        # The prompts as they stood after round t-1.
        return self.sample_pairs(j, n, generator, after_round=t - 1,
                                 progress=f"replay task {j + 1}/{t}" if self.ctx.progress else False)

    @torch.no_grad()
    def sample_pairs(self, task: int, n: int, generator: torch.Generator, steps: int | None = None,
                     after_round: int | None = None, progress=False, sampler: str | None = None):
        """n pairs of `task` prompted as after round `after_round` (default: the last trained, or the
        task's own round if later), sampled by the weights that sample the replay (the EMA if any),
        with `sampler`/`steps` (default: the config's diffusion.sampler / sample_steps).
        Images (n, 3, H, W) in [-1, 1], labels (n, H, W) long."""
        cfg = self.ctx.cfg
        r = max(self.last_round(), task) if after_round is None else after_round
        z_gen = self.generator_prompts(r)
        images, labels = sample_pairs(self.replay_denoiser, z_gen[task], n, cfg.data.image_size, self.model.codec,
                                      cfg=cfg.diffusion, sampler=sampler, steps=steps, generator=generator,
                                      progress=progress, bf16=self.ctx.numerics.bf16)
        # A generated label the task does not have cannot be trusted as any of its classes.
        labels[labels > self.ctx.cards[task].n_classes] = 0
        return images, labels

    def probe_batch(self, network) -> int:
        # BJD runs its three terms (eq. 3) as one batch through the denoiser, unless each pair trains one.
        rows = 3 if self.objective == "bjd" and self.ctx.cfg.diffusion.term_sampling == "all" else 1
        return super().probe_batch(network) * (rows if network is self.model.denoiser else 1)

    def last_round(self) -> int:
        return self.seen if self.seen >= 0 else len(self.ctx.cards) - 1

    def segmentation_path(self):
        m = self.model
        return m.segmentor, (m.prompt if m.rups else m.seg_prompt)

    @torch.no_grad()
    def task_prompts(self, t: int) -> dict[str, torch.Tensor]:
        z_seg, z_gen = self.model.prompts(self.ctx.emb, t)
        return {"segmentor": z_seg, "generator": z_gen}

    def prompt_graph(self):
        return self.model.prompt if self.model.rups else None

    def _param_groups(self, segmentor: bool, generator: bool) -> list[dict]:
        tc, m = self.ctx.cfg.train, self.model
        groups = []
        if segmentor:
            seg_prompt = list(m.prompt.parameters()) if m.rups else list(m.seg_prompt.parameters())
            groups.append({"params": list(m.segmentor.parameters()) + seg_prompt, "lr": tc.seg_lr or tc.lr})
        if generator:
            groups.append({"params": m.generator_parameters(), "lr": self.gen_lr})
        return groups

    def fit(self, t, data, replay, callbacks=()):
        cfg = self.ctx.cfg
        split = data.train(t)
        self.train_sizes[t] = len(split)
        self.seen = t
        self.model.train()
        # Segmentor epochs `epochs`, generator epochs `gen_epochs` (>= epochs): the coupled phase trains
        # both (eq. 9), then the generator goes on alone; CGR trains them one after the other.
        if self.sequential:
            phases = [(dict(train_segmentor=True, train_generator=False), cfg.train.epochs),
                      (dict(train_segmentor=False, train_generator=True), self.gen_epochs)]
        else:
            phases = [(dict(train_segmentor=True, train_generator=True), cfg.train.epochs),
                      (dict(train_segmentor=False, train_generator=True), self.gen_epochs - cfg.train.epochs)]
        history: dict = {}
        for i, (phase, epochs) in enumerate(phases):
            if epochs == 0:
                continue
            rng = np.random.default_rng(self.ctx.round_seed(t, salt=1 + i))
            rep_rng = distributed.rank_generator(rng)  # under DDP each rank replays different pairs

            def batches(epoch):
                for idx in epoch_batches(len(split), cfg.train.batch_size, rng):  # this rank's shard
                    cur = PairBatch(*split.tensors(idx), torch.full((len(idx),), t, dtype=torch.long))
                    rep = replay.sample(cfg.train.batch_size, rng=rep_rng) if replay is not None else None
                    yield cur, rep

            # A prompt shared with the segmentor (RUPS) learns only while the segmentor does.
            train_prompt = phase["train_segmentor"] or not self.model.rups

            def step(b, phase=phase, train_prompt=train_prompt):
                return coupled_loss(self.model, self.ctx.emb, t, b[0], b[1], self.scheduler,
                                    self.ctx.n_classes, train_prompt=train_prompt, teacher=self.teacher,
                                    one_forward=self.ctx.numerics.one_forward, **phase)

            groups = self._param_groups(phase["train_segmentor"], phase["train_generator"])
            cbs = list(callbacks) + (self.generator_callbacks() if phase["train_generator"] else [])
            # A phase that trains one network only leaves the other's parameters without gradients.
            trainer = Trainer(groups, lr=cfg.train.lr, amp_bf16=self.ctx.numerics.bf16, device=str(self.ctx.device),
                              callbacks=cbs, find_unused_parameters=self.sequential)
            hist = trainer.fit(step, batches, epochs, steps_per_epoch(len(split), cfg.train.batch_size))
            for k, v in hist.items():
                history.setdefault(k, []).extend(v)
        return history

    @torch.no_grad()
    def predict(self, images: torch.Tensor, task: int) -> torch.Tensor:
        self.model.eval()
        d = self.ctx.device
        z_seg, _ = self.model.prompts(self.ctx.emb, max(self.seen, task))
        tasks = torch.full((len(images),), task, dtype=torch.long, device=d)
        logits = self.model.segmentor(images.to(d), z_seg[tasks])
        return predict_labels(logits, self.ctx.n_classes.to(d)[tasks]).cpu()


@register("c2gr-njd")
class C2GRwithoutBJD(C2GR):
    """Ablation "w/o BJD": the naive joint diffusion of eq. 1 generates the replay."""
    objective = "njd"


@register("c2gr-norups")
class C2GRwithoutRUPS(C2GR):
    """Ablation "w/o RUPS": plain projected text prompts, one per network, nothing shared."""
    coupled = False


@register("cgr")
class CGR(C2GR):
    """CGR (the conference version): BJD image-mask replay, generator and segmentor optimised
    separately (segmentor first, then generator, each with its own plain prompt)."""
    coupled = False
    sequential = True
