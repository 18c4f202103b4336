"""The method interface: a few named hooks the stream runner calls each round.

    before_round(t, data) -> replay(t) -> fit(t, data, replay, callbacks) -> after_round(t, data)

and, for evaluation, predict(images, task). State for checkpoints comes from `modules()` plus
`extra_state()`. A method is one file in this package that subclasses Method and is decorated
with @register("name").

What the analysis tools may ask of a method beyond that is declared here too, each with a default
that says "this method has none": `segmentation_path()` (downstream fine-tuning), `features()`
(feature-FID, t-SNE), `task_prompts()` / `prompt_graph()` (prompt heatmaps), `sample_pairs()` when
`generates_pairs` (fresh image-mask pairs), `last_round()`, and `loaded_from` (set when a method is
rebuilt from a run directory).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_catalog.schema import TaskCard

from ..config import ExperimentConfig
from ..losses import predict as predict_labels
from ..losses import seg_loss
from ..models.segmentor import PromptedUNet
from ..prompting.prompts import prompt_pool
from ..prompting.prompts import TaskEmbeddings
from ..prompting.rups import PlainPrompt
from ..training import distributed
from ..training.access import TaskAccess
from ..training.numerics import Numerics
from ..training.replay import ReplayStore
from ..training.trainer import Trainer


@dataclass
class StreamContext:
    cfg: ExperimentConfig
    cards: list[TaskCard]
    emb: TaskEmbeddings        # frozen text embeddings of every stream task (index = stream position)
    work_dir: Path             # scratch space of the run (replay shards)
    device: torch.device = torch.device("cpu")
    progress: bool = True      # show progress bars (replay sampling, training steps)
    numerics: Numerics = field(default_factory=Numerics)  # fp32 / bf16 and layout (train.amp_bf16)

    @property
    def c_max(self) -> int:
        return max(c.n_classes for c in self.cards)

    @property
    def n_classes(self) -> torch.Tensor:
        return torch.tensor([c.n_classes for c in self.cards], dtype=torch.long)

    def round_seed(self, t: int, salt: int = 0) -> int:
        # Every round reseeds from (seed, t): a resumed run replays exactly the same draws.
        return (self.cfg.train.seed * 1_000_003 + t * 7919 + salt) % (2**31 - 1)


class Method:
    name = "method"
    privacy_preserving = True   # False: the method stores or reads real past data
    reads_past_data = False     # True: TaskAccess lets it read every task seen so far (JointTrain)
    generates_pairs = False     # True: sample_pairs() draws image-mask pairs (the C2GR family)
    one_forward_step = False    # True: a step may run current + replay rows in one forward (numerics.one_forward)
    loaded_from: dict | None = None  # {"run_dir", "round"} when rebuilt by experiment.runs.load_method

    def __init__(self, ctx: StreamContext):
        self.ctx = ctx

    @classmethod
    def forced_settings(cls) -> dict:
        """{"section.key": value} this method trains with whatever the config says (c2gr-norups:
        {"prompt.rups": False}). `resolve_config` writes them into the run's config."""
        return {}

    @classmethod
    def resolve_config(cls, cfg: ExperimentConfig) -> ExperimentConfig:
        """`cfg` with the method's forced settings, so config.json records what was trained. A key left
        at its default takes the forced value; one set to another value is refused (it would be ignored)."""
        from . import METHODS

        for key, value in cls.forced_settings().items():
            section, name = key.split(".")
            sec = getattr(cfg, section)
            current = getattr(sec, name)
            if current == value:
                continue
            if current != getattr(type(sec)(), name):
                others = sorted(n for n, m in METHODS.items() if m.forced_settings().get(key) == current)
                hint = f"; methods that train with it: {others}" if others else ""
                raise ValueError(f"{key}={json.dumps(current)} conflicts with method {cls.name!r}, which always trains "
                                 f"with {key}={json.dumps(value)}{hint}")
            setattr(sec, name, value)
        return cfg

    # --- hooks ---------------------------------------------------------------------------
    def before_round(self, t: int, data: TaskAccess) -> None:
        pass

    def replay(self, t: int) -> ReplayStore | None:
        return None

    def fit(self, t: int, data: TaskAccess, replay: ReplayStore | None, callbacks=()) -> dict:
        raise NotImplementedError

    def after_round(self, t: int, data: TaskAccess) -> None:
        pass

    # --- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, task: int) -> torch.Tensor:
        raise NotImplementedError

    def probe_networks(self) -> list[tuple[nn.Module, tuple]]:
        """The networks a training step runs (the EMA, which only samples, left out), each with random
        inputs of the batch it sees in one training step: what `train.amp_bf16 = "auto"` times
        (training/numerics.py)."""
        cfg, seen, out = self.ctx.cfg, set(), []
        for name, module in self.modules().items():
            if name == "ema":
                continue
            for m in module.modules():
                if hasattr(m, "example_inputs") and id(m) not in seen:  # the workbench's networks
                    seen.add(id(m))
                    out.append((m, m.example_inputs(self.probe_batch(m), cfg.data.image_size)))
        return out

    def probe_batch(self, network: nn.Module) -> int:
        """Rows `network` sees per training step (default: one current and one replay batch)."""
        return 2 * self.ctx.cfg.train.batch_size

    # --- optional capabilities (used by c2gr_core.analysis) --------------------------------
    def last_round(self) -> int:
        """The last round the method has trained (default: the stream's last)."""
        return len(self.ctx.cards) - 1

    def segmentation_path(self) -> tuple[nn.Module, nn.Module] | None:
        """(segmentor, prompt module mapping a prompt pool to (T, P)) of the one universal segmentor,
        or None when the method has none."""
        return None

    def task_prompts(self, t: int) -> dict[str, torch.Tensor]:
        """{"segmentor": (t+1, P), and "generator" when it has one} prompts of tasks 0..t after round t."""
        return {}

    def prompt_graph(self) -> nn.Module | None:
        """The RUPS prompt graph, when the method's prompts come from one."""
        return None

    @torch.no_grad()
    def features(self, images: torch.Tensor, task: int) -> torch.Tensor:
        """Pooled prompt-modulated bottleneck features of the segmentor for `task` (Fig. 8, feature-FID)."""
        path = self.segmentation_path()
        if path is None:
            raise TypeError(f"method {self.name!r} has no universal segmentor to take features from")
        segmentor = path[0].eval()
        z = self.task_prompts(max(self.last_round(), task))["segmentor"][task]
        return segmentor.features(images.to(self.ctx.device), z.expand(len(images), -1)).cpu()

    @torch.no_grad()
    def sample_pairs(self, task: int, n: int, generator: torch.Generator, steps: int | None = None,
                     after_round: int | None = None, progress=False,
                     sampler: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n fresh image-mask pairs of `task` from the method's generator (when `generates_pairs`)."""
        raise TypeError(f"method {self.name!r} has no image-mask generator; only the C2GR family "
                        "(c2gr, c2gr-njd, c2gr-norups, cgr) generates pairs")

    # --- state ---------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {}

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"modules": {k: m.state_dict() for k, m in self.modules().items()}, "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        self.load_extra_state(state.get("extra", {}))

    def n_learnable_params(self) -> int:
        seen, n = set(), 0
        for m in self.modules().values():
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        return n


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, rank: int | None = None,
                  world: int | None = None):
    """Shuffled index batches of one epoch; with DDP each rank takes its own shard.

    rank/world default to this process's place in the torchrun group (0 and 1 without one). `rng`
    must be the same on every rank: all ranks draw one permutation and split it (`distributed.shard`),
    so the shards are disjoint and every rank yields `steps_per_epoch(n, batch_size)` batches.
    """
    per_rank = distributed.shard(rng.permutation(n), rank, world)
    for s in range(0, len(per_rank), batch_size):
        yield per_rank[s:s + batch_size]


