"""Adaptation to downstream tasks (sec. 4.4.4, Table 2).

The final segmentor of a stream run is fine-tuned on each downstream task separately (a fresh
copy per task, so tasks do not leak into each other) and compared with the same segmentor
architecture trained from scratch on that task. Paper: 60 epochs at lr 1e-4 per task.

The downstream task is segmented with the method's own prompt pathway: its text prompt is
encoded with the run's text encoder and appended to the upstream prompt pool; a RUPS prompt
graph is evaluated over the upstream pool + the new task (its relations to the upstream tasks
shape its prompt), a plain prompt is just projected. The prompt module is fine-tuned together
with the segmentor (`tune_prompt`); the denoiser plays no part. Scratch gets a fresh plain prompt.

The segmentor keeps the C_max + 1 output channels of the upstream stream; a downstream task with
more classes than C_max cannot be segmented by it and is refused before any training.
"""
from __future__ import annotations

import copy
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from data_catalog.catalog import entry_card, load_task
from data_catalog.schema import TaskCard
from data_catalog.taskdata import TaskData

from ..config import ExperimentConfig
from ..experiment.runs import load_method
from ..experiment.tasks import evaluate_split, resolve_entries
from ..losses import predict, seg_loss, task_dsc
from ..methods.base import Method, epoch_batches, steps_per_epoch
from ..models.segmentor import PromptedUNet
from ..prompting.prompts import TaskEmbeddings, encode_tasks
from ..prompting.rups import PlainPrompt
from ..prompting.text_encoders import get_text_encoder
from ..training.trainer import TqdmCallback, Trainer

DOWNSTREAM_STREAM = "synthetic-downstream-5"
SCRATCH = "Scratch"
PAPER_EPOCHS, PAPER_LR = 60, 1e-4   # sec. 4.4.4


class PromptedSegmentor(nn.Module):
    """Prompt module + segmentor: the segmentation path of a method, on a fixed prompt pool."""

    def __init__(self, segmentor: PromptedUNet, prompt: nn.Module, pool: TaskEmbeddings, task: int):
        super().__init__()
        self.segmentor, self.prompt = segmentor, prompt
        self.pool, self.task = (pool.e, pool.components), task

    def zeta(self) -> torch.Tensor:
        return self.prompt(self.pool)[self.task]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmentor(images, self.zeta().expand(len(images), -1))


def segmentation_path(method: Method) -> tuple[PromptedUNet, nn.Module]:
    """(segmentor, prompt module) of a trained method; the prompt module maps a pool to (T, P)."""
    path = method.segmentation_path()
    if path is None:
        raise TypeError(f"method {method.name!r} exposes no single universal segmentor with a prompt module; "
                        "it cannot be fine-tuned downstream")
    return path


def extend_pool(emb: TaskEmbeddings, upstream: Sequence[TaskCard], card: TaskCard, encoder) -> TaskEmbeddings:
    """The upstream prompt pool (rows unchanged) + the downstream task as its last row.

    The new task names its site when an upstream task shares its modality (the rule of sec. 4.2);
    the upstream rows stay exactly the embeddings the run trained with.
    """
    shared = card.modality.strip().casefold() in {c.modality.strip().casefold() for c in upstream}
    new = encode_tasks([card], encoder, site_tasks={card.name} if shared else set())
    return TaskEmbeddings(names=list(emb.names) + new.names, texts=list(emb.texts) + new.texts,
                          e=torch.cat([emb.e, new.e.to(emb.e.dtype)]),
                          components={s: torch.cat([c, new.components[s].to(c.dtype)]) for s, c in emb.components.items()},
                          phrases=(list(emb.phrases) + new.phrases) if emb.phrases else [],
                          encoder_name=emb.encoder_name)


def finetune(model: PromptedSegmentor, data: TaskData, cfg: ExperimentConfig, epochs: int, lr: float, seed: int,
             tune_prompt: bool = True, callbacks=(), bf16: bool | None = None) -> dict:
    """Train `model` on data.train with L_seg for `epochs` epochs; returns the trainer history.
    bf16: autocast or not (default: cfg.train.amp_bf16, which must then be true or false)."""
    if bf16 is None:
        if cfg.train.amp_bf16 == "auto":
            raise ValueError('finetune: train.amp_bf16 = "auto" is decided by a stream run; pass bf16=')
        bf16 = bool(cfg.train.amp_bf16)
    dev = torch.device(cfg.train.device)
    model.to(dev).train()
    n = data.card.n_classes
    split = data.train
    bs = cfg.train.batch_size
    rng = np.random.default_rng(seed)
    params = list(model.segmentor.parameters()) + (list(model.prompt.parameters()) if tune_prompt else [])

    def batches(epoch):
        for idx in epoch_batches(len(split), bs, rng):
            yield split.tensors(idx)

    def step(batch):
        x, y = batch
        return {"loss": seg_loss(model(x.to(dev)), y.to(dev), n)}

    trainer = Trainer(params, lr=lr, amp_bf16=bf16, device=str(dev), callbacks=list(callbacks))
    return trainer.fit(step, batches, epochs, steps_per_epoch(len(split), bs))


@torch.no_grad()
def evaluate_path(model: PromptedSegmentor, data: TaskData, batch_size: int = 64) -> np.ndarray:
    """Per-class DSC on the task's test split, pooled over the split as the stream's evaluation."""
    model.eval()
    dev = next(model.parameters()).device
    n = data.card.n_classes
    return evaluate_split(lambda x: predict(model(x.to(dev)), n), data.test, n, batch_size)


