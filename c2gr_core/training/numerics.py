"""How a run's networks compute: fp32 or bf16 autocast, the memory layout that goes with each, the
attention kernel, and whether a coupled step puts its current and replay batches through each network
in one forward.

`train.amp_bf16` is true, false, or "auto". With "auto" the run measures, before its first round, one
forward + backward of each of its networks (a copy, on random inputs of the batch it sees in a training
step: `Method.probe_batch`) in the three candidate setups below, and trains with the fastest, preferring plain fp32 unless another
setup is clearly faster (`MARGIN`): whether bf16 pays depends on the CPU (AVX-512 bf16, AMX, none)
and on the network's size, so it is measured, never assumed. The one exception: bf16 is not timed
where the CPU has no bf16 kernels at all (`bf16_kernels`; an AVX2-only CPU), where it is about 10x slower
than fp32 and timing it was 27-41 % of the probe at bench (Zen 3). The decision is written to the run
directory (`numerics.json`) and a resumed run takes it from there, so a resume stays bit-equal.

Candidates (BENCHMARKS.md "Training cost" has the side-by-side measurements behind them):
- "fp32": contiguous tensors, fp32 everywhere (what `amp_bf16 = false` always runs);
- "fp32_channels_last": fp32 with channels-last weights (oneDNN's convolutions skip their layout
  reorders; at the bench preset 1.17x faster than contiguous on an AMD EPYC);
- "bf16": bf16 autocast, contiguous (channels-last makes CPU GroupNorm in bf16 several times slower).

On a CPU, "auto" then times, in the chosen setup, the two kernels of MONAI's attention blocks
(models/attention.py: einsum "math", the default there, against torch's fused "sdpa") and, for a method
whose coupled step batches current + replay rows (`Method.one_forward_step`), one forward of those rows
against two forwards of half as many. Both are the same maths; which is faster depends on the CPU and
the preset: on a Zen 1 EPYC the cpu preset's coupled step ran 0.79x with einsum attention and 0.78x with
one forward, while on a Zen 4 / 5 both won (BENCHMARKS.md, "Training cost";
benchmarks/results/profile/cpu_split_zen1.json). Each departs from the default only when faster by
`MARGIN`. On CUDA neither is probed: the fused kernel is what keeps 256^2 attention in memory.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..models.attention import ATTENTION_KINDS, fix_attention

SETUPS = ("fp32", "fp32_channels_last", "bf16")
# A setup other than plain fp32 must be this much faster to be chosen: timing noise on a shared
# machine is ~5-10 %, and a choice that flips between two fresh runs would change their numbers.
# (At the bench preset, probed with 16 rows per network instead of a step's 32 / 96, bf16 came out
# 1.24x and 1.26x in two probes: such a network size is where the margin matters. With the step's
# batches it was 1.34x and 1.57x: bf16 either way.)
MARGIN = {"fp32_channels_last": 1.10, "bf16": 1.25, "sdpa": 1.10, "separate": 1.10}
# A candidate whose best time is already this many times plain fp32's is timed no more: it would
# have to become 2x faster to be chosen, far beyond the noise. On a CPU without bf16 instructions
# bf16 runs 5-10x slower (Zen 1: 13 s against 1.5 s per probe at bench), and its five repetitions
# were most of a run's start-up.
GIVE_UP = 2.0


@dataclass
class Numerics:
    setup: str = "fp32"
    setting: bool | str = False          # train.amp_bf16 as configured
    probe_s: dict = field(default_factory=dict)   # candidate -> seconds of the probe (min over reps)
    attention: str | None = None   # "math" / "sdpa" for every network; None: by device (models/attention.py)
    one_forward: bool = True       # coupled step: current + replay rows through each network at once

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
        # Records written before the attention kernel and the forward batching were chosen: the
        # defaults those runs trained with.
        attention = d.get("attention")
        if attention not in (None, *ATTENTION_KINDS):
            raise ValueError(f"numerics: unknown attention {attention!r}; allowed: {list(ATTENTION_KINDS)} or null")
        one_forward = d.get("one_forward", True)
        if not isinstance(one_forward, bool):
            raise ValueError(f"numerics: one_forward must be true or false, got {one_forward!r}")
        return cls(d["setup"], d.get("setting", "auto"), dict(d.get("probe_s", {})), attention, one_forward)

    def apply(self, modules) -> None:
        """Put every module (an iterable of nn.Module) in this setup's memory layout and attention kernel."""
        for m in modules:
            m.to(memory_format=self.memory_format)
            if self.attention is not None:
                fix_attention(m, self.attention)


def fixed(setting: bool) -> Numerics:
    """The numerics of amp_bf16 = true / false (nothing measured)."""
    return Numerics("bf16" if setting else "fp32", setting)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_times(cases: dict[str, list[tuple[nn.Module, tuple]]], bf16: dict[str, bool], device: torch.device,
                reps: int) -> dict[str, float]:
    """Seconds of one forward + backward of every (network, inputs) pair of each case: the minimum
    over `reps` interleaved repetitions after a warm-up. The first case is the reference; another
    GIVE_UP times slower than it is dropped from the later repetitions (its minimum so far is returned)."""
    def once(case: str) -> float:
        t0 = time.perf_counter()
        for net, inputs in cases[case]:
            with _autocast(device, bf16[case]):
                out = net(*inputs)
            out.float().square().mean().backward()
            net.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    ref = next(iter(cases))
    best = {c: float("inf") for c in cases}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for c in cases:
            once(c)
        for _ in range(reps):
            for c in cases:
                hopeless = c != ref and GIVE_UP * best[ref] <= best[c] < float("inf")
                if not hopeless:
                    best[c] = min(best[c], once(c))
    return best


