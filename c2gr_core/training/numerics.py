"""How a run's networks compute: fp32 or bf16 autocast, and the memory layout that goes with each.

`train.amp_bf16` is true, false, or "auto". With "auto" the run measures, before its first round, one
forward + backward of each of its networks (a copy, on random inputs of the batch it sees in a training
step: `Method.probe_batch`) in the three candidate setups below, and trains with the fastest, preferring plain fp32 unless another
setup is clearly faster (`MARGIN`): whether bf16 pays depends on the CPU (AVX-512 bf16, AMX, none)
and on the network's size, so it is measured, never assumed. The decision is written to the run
directory (`numerics.json`) and a resumed run takes it from there, so a resume stays bit-equal.

Candidates (BENCHMARKS.md "Training cost" has the side-by-side measurements behind them):
- "fp32": contiguous tensors, fp32 everywhere (what `amp_bf16 = false` always runs);
- "fp32_channels_last": fp32 with channels-last weights (oneDNN's convolutions skip their layout
  reorders; at the bench preset 1.17x faster than contiguous on an AMD EPYC);
- "bf16": bf16 autocast, contiguous (channels-last makes CPU GroupNorm in bf16 several times slower).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

SETUPS = ("fp32", "fp32_channels_last", "bf16")
# A setup other than plain fp32 must be this much faster to be chosen: timing noise on a shared
# machine is ~5-10 %, and a choice that flips between two fresh runs would change their numbers.
# (At the bench preset, probed with 16 rows per network instead of a step's 32 / 96, bf16 came out
# 1.24x and 1.26x in two probes: such a network size is where the margin matters. With the step's
# batches it was 1.34x and 1.57x: bf16 either way.)
MARGIN = {"fp32_channels_last": 1.10, "bf16": 1.25}
# A candidate whose best time is already this many times plain fp32's is timed no more: it would
# have to become 2x faster to be chosen, far beyond the noise. On a CPU without bf16 instructions
# bf16 runs 5-10x slower (Zen 1: 13 s against 1.5 s per probe at bench), and its five repetitions
# were most of a run's start-up.
GIVE_UP = 2.0


@dataclass
class Numerics:
    setup: str = "fp32"
    setting: bool | str = False          # train.amp_bf16 as configured
    probe_s: dict = field(default_factory=dict)   # setup -> seconds of the probe (min over reps)

    @property
    def bf16(self) -> bool:
        return self.setup == "bf16"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.setup == "fp32_channels_last" else torch.contiguous_format

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Numerics":
        if d.get("setup") not in SETUPS:
            raise ValueError(f"numerics: unknown setup {d.get('setup')!r}; allowed: {list(SETUPS)}")
        return cls(d["setup"], d.get("setting", "auto"), dict(d.get("probe_s", {})))

    def apply(self, modules) -> None:
        """Put every module (an iterable of nn.Module) in this setup's memory layout."""
        for m in modules:
            m.to(memory_format=self.memory_format)


def fixed(setting: bool) -> Numerics:
    """The numerics of amp_bf16 = true / false (nothing measured)."""
    return Numerics("bf16" if setting else "fp32", setting)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(networks: list[tuple[nn.Module, tuple]], device: torch.device, reps: int = 5) -> dict[str, float]:
    """Seconds of one forward + backward of every (network, example inputs) pair, per setup: the
    minimum over `reps` interleaved repetitions after a warm-up; a candidate GIVE_UP times slower than
    plain fp32 is dropped from the later repetitions (its minimum so far is returned). Works on copies:
    the networks' weights, gradients and the global RNG are untouched."""
    copies = {}
    for setup in SETUPS:
        fmt = torch.channels_last if setup == "fp32_channels_last" else torch.contiguous_format
        copies[setup] = [(copy.deepcopy(net).train().to(memory_format=fmt), inputs) for net, inputs in networks]

    def once(setup: str) -> float:
        t0 = time.perf_counter()
        for net, inputs in copies[setup]:
            with _autocast(device, setup == "bf16"):
                out = net(*inputs)
            out.float().square().mean().backward()
            net.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    best = {s: float("inf") for s in SETUPS}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for s in SETUPS:
            once(s)
        for _ in range(reps):
            for s in SETUPS:
                hopeless = s != "fp32" and GIVE_UP * best["fp32"] <= best[s] < float("inf")
                if not hopeless:
                    best[s] = min(best[s], once(s))
    return best


def choose(probe_s: dict[str, float]) -> str:
    """The setup to train with: plain fp32 unless another is faster by its MARGIN (then the fastest)."""
    base = probe_s["fp32"]
    faster = {s: base / t for s, t in probe_s.items() if s != "fp32" and base / t >= MARGIN[s]}
    return max(faster, key=faster.get) if faster else "fp32"


def resolve(setting: bool | str, networks: list[tuple[nn.Module, tuple]], device: torch.device) -> Numerics:
    """The numerics a new run trains with under train.amp_bf16 = `setting`."""
    if setting != "auto":
        return fixed(bool(setting))
    if not networks or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return Numerics("fp32", setting)
    probe_s = probe(networks, device)
    return Numerics(choose(probe_s), setting, probe_s)
