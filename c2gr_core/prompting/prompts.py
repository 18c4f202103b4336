"""Task prompts and their frozen text embeddings (sec. 3.2.1, sec. 4.2).

Each task is described by the template "A [I] image of [A] for [SO]" over its card's imaging
modality I, anatomical region A and segmentation objective SO. Tasks that share a modality
with another task also name their site or device (sec. 4.2), e.g.
"A fundus photography image of eye for optic disc and cup segmentation, acquired with Canon CR-2".

For the s term of eq. 4 every attribute phrase is encoded on its own; the component of an
attribute subset S (one of the six in `SUBSETS`) is the concatenation of its attributes'
phrase embeddings, so tasks with identical phrases have identical components.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from data_catalog.schema import TaskCard

from .text_encoders import TextEncoder

ATTRIBUTES = ("I", "A", "SO")
# The subgraph index set M of eq. 4, in the paper's order.
SUBSETS: tuple[tuple[str, ...], ...] = (("I",), ("A",), ("SO",), ("I", "A"), ("I", "SO"), ("A", "SO"))

# A site written with its own preposition ("at Aravind Eye Hospital") is kept as written.
_PREPOSITIONS = ("at ", "with ", "from ", "on ", "by ", "in ", "using ")


def subset_key(subset: Sequence[str]) -> str:
    """'I+A' for ('I', 'A'): a string form for module names, plots and file names."""
    return "+".join(subset)


def _site_phrase(site: str) -> str:
    site = site.strip()
    return f"acquired {site}" if site.lower().startswith(_PREPOSITIONS) else f"acquired with {site}"


def attribute_phrases(card: TaskCard, with_site: bool = False) -> dict[str, str]:
    """The phrases for I, A and SO. The site/device describes the imaging, so it joins I."""
    imaging = card.modality
    if with_site and card.site:
        imaging = f"{imaging}, {_site_phrase(card.site)}"
    return {"I": imaging, "A": card.anatomy, "SO": card.objective}


def task_prompt(card: TaskCard, with_site: bool = False) -> str:
    """'A [modality] image of [anatomy] for [objective]' (+ ', acquired with [site]').

    The article is always "A", exactly the paper's template.
    """
    text = f"A {card.modality} image of {card.anatomy} for {card.objective}"
    if with_site and card.site:
        text += f", {_site_phrase(card.site)}"
    return text


def sites_needed(cards: Iterable[TaskCard]) -> set[str]:
    """Names of tasks whose modality (case-insensitive) another task in `cards` shares.

    Pass the whole stream, not the tasks seen so far: otherwise a task's prompt (and its
    replay conditioning) would change when a later task with its modality arrives.
    """
    cards = list(cards)
    count: dict[str, int] = {}
    for c in cards:
        key = c.modality.strip().casefold()
        count[key] = count.get(key, 0) + 1
    return {c.name for c in cards if count[c.modality.strip().casefold()] > 1}


@dataclass
class TaskEmbeddings:
    """The prompt pool: one row per task, in the order given.

    e: (T, E) embeddings of the full prompts; components[S]: (T, E * |S|) per attribute subset.
    """
    names: list[str]
    texts: list[str]
    e: torch.Tensor
    components: dict[tuple[str, ...], torch.Tensor]
    phrases: list[dict[str, str]] = field(default_factory=list)
    encoder_name: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def select(self, names: Sequence[str]) -> "TaskEmbeddings":
        """The rows of `names`, in that order (e.g. the tasks seen up to round t)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise KeyError(f"tasks {missing} are not in the prompt pool {self.names}")
        idx = [self.names.index(n) for n in names]
        return TaskEmbeddings(
            names=list(names), texts=[self.texts[i] for i in idx], e=self.e[idx],
            components={s: c[idx] for s, c in self.components.items()},
            phrases=[self.phrases[i] for i in idx] if self.phrases else [],
            encoder_name=self.encoder_name)


def encode_tasks(cards: Sequence[TaskCard], encoder: TextEncoder, cache_dir: str | Path | None = None,
                 site_tasks: Iterable[str] | None = None) -> TaskEmbeddings:
    """Encode every card's prompt and attribute phrases with the frozen `encoder`.

    site_tasks: names whose prompt names the site; default `sites_needed(cards)`. Give the
    whole stream's set when `cards` is only the tasks seen so far.
    cache_dir: one .pt file per (encoder name, text); a cached text is never re-encoded.
    """
    cards = list(cards)
    if not cards:
        raise ValueError("encode_tasks: no task cards given")
    names = [c.name for c in cards]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"encode_tasks: duplicate task names {dup}")
    site_tasks = sites_needed(cards) if site_tasks is None else set(site_tasks)

    texts = [task_prompt(c, c.name in site_tasks) for c in cards]
    phrases = [attribute_phrases(c, c.name in site_tasks) for c in cards]
    table = _encode_cached(texts + [p[a] for p in phrases for a in ATTRIBUTES], encoder, cache_dir)

    e = torch.stack([table[t] for t in texts])
    per_attr = {a: torch.stack([table[p[a]] for p in phrases]) for a in ATTRIBUTES}
    components = {s: torch.cat([per_attr[a] for a in s], dim=1) for s in SUBSETS}
    return TaskEmbeddings(names=names, texts=texts, e=e, components=components,
                          phrases=phrases, encoder_name=encoder.name)


def _cache_file(cache_dir: Path, encoder_name: str, text: str) -> Path:
    digest = hashlib.sha256(f"{encoder_name}\n{text}".encode()).hexdigest()[:32]
    return cache_dir / f"{digest}.pt"


def _encode_cached(texts: list[str], encoder: TextEncoder, cache_dir: str | Path | None) -> dict[str, torch.Tensor]:
    unique = list(dict.fromkeys(texts))
    table: dict[str, torch.Tensor] = {}
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for t in unique:
            hit = _read_cache(_cache_file(cache_dir, encoder.name, t), encoder, t)
            if hit is not None:
                table[t] = hit
    todo = [t for t in unique if t not in table]
    if todo:
        out = encoder.encode(todo)
        for t, row in zip(todo, out):
            table[t] = row.clone()
            if cache_dir is not None:
                _write_cache(_cache_file(cache_dir, encoder.name, t), encoder.name, t, table[t])
    return table


def _read_cache(path: Path, encoder: TextEncoder, text: str) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        ok = (entry["encoder"] == encoder.name and entry["text"] == text
              and entry["embedding"].shape == (encoder.dim,))
    except Exception as e:  # a cache must never stop a run: re-encode and overwrite
        warnings.warn(f"unreadable embedding cache file {path} ({e}); re-encoding", stacklevel=3)
        return None
    if not ok:
        warnings.warn(f"embedding cache file {path} does not hold {encoder.name!r} / {text!r}; re-encoding",
                      stacklevel=3)
        return None
    return entry["embedding"].float()


def _write_cache(path: Path, encoder_name: str, text: str, emb: torch.Tensor) -> None:
    # Temp name then rename, so an interrupted run never leaves a half-written entry.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"encoder": encoder_name, "text": text, "embedding": emb}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def prompt_pool(emb: TaskEmbeddings, t: int) -> tuple[torch.Tensor, dict]:
    """The prompt pool of round t: every task seen so far, 0..t (sec. 3.2.1)."""
    return emb.e[: t + 1], {s: c[: t + 1] for s, c in emb.components.items()}
