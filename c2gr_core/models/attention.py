"""Which attention kernel MONAI's attention blocks run: torch's fused `scaled_dot_product_attention`
("sdpa") or MONAI's explicit einsum-softmax-einsum ("math"). Same maths; the choice is speed and memory.

Measured (benchmarks/training_cost.py, BENCHMARKS.md "Training cost"): on CPU the fused kernel is the
slower one at the sizes a CPU trains. At the bench preset the coupled step took 0.490 s with "sdpa" and
0.438 s with "math" in fp32, 0.486 s and 0.323 s under bf16 autocast (2 threads, AMD EPYC;
benchmarks/results/training_cost.json). On CUDA the fused kernel is what keeps 256^2 attention in memory, so it
stays there. The networks pick the kernel from the device of their input (`AttentionByDevice`).
"""
from __future__ import annotations

import torch
from torch import nn

ATTENTION_KINDS = ("sdpa", "math")


def set_attention(module: nn.Module, kind: str) -> nn.Module:
    """Switch every MONAI attention block inside `module` to `kind`; returns `module`."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {list(ATTENTION_KINDS)}, got {kind!r}")
    for m in module.modules():
        if hasattr(m, "use_flash_attention"):
            m.use_flash_attention = kind == "sdpa"
    return module


def fix_attention(module: nn.Module, kind: str | None) -> nn.Module:
    """Make every network inside `module` run `kind` whatever the device (None: by device again)."""
    for m in module.modules():
        if isinstance(m, AttentionByDevice):
            m.attention = kind
            m.__dict__.pop("_attention_in_use", None)
    return set_attention(module, kind) if kind else module


def attention_for(device: torch.device | str) -> str:
    """The kernel the workbench uses on `device` (see the module note)."""
    return "math" if torch.device(device).type == "cpu" else "sdpa"


class AttentionByDevice:
    """Mixin for a network with MONAI attention blocks: `self.attention` None picks the kernel from
    the input's device on the first forward there (and again when the device changes); "sdpa" or
    "math" fixes it."""

    attention: str | None = None

    def _select_attention(self, x: torch.Tensor) -> None:
        kind = self.attention or attention_for(x.device)
        if self.__dict__.get("_attention_in_use") != kind:
            set_attention(self, kind)
            self.__dict__["_attention_in_use"] = kind