def _defaults(cfg: ExperimentConfig, epochs: int | None, lr: float | None) -> tuple[int, float]:
    paper = cfg.preset == "paper"
    epochs = (PAPER_EPOCHS if paper else cfg.train.epochs) if epochs is None else int(epochs)
    lr = (PAPER_LR if paper else (cfg.train.seg_lr or cfg.train.lr)) if lr is None else float(lr)
    if epochs < 1 or lr <= 0:
        raise ValueError(f"adapt: epochs must be >= 1 and lr > 0, got epochs={epochs}, lr={lr}")
    return epochs, lr


def adapt(source: str | os.PathLike | Method, downstream: str | os.PathLike | Sequence = DOWNSTREAM_STREAM,
          cfg: ExperimentConfig | None = None, epochs: int | None = None, lr: float | None = None,
          data_root: str | None = None, scratch: bool = True, tune_prompt: bool = True,
          progress: bool = False) -> list[dict]:
    """Table 2: fine-tune the final model of a stream on each downstream task, vs. Scratch.

    source: a run directory (its last checkpoint is loaded) or a trained Method.
    downstream: a stream name, a stream YAML or a list of entries (default the synthetic twins
        of DRIVE, GOALS, SegPC, DDTI and PROMISE12).
    cfg: data and training settings (image size, batch size, seed, device); default the source's.
    epochs, lr: default 60 and 1e-4 at the paper preset (sec. 4.4.4), else cfg.train's.
    Returns rows {"model", "source", <task>: DSC, ..., "overall", "per_class"} (DSC fractions),
    the Scratch row first when `scratch`.
    """
    method = source if isinstance(source, Method) else load_method(source)
    label = method.name
    src = str(source) if not isinstance(source, Method) else (method.loaded_from or {}).get("run_dir")
    cfg = cfg or method.ctx.cfg
    epochs, lr = _defaults(cfg, epochs, lr)
    segmentor, prompt = segmentation_path(method)
    c_max = segmentor.out_channels - 1
    entries = resolve_entries(downstream)
    cards = [entry_card(e) for e in entries]
    too_big = [(c.name, c.n_classes) for c in cards if c.n_classes > c_max]
    if too_big:
        raise ValueError(f"downstream task(s) {too_big} have more classes than the segmentor of {label!r} can output: "
                         f"its stream's C_max = {c_max} ({segmentor.out_channels} output channels); choose tasks "
                         f"with at most {c_max} classes or train upstream on a stream with more classes")
    encoder = get_text_encoder(cfg.prompt)
    seed = cfg.train.seed
    # "auto": the precision the upstream run measured and trained with, for both rows alike.
    bf16 = method.ctx.numerics.bf16 if cfg.train.amp_bf16 == "auto" else bool(cfg.train.amp_bf16)
    up_cards = method.ctx.cards
    rows = {name: {"model": name, "source": s, "per_class": {}}
            for name, s in ([(SCRATCH, None)] if scratch else []) + [(label, src)]}
    d = cfg.data
    for k, (entry, card) in enumerate(zip(entries, cards)):
        data = load_task(entry, image_size=d.image_size, seed=seed + k, data_root=data_root or d.data_root,
                         n_synthetic=(d.n_train, d.n_val, d.n_test))
        pool = extend_pool(method.ctx.emb, up_cards, card, encoder)
        models = {label: PromptedSegmentor(copy.deepcopy(segmentor), copy.deepcopy(prompt), pool, len(pool) - 1)}
        if scratch:
            torch.manual_seed(seed + k)
            fresh = PromptedUNet(method.ctx.cfg.segmentor, in_channels=segmentor.in_channels,
                                 out_channels=segmentor.out_channels, prompt_dim=segmentor.prompt_dim,
                                 n_tokens=segmentor.n_tokens)
            alone = encode_tasks([card], encoder)
            models[SCRATCH] = PromptedSegmentor(fresh, PlainPrompt(alone.e.shape[1], segmentor.prompt_dim), alone, 0)
        for name, model in models.items():
            torch.manual_seed(seed + k)   # the same data order and dropout draws for both rows
            cbs = [TqdmCallback(desc=f"{name} -> {card.name}")] if progress else []
            finetune(model, data, cfg, epochs, lr, seed=seed + k, tune_prompt=tune_prompt, callbacks=cbs, bf16=bf16)
            dsc = evaluate_path(model, data)
            rows[name][card.name] = task_dsc(torch.from_numpy(dsc), card.n_classes)
            rows[name]["per_class"][card.name] = {c: (None if np.isnan(v) else float(v))
                                                  for c, v in zip(card.classes, dsc)}
    names = [c.name for c in cards]
    for row in rows.values():
        vals = [row[n] for n in names if not np.isnan(row[n])]
        row["overall"] = float(np.mean(vals)) if vals else float("nan")
    return list(rows.values())


def table_rows(rows: list[dict]) -> list[list]:
    """Header + rows of the Table-2 layout (model, tasks..., overall) in percent, for printing or CSV."""
    tasks = [k for k in rows[0] if k not in ("model", "source", "per_class", "overall")]
    out = [["model", *tasks, "overall"]]
    for r in rows:
        out.append([r["model"], *(round(100 * r[t], 2) for t in tasks), round(100 * r["overall"], 2)])
    return out

