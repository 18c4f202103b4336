"""Relation-aware prompt graph of RUPS (sec. 3.2.1, eq. 4-5) and the "w/o RUPS" ablation.

Nodes are the tasks of the prompt pool (every task seen so far); n_i = W_E e_i. Each of the
six subgraphs S in `SUBSETS` mixes learned attention with the cosine similarity s^S of the
tasks' attribute components:

    a^S_{i1,i2} = eta * softmax_{i2}(V_S(n_i1, n_i2)) + (1 - eta) * s^S_{i1,i2}      (4)
    z^S_i       = LeakyReLU(sum_j a^S_ij n_j)
    w_S         = 1/t sum_i q^T tanh(W_q z^S_i + b_q)                                (5)
    zeta_i      = sum_S softmax_S(w)_S z^S_i

No parameter depends on the number of tasks t, so one module serves every round.

Note on V_S: read literally as a linear layer on the concatenated pair,
V_S(n1, n2) = u1.n1 + u2.n2 + b, the u1.n1 + b part is constant along a softmax row, so every
task would get the same learned attention row and u1, b no gradient. We read "a linear layer V_S
computes attention scores between n_i1 and n_i2" as the linear layer applied to one node and
compared with the other: V_S(n1, n2) = (V_S n1) . n2 / sqrt(node_dim), a bilinear score whose
softmax differs per row (scaled as in dot-product attention).

Note on task identity (`relation_norm`, `residual`; BENCHMARKS.md, "RUPS prompts"): read literally,
eq. 4 adds a softmax row (sum 1) to a row of raw cosines (sum about 1 + 0.4 (t - 1) for the
sentence-encoder components of the 9-task bench stream), so z^S_i is dominated by a near-uniform sum over all
nodes that grows with t, and the LeakyReLU puts every z^S_i in the positive orthant. Trained on the
9-task bench stream, the prompts of all nine tasks ended at cosine >= 0.95 (mean 0.99), the
opposite of Fig. 7, and the segmentor could no longer tell busi from brats-t1. Two options restore
what Fig. 7 shows; `paper` keeps the literal reading:

- relation_norm = "row": s^S_i. / sum_j |s^S_ij|, so that a^S (eq. 4) is a convex combination of
  two rows of unit mass and ||z^S_i|| does not grow with the number of tasks;
- residual = True: zeta_i = n_i + sum_S beta_S z^S_i, the skip connection of graph-attention and
  transformer layers, so that the relational message refines a task's own node instead of
  replacing it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import RELATION_NORMS
from .prompts import SUBSETS, TaskEmbeddings, subset_key

Components = Mapping[tuple[str, ...], torch.Tensor]


def _unpack(emb) -> tuple[torch.Tensor, Components]:
    if isinstance(emb, TaskEmbeddings):
        return emb.e, emb.components
    if isinstance(emb, (tuple, list)) and len(emb) == 2:
        return emb[0], emb[1]
    raise TypeError(f"expected TaskEmbeddings or (e, components), got {type(emb).__name__}")


def cosine_matrix(c: torch.Tensor) -> torch.Tensor:
    """s_{i1,i2} = cos(c_i1, c_i2) for the rows of c (T, D)."""
    c = F.normalize(c, dim=1)
    return c @ c.T


class PromptGraph(nn.Module):
    """RUPS relation-aware prompt graph; forward(emb) -> zeta (T, node_dim)."""

    def __init__(self, embed_dim: int, component_dims: Mapping[tuple[str, ...], int], node_dim: int,
                 q_dim: int, eta_init: float = 0.5, negative_slope: float = 0.01,
                 relation_norm: str = "none", residual: bool = False):
        super().__init__()
        if not component_dims:
            raise ValueError(f"component_dims is empty; give a dim for some of {list(SUBSETS)}")
        unknown = [s for s in component_dims if tuple(s) not in SUBSETS]
        if unknown:
            raise ValueError(f"component_dims: unknown attribute subset(s) {unknown}; allowed: {list(SUBSETS)}")
        if not 0.0 < eta_init < 1.0:
            raise ValueError(f"eta_init must be in (0, 1) (eta = sigmoid(raw)), got {eta_init}")
        for what, v in (("embed_dim", embed_dim), ("node_dim", node_dim), ("q_dim", q_dim)):
            if v < 1:
                raise ValueError(f"{what} must be >= 1, got {v}")
        if relation_norm not in RELATION_NORMS:
            raise ValueError(f"prompt.relation_norm must be one of {RELATION_NORMS}, got {relation_norm!r}")
        if not isinstance(residual, bool):
            raise ValueError(f"prompt.residual must be true or false, got {residual!r}")
        self.relation_norm, self.residual = relation_norm, residual
        # Subgraphs keep the paper's order whatever order the dict came in.
        self.subsets = tuple(s for s in SUBSETS if s in {tuple(k) for k in component_dims})
        self.component_dims = {s: int(component_dims[s]) for s in self.subsets}
        self.embed_dim, self.node_dim, self.q_dim = embed_dim, node_dim, q_dim

        self.W_E = nn.Linear(embed_dim, node_dim, bias=False)      # n_i = W_E e_i
        self.V = nn.ModuleDict({subset_key(s): nn.Linear(node_dim, node_dim, bias=False) for s in self.subsets})
        # eta in [0, 1] as the paper requires, kept there by a sigmoid of an unconstrained parameter.
        self.eta_raw = nn.Parameter(torch.tensor(math.log(eta_init / (1.0 - eta_init))))
        self.W_q = nn.Linear(node_dim, q_dim)                       # W_q, b_q of eq. 5
        # Random, not zero: with q = 0 no gradient would reach W_q on the first step.
        self.q = nn.Parameter(torch.randn(q_dim) / math.sqrt(q_dim))
        self.act = nn.LeakyReLU(negative_slope)

    @property
    def eta(self) -> torch.Tensor:
        return torch.sigmoid(self.eta_raw)

    def nodes(self, e: torch.Tensor) -> torch.Tensor:
        return self.W_E(e)

    def attention(self, n: torch.Tensor, component: torch.Tensor, subset: tuple[str, ...],
                  eta: float | torch.Tensor | None = None) -> torch.Tensor:
        """a^S (T, T) of eq. 4; `eta` overrides the learned weight (e.g. 0 or 1 for analysis)."""
        # scores[i1, i2] = (V_S n_i1) . n_i2 / sqrt(d) for every pair at once (module note).
        scores = self.V[subset_key(subset)](n) @ n.T / math.sqrt(self.node_dim)
        eta = self.eta if eta is None else torch.as_tensor(eta, dtype=n.dtype, device=n.device)
        s = cosine_matrix(component)
        if self.relation_norm == "row":
            s = s / s.abs().sum(dim=1, keepdim=True)  # s_ii = 1, so the sum is >= 1
        return eta * torch.softmax(scores, dim=1) + (1 - eta) * s

    def forward(self, emb, return_details: bool = False):
        e, components = self._check(*_unpack(emb))
        n = self.nodes(e)
        attn, z = {}, {}
        for s in self.subsets:
            attn[s] = self.attention(n, components[s], s)
            z[s] = self.act(attn[s] @ n)
        zs = torch.stack([z[s] for s in self.subsets])                        # (|M|, T, node_dim)
        w = (torch.tanh(self.W_q(zs)) @ self.q).mean(dim=1)                    # (|M|,)  eq. 5
        beta = torch.softmax(w, dim=0)
        zeta = (beta[:, None, None] * zs).sum(dim=0)
        if self.residual:
            zeta = n + zeta
        if not return_details:
            return zeta
        details = {
            "attention": attn,
            "cosine": {s: cosine_matrix(components[s]) for s in self.subsets},
            "eta": self.eta,
            "scores": dict(zip(self.subsets, w)),
            "subgraph_weights": dict(zip(self.subsets, beta)),
            "nodes": n,
            "z": z,
        }
        return zeta, details

    @torch.no_grad()
    def diagnostics(self, emb) -> dict[str, Any]:
        """Detached CPU copies of the attention per subgraph, eta and subgraph weights (Fig. 7)."""
        zeta, d = self.forward(emb, return_details=True)
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        return {
            "names": list(emb.names) if isinstance(emb, TaskEmbeddings) else None,
            "zeta": cpu(zeta),
            "attention": {s: cpu(a) for s, a in d["attention"].items()},
            "cosine": {s: cpu(c) for s, c in d["cosine"].items()},
            "eta": float(d["eta"]),
            "scores": {s: float(v) for s, v in d["scores"].items()},
            "subgraph_weights": {s: float(v) for s, v in d["subgraph_weights"].items()},
        }

    def _check(self, e: torch.Tensor, components: Components) -> tuple[torch.Tensor, dict]:
        dev = self.W_E.weight.device
        if e.ndim != 2 or e.shape[1] != self.embed_dim or e.shape[0] < 1:
            raise ValueError(f"prompt embeddings must be (T >= 1, {self.embed_dim}), got {tuple(e.shape)}")
        missing = [s for s in self.subsets if s not in components]
        if missing:
            raise ValueError(f"components missing for subset(s) {missing}; need {list(self.subsets)}")
        out = {}
        for s in self.subsets:
            c = components[s]
            if c.shape != (e.shape[0], self.component_dims[s]):
                raise ValueError(f"component {subset_key(s)} must be ({e.shape[0]}, {self.component_dims[s]}), "
                                 f"got {tuple(c.shape)}")
            out[s] = c.to(dev, torch.float32)
        return e.to(dev, torch.float32), out


class PlainPrompt(nn.Module):
    """The "w/o RUPS" ablation: each task's text embedding, linearly projected; no graph."""

    def __init__(self, embed_dim: int, node_dim: int):
        super().__init__()
        self.embed_dim, self.node_dim = embed_dim, node_dim
        self.proj = nn.Linear(embed_dim, node_dim)

    def forward(self, emb, return_details: bool = False):
        e, _ = _unpack(emb)
        if e.ndim != 2 or e.shape[1] != self.embed_dim or e.shape[0] < 1:
            raise ValueError(f"prompt embeddings must be (T >= 1, {self.embed_dim}), got {tuple(e.shape)}")
        zeta = self.proj(e.to(self.proj.weight.device, torch.float32))
        return (zeta, {}) if return_details else zeta

    @torch.no_grad()
    def diagnostics(self, emb) -> dict[str, Any]:
        return {"names": list(emb.names) if isinstance(emb, TaskEmbeddings) else None,
                "zeta": self.forward(emb).detach().cpu()}


def build_prompt_module(cfg, emb) -> PromptGraph | PlainPrompt:
    """PromptGraph (cfg.rups) or PlainPrompt sized from `emb` (TaskEmbeddings or (e, components))."""
    e, _ = _unpack(emb)
    return prompt_graph(cfg, emb) if cfg.rups else PlainPrompt(e.shape[1], cfg.node_dim)


def prompt_graph(cfg, emb) -> PromptGraph:
    """The RUPS PromptGraph of a PromptConfig, sized from `emb`."""
    e, components = _unpack(emb)
    return PromptGraph(e.shape[1], {s: c.shape[1] for s, c in components.items()}, cfg.node_dim, cfg.q_dim,
                       relation_norm=cfg.relation_norm, residual=cfg.residual)
