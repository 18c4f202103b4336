"""C2GR (BJD + RUPS, coupled) and its ablations of Fig. 5: w/o BJD (NJD) and w/o RUPS."""
from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..coupled import C2GRModel, PairBatch, coupled_loss
from ..diffusion import make_scheduler, sample_pairs
from ..replay import ReplayStore
from ..trainer import Trainer
from . import register
from .base import Method, StreamContext, epoch_batches, steps_per_epoch


@register("c2gr")
class C2GR(Method):
    """Generative replay of image-mask pairs with segmentor and denoiser coupled by one prompt."""

    objective = "bjd"     # eq. 3
    coupled = True        # RUPS: one prompt graph shared by both networks
    sequential = False    # CGR trains the two networks one after the other instead

    def __init__(self, ctx: StreamContext):
        super().__init__(ctx)
        self.model = C2GRModel(ctx.cfg, ctx.c_max, ctx.emb, coupled=self.coupled,
                               objective=self.objective).to(ctx.device)
        # Training uses the K-step forward process; the sampler only changes the reverse process.
        self.scheduler = make_scheduler(ctx.cfg.diffusion, "ddpm")
        self.store = ReplayStore(ctx.work_dir / "replay")
        self.train_sizes: dict[int, int] = {}
        self.seen = -1

    def modules(self):
        return {"model": self.model}

    def extra_state(self) -> dict:
        return {"train_sizes": {str(k): v for k, v in self.train_sizes.items()}, "seen": self.seen}

    def load_extra_state(self, state: dict) -> None:
        self.train_sizes = {int(k): int(v) for k, v in state.get("train_sizes", {}).items()}
        self.seen = int(state.get("seen", -1))

    # --- round hooks ---------------------------------------------------------------------
    @torch.no_grad()
    def replay(self, t: int) -> ReplayStore | None:
        """Stage 1 of sec. 3.3: synthesise pairs for every past task with its prompt."""
        self.store.clear()
        if t == 0:
            return None
        cfg = self.ctx.cfg
        _, z_gen = self.model.prompts(self.ctx.emb, t - 1)  # the prompts as they stood after round t-1
        for j in range(t):
            n = cfg.train.replay_per_task or self.train_sizes[j]
            gen = torch.Generator().manual_seed(self.ctx.round_seed(t, salt=100 + j))
            images, labels = sample_pairs(self.model.denoiser, z_gen[j], n, cfg.data.image_size, self.model.codec,
                                          cfg=cfg.diffusion, generator=gen, progress=self.ctx.progress)
            # A generated label the task does not have cannot be trusted as any of its classes.
            labels[labels > self.ctx.cards[j].n_classes] = 0
            self.store.put(j, images, labels)
        return self.store

    def fit(self, t, data, replay, callbacks=()):
        cfg = self.ctx.cfg
        split = data.train(t)
        self.train_sizes[t] = len(split)
        self.seen = t
        self.model.train()
        if self.sequential:
            phases = [dict(train_segmentor=True, train_generator=False),
                      dict(train_segmentor=False, train_generator=True)]
        else:
            phases = [dict(train_segmentor=True, train_generator=True)]
        history: dict = {}
        for i, phase in enumerate(phases):
            rng = np.random.default_rng(self.ctx.round_seed(t, salt=1 + i))
            rep_rng = distributed.rank_generator(rng)  # under DDP each rank replays different pairs

            def batches(epoch):
                for idx in epoch_batches(len(split), cfg.train.batch_size, rng):  # this rank's shard
                    cur = PairBatch(torch.from_numpy(np.asarray(split.images[idx])),
                                    torch.from_numpy(np.asarray(split.masks[idx])).long(),
                                    torch.full((len(idx),), t, dtype=torch.long))
                    rep = replay.sample(cfg.train.batch_size, rng=rep_rng) if replay is not None else None
                    yield cur, (PairBatch(rep.images, rep.masks, rep.tasks) if rep is not None else None)

            def step(b):
                return coupled_loss(self.model, self.ctx.emb, t, b[0], b[1], self.scheduler,
                                    self.ctx.n_classes, **phase)

            # A sequential phase leaves the other network's parameters without gradients: DDP must look for them.
            trainer = Trainer(self.model.parameters(), lr=cfg.train.lr, amp_bf16=cfg.train.amp_bf16,
                              device=str(self.ctx.device), callbacks=list(callbacks),
                              find_unused_parameters=self.sequential)
            hist = trainer.fit(step, batches, cfg.train.epochs, steps_per_epoch(len(split), cfg.train.batch_size))
            history.update(hist)
        return history

    @torch.no_grad()
    def predict(self, images: torch.Tensor, task: int) -> torch.Tensor:
        from ..losses import predict as predict_labels

        self.model.eval()
        d = self.ctx.device
        z_seg, _ = self.model.prompts(self.ctx.emb, max(self.seen, task))
        tasks = torch.full((len(images),), task, dtype=torch.long, device=d)
        logits = self.model.segmentor(images.to(d), z_seg[tasks])
        return predict_labels(logits, self.ctx.n_classes.to(d)[tasks]).cpu()

    @torch.no_grad()
    def features(self, images: torch.Tensor, task: int) -> torch.Tensor:
        """Pooled segmentor bottleneck features (t-SNE of Fig. 8)."""
        self.model.eval()
        z_seg, _ = self.model.prompts(self.ctx.emb, max(self.seen, task))
        return self.model.segmentor.features(images.to(self.ctx.device),
                                             z_seg[task].expand(len(images), -1)).cpu()


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
