"""A stream's tasks as every run and every tool sees them: the entries, each task's data, the
method's context, and the evaluation of a segmentation path on a test split. One place for each
rule, so that a tool re-reading a run gets exactly what the run trained and was scored on."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from data_catalog.catalog import StreamEntry, load_stream, load_task, parse_entry
from data_catalog.schema import TaskCard
from data_catalog.taskdata import Split, TaskData

from ..config import ExperimentConfig
from ..losses import dice_per_class
from ..methods.base import StreamContext
from ..prompting.prompts import TaskEmbeddings, encode_tasks
from ..prompting.text_encoders import get_text_encoder
from ..training.numerics import Numerics
from ..training.numerics import fixed as fixed_numerics


def resolve_entries(stream: str | os.PathLike | Sequence) -> list[StreamEntry]:
    """A stream name, a stream YAML, or a list of entries (strings or StreamEntry) -> entries."""
    if isinstance(stream, (str, os.PathLike)):
        return load_stream(stream)
    return [e if isinstance(e, StreamEntry) else parse_entry(e) for e in stream]


def load_stream_task(entries: list[StreamEntry], j: int, cfg: ExperimentConfig,
                     data_root: str | None = None) -> TaskData:
    """Task j of a stream as every round of a run sees it (seed + j: each task its own split draw)."""
    d = cfg.data
    return load_task(entries[j], image_size=d.image_size, seed=cfg.train.seed + j,
                     data_root=data_root or d.data_root, n_synthetic=(d.n_train, d.n_val, d.n_test))


def task_embeddings(cfg: ExperimentConfig, cards: Sequence[TaskCard],
                    cache_dir: str | os.PathLike | None = None) -> TaskEmbeddings:
    """The frozen text embeddings of the stream's tasks under cfg.prompt's encoder (cached on disk)."""
    return encode_tasks(list(cards), get_text_encoder(cfg.prompt), cache_dir=cache_dir)


def make_context(cfg: ExperimentConfig, cards: Sequence[TaskCard], emb: TaskEmbeddings,
                 work_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 progress: bool = False) -> StreamContext:
    """The StreamContext a method is built with, by the runner and by every tool that rebuilds one.
    Without work_dir a temporary folder is made; the caller owns it."""
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="c2gr-method-"))
    # train.amp_bf16 = "auto" stays fp32 until the runner has measured (training/numerics.py).
    numerics = Numerics(setting="auto") if cfg.train.amp_bf16 == "auto" else fixed_numerics(cfg.train.amp_bf16)
    return StreamContext(cfg=cfg, cards=list(cards), emb=emb, work_dir=work,
                         device=torch.device(device or cfg.train.device), progress=progress, numerics=numerics)


@torch.no_grad()
def evaluate_split(predict: Callable[[torch.Tensor], torch.Tensor], split: Split, n_classes: int,
                   batch_size: int = 64) -> np.ndarray:
    """Per-class DSC of `predict` (images -> label maps) on a whole split, pooled over the split
    (the matrix D of sec. 4.1.2 and Table 2 are built from these)."""
    preds = [predict(split.tensors(slice(s, s + batch_size))[0]).cpu() for s in range(0, len(split), batch_size)]
    return np.asarray(dice_per_class(torch.cat(preds), split.tensors()[1], n_classes), dtype=np.float64)