def _copies(networks, setup: str, attention: str | None = None) -> list[tuple[nn.Module, tuple]]:
    fmt = torch.channels_last if setup == "fp32_channels_last" else torch.contiguous_format
    out = [(copy.deepcopy(net).train().to(memory_format=fmt), inputs) for net, inputs in networks]
    return [(fix_attention(n, attention), i) for n, i in out] if attention else out


def bf16_kernels(device: torch.device) -> bool:
    """Whether the device has bf16 kernels at all: on CUDA what the device reports; on a CPU whether
    oneDNN has them for it (x86 with AVX-512 or AVX-NE-CONVERT, Arm with bf16). Without them autocast's
    bf16 convolutions and matmuls convert to fp32 and back: about 10x slower than fp32 on the AVX2-only
    EPYCs measured (Zen 1, Zen 3; BENCHMARKS.md, "Training cost"), 27-41 % of a bench run's probe.
    Where it cannot be told (another device, a torch without oneDNN) bf16 is timed, not assumed away."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if device.type != "cpu" or check is None or not torch.backends.mkldnn.is_available():
        return True
    return bool(check())


def probe(networks: list[tuple[nn.Module, tuple]], device: torch.device, reps: int = 5) -> dict[str, float]:
    """Seconds of one forward + backward of every (network, example inputs) pair, per setup (see
    `_best_times`); bf16 only where the device has bf16 kernels (`bf16_kernels`). Works on copies: the
    networks' weights, gradients and the global RNG are untouched."""
    setups = [s for s in SETUPS if s != "bf16" or bf16_kernels(device)]
    return _best_times({s: _copies(networks, s) for s in setups}, {s: s == "bf16" for s in setups}, device, reps)


def probe_attention(networks: list[tuple[nn.Module, tuple]], setup: str, device: torch.device,
                    reps: int = 5) -> dict[str, float]:
    """In `setup`, the networks that have attention blocks with each kernel: {"math": s, "sdpa": s}
    ({} when none has). Copies only, as `probe`."""
    attentive = [(n, i) for n, i in networks if any(hasattr(m, "use_flash_attention") for m in n.modules())]
    if not attentive:
        return {}
    return _best_times({k: _copies(attentive, setup, k) for k in ATTENTION_KINDS}, dict.fromkeys(ATTENTION_KINDS,
                       setup == "bf16"), device, reps)


def probe_forward(networks: list[tuple[nn.Module, tuple]], setup: str, attention: str | None, device: torch.device,
                  reps: int = 5) -> dict[str, float]:
    """In `setup` and `attention`, every network on all its rows at once ("one") against two forwards
    of half as many ("separate": a coupled step's current and replay batches are the same size)."""
    halves = [(n, tuple(t[:len(t) // 2] for t in i)) for n, i in networks]
    separate = [pair for pair in _copies(halves, setup, attention) for _ in range(2)]
    return _best_times({"one": _copies(networks, setup, attention), "separate": separate},
                       {"one": setup == "bf16", "separate": setup == "bf16"}, device, reps)


def choose(probe_s: dict[str, float]) -> str:
    """The setup to train with: plain fp32 unless another is faster by its MARGIN (then the fastest)."""
    base = probe_s["fp32"]
    faster = {s: base / t for s, t in probe_s.items() if s != "fp32" and base / t >= MARGIN[s]}
    return max(faster, key=faster.get) if faster else "fp32"


def choose_kernels(probe_s: dict[str, float]) -> tuple[str | None, bool]:
    """(attention kernel, one forward) from the timings of `probe_attention` and `probe_forward`: each stays at its default
    (einsum "math", one forward) unless the other is faster by its MARGIN; None when not timed."""
    attention = None
    if "math" in probe_s:
        attention = "sdpa" if probe_s["math"] / probe_s["sdpa"] >= MARGIN["sdpa"] else "math"
    one = "one" not in probe_s or probe_s["one"] / probe_s["separate"] < MARGIN["separate"]
    return attention, one


def resolve(setting: bool | str, networks: list[tuple[nn.Module, tuple]], device: torch.device,
            one_forward_step: bool = False) -> Numerics:
    """The numerics a new run trains with under train.amp_bf16 = `setting`; `one_forward_step`: the
    method's step batches current + replay rows (then one forward is timed against two)."""
    if setting != "auto":
        return fixed(bool(setting))
    if not networks or (device.type == "cuda" and not bf16_kernels(device)):
        return Numerics("fp32", setting)
    probe_s = probe(networks, device)
    setup = choose(probe_s)
    if device.type != "cpu":
        return Numerics(setup, setting, probe_s)
    kernels = resolve_kernels(networks, setup, device, one_forward_step)
    return Numerics(setup, setting, {**probe_s, **kernels.probe_s}, kernels.attention, kernels.one_forward)


def resolve_kernels(networks: list[tuple[nn.Module, tuple]], setup: str, device: torch.device,
                    one_forward_step: bool) -> Numerics:
    """The attention kernel, then (with `one_forward_step`) the forward batching under it, in `setup`."""
    kernels = probe_attention(networks, setup, device)
    if one_forward_step:
        kernels.update(probe_forward(networks, setup, choose_kernels(kernels)[0], device))
    return Numerics(setup, "auto", kernels, *choose_kernels(kernels))