def steps_per_epoch(n: int, batch_size: int, world: int | None = None) -> int:
    world = distributed.world_size() if world is None else world
    return math.ceil(math.ceil(n / world) / batch_size)


class SegmentorMethod(Method):
    """A universal prompted segmentor with plain (projected) text prompts, trained on the
    current task. FineTune is exactly this; regularisation and replay baselines extend it."""

    name = "segmentor"

    def __init__(self, ctx: StreamContext):
        super().__init__(ctx)
        cfg = ctx.cfg
        self.seg_prompt = PlainPrompt(ctx.emb.e.shape[1], cfg.prompt.node_dim).to(ctx.device)
        self.segmentor = PromptedUNet(cfg.segmentor, in_channels=3, out_channels=ctx.c_max + 1,
                                      prompt_dim=cfg.prompt.node_dim, n_tokens=cfg.prompt.n_tokens).to(ctx.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"segmentor": self.segmentor, "seg_prompt": self.seg_prompt}

    def seg_prompts(self, t: int) -> torch.Tensor:
        """(t+1, P) prompts of the tasks seen so far."""
        return self.seg_prompt(prompt_pool(self.ctx.emb, t))

    def segmentation_path(self) -> tuple[nn.Module, nn.Module]:
        return self.segmentor, self.seg_prompt

    @torch.no_grad()
    def task_prompts(self, t: int) -> dict[str, torch.Tensor]:
        return {"segmentor": self.seg_prompts(t)}

    def seg_loss_on(self, images, masks, tasks, prompts) -> torch.Tensor:
        d = self.ctx.device
        logits = self.segmentor(images.to(d), prompts[tasks.to(d)])
        return seg_loss(logits, masks.to(d), self.ctx.n_classes.to(d)[tasks.to(d)], groups=tasks.to(d))

    def extra_loss(self, t: int, images, masks, prompts) -> dict[str, torch.Tensor]:
        """Hook for regularisers (EWC, distillation): extra named loss terms on the current batch."""
        return {}

    def n_train_pairs(self, data: TaskAccess, t: int) -> int:
        return len(data.train(t))

    def current_batches(self, data: TaskAccess, t: int, rng: np.random.Generator, task_ids=None):
        """Yields (images, masks, tasks) of the readable training data, one epoch."""
        split = data.train(t)
        for idx in epoch_batches(len(split), self.ctx.cfg.train.batch_size, rng):
            yield (*split.tensors(idx), torch.full((len(idx),), t, dtype=torch.long))

    def trainer(self, params, callbacks=()) -> Trainer:
        tc = self.ctx.cfg.train
        return Trainer(params, lr=tc.seg_lr or tc.lr, amp_bf16=self.ctx.numerics.bf16, device=str(self.ctx.device),
                       callbacks=list(callbacks))

    def fit(self, t: int, data: TaskAccess, replay: ReplayStore | None, callbacks=()) -> dict:
        tc = self.ctx.cfg.train
        rng = np.random.default_rng(self.ctx.round_seed(t, salt=1))
        n = self.n_train_pairs(data, t)
        self.segmentor.train()

        def step(batch):
            x, y, tasks = batch
            prompts = self.seg_prompts(t)
            losses = {"seg": self.seg_loss_on(x, y, tasks, prompts)}
            losses.update(self.extra_loss(t, x, y, prompts))
            return {"loss": sum(losses.values()), **losses}

        params = [p for m in self.modules().values() for p in m.parameters()]
        return self.trainer(params, callbacks).fit(step, lambda e: self.current_batches(data, t, rng),
                                                   tc.epochs, steps_per_epoch(n, tc.batch_size))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, task: int) -> torch.Tensor:
        self.segmentor.eval()
        d = self.ctx.device
        prompts = self.seg_prompts(len(self.ctx.cards) - 1)
        tasks = torch.full((len(images),), task, dtype=torch.long, device=d)
        logits = self.segmentor(images.to(d), prompts[tasks])
        return predict_labels(logits, self.ctx.n_classes.to(d)[tasks]).cpu()
