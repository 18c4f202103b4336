"""Numerics chosen per run (train.amp_bf16 = "auto") and the attention kernel chosen per device."""
import json
import time

import numpy as np
import pytest
import torch

from c2gr_core.config import DenoiserConfig, SegmentorConfig, validate
from c2gr_core.experiment.runner import run_stream
from c2gr_core.models.attention import set_attention
from c2gr_core.models.denoiser import Denoiser
from c2gr_core.models.segmentor import PromptedUNet
from c2gr_core.training import numerics
from tiny_runs import small_cfg

STREAM = ["synthetic:fundus-a", "synthetic:mms-a"]


# ------------------------------------------------------------------ choosing a setup
@pytest.mark.parametrize("times, chosen", [
    # base / t for each: cl 1.05 (< 1.10), bf16 1.18 (< 1.25): nothing clearly faster
    ({"fp32": 1.0, "fp32_channels_last": 0.95, "bf16": 0.85}, "fp32"),
    # cl 1.25 (>= 1.10), bf16 1.18 (< 1.25)
    ({"fp32": 1.0, "fp32_channels_last": 0.80, "bf16": 0.85}, "fp32_channels_last"),
    # cl 1.25 and bf16 2.0 both qualify: the faster
    ({"fp32": 1.0, "fp32_channels_last": 0.80, "bf16": 0.50}, "bf16"),
    # bf16 exactly at its margin: 1 / 0.8 = 1.25
    ({"fp32": 1.0, "fp32_channels_last": 2.0, "bf16": 0.80}, "bf16"),
])
def test_choose_prefers_plain_fp32_unless_clearly_beaten(times, chosen):
    assert numerics.choose(times) == chosen


def test_probe_times_every_setup_and_leaves_weights_grads_and_rng_alone(monkeypatch):
    monkeypatch.setattr(numerics, "bf16_kernels", lambda device: True)   # the bf16 copy too, on any CPU
    net = Denoiser(DenoiserConfig(), mask_channels=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.get_rng_state()
    t = numerics.probe([(net, net.example_inputs(2, 16))], torch.device("cpu"), reps=1)
    assert set(t) == set(numerics.SETUPS) and all(v > 0 for v in t.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), state)


class _Paced(torch.nn.Module):
    """Sleeps a set time per forward by setup (read from autocast and the weight layout). Counts the
    calls per setup on the class, since the probe runs deep copies."""

    SLEEP = {"fp32": 0.01, "fp32_channels_last": 0.015, "bf16": 0.2}
    calls: dict = {}

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)   # 3x3: channels-last weights differ from contiguous

    def forward(self, x):
        w = self.conv.weight
        setup = ("bf16" if torch.is_autocast_enabled("cpu") else
                 "fp32_channels_last" if not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
                 else "fp32")
        _Paced.calls[setup] = _Paced.calls.get(setup, 0) + 1
        time.sleep(self.SLEEP[setup])
        return self.conv(x)


def test_probe_stops_timing_a_setup_far_slower_than_fp32(monkeypatch):
    monkeypatch.setattr(_Paced, "calls", {})
    monkeypatch.setattr(numerics, "bf16_kernels", lambda device: True)   # a CPU with AVX-512, say, whose bf16 loses
    t = numerics.probe([(_Paced(), (torch.zeros(1, 2, 4, 4),))], torch.device("cpu"), reps=5)
    # warm-up + 5 reps for fp32 and for channels-last (1.5x: it might still win); bf16 (20x) is
    # timed once after its warm-up and then left out
    assert _Paced.calls == {"fp32": 6, "fp32_channels_last": 6, "bf16": 2}
    assert t["bf16"] >= 0.2 and numerics.choose(t) == "fp32"


def test_probe_leaves_bf16_out_where_the_cpu_has_no_bf16_kernels(monkeypatch):
    monkeypatch.setattr(_Paced, "calls", {})
    monkeypatch.setattr(numerics, "bf16_kernels", lambda device: False)
    t = numerics.probe([(_Paced(), (torch.zeros(1, 2, 4, 4),))], torch.device("cpu"), reps=2)
    assert _Paced.calls == {"fp32": 3, "fp32_channels_last": 3} and set(t) == {"fp32", "fp32_channels_last"}
    assert numerics.choose(t) == "fp32"


def _cpu_flags() -> set[str] | None:
    try:
        line = next(l for l in open("/proc/cpuinfo") if l.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return set(line.split(":", 1)[1].split())


def test_bf16_kernels_match_the_cpu_flags():
    """oneDNN's bf16 on x86 needs AVX-512 (F/BW/VL/DQ: "avx512_core") or AVX2 with AVX-VNNI and
    AVX-NE-CONVERT; the flags are read from /proc/cpuinfo, independently of torch. Linux does not list
    AVX-NE-CONVERT there, so a CPU with AVX-VNNI is left out; only the two clear cases are asserted."""
    flags = _cpu_flags()
    if flags is None or "avx2" not in flags:
        pytest.skip("needs an x86 Linux CPU (/proc/cpuinfo with its flags)")
    avx512_core = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    if avx512_core:
        assert numerics.bf16_kernels(torch.device("cpu")) is True
    elif not flags & {"avx512f", "avx_vnni", "amx_bf16"}:
        assert numerics.bf16_kernels(torch.device("cpu")) is False


def test_bf16_is_timed_wherever_its_kernels_cannot_be_told(monkeypatch):
    assert numerics.bf16_kernels(torch.device("mps")) is True   # not a CPU: oneDNN's check says nothing about it
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert numerics.bf16_kernels(torch.device("cpu")) is True   # a torch without oneDNN


def test_fixed_settings_are_not_measured(monkeypatch):
    monkeypatch.setattr(numerics, "probe", lambda *a, **k: pytest.fail("amp_bf16 true/false must not be measured"))
    assert numerics.resolve(True, [], torch.device("cpu")).setup == "bf16"
    assert numerics.resolve(False, [], torch.device("cpu")).setup == "fp32"


def test_amp_bf16_takes_true_false_or_auto_only():
    cfg = small_cfg()
    cfg.train.amp_bf16 = "yes"
    with pytest.raises(ValueError, match="train.amp_bf16"):
        validate(cfg)


# ------------------------------------------------------------------ a run with "auto"
def _autocast_seen(monkeypatch) -> list[bool]:
    """Records, for every denoiser forward during training, whether bf16 autocast was on."""
    seen = []
    original = Denoiser.forward

    def forward(self, xy, timesteps, prompt):
        if torch.is_grad_enabled():
            seen.append(torch.is_autocast_enabled("cpu"))
        return original(self, xy, timesteps, prompt)

    monkeypatch.setattr(Denoiser, "forward", forward)
    return seen


def _fake_kernels(monkeypatch, attention: dict, forward: dict) -> None:
    monkeypatch.setattr(numerics, "probe_attention", lambda *a, **k: dict(attention))
    monkeypatch.setattr(numerics, "probe_forward", lambda *a, **k: dict(forward))


def test_auto_run_trains_with_the_measured_setup_and_records_it(tmp_path, monkeypatch):
    fake = {"fp32": 1.0, "fp32_channels_last": 0.9, "bf16": 0.5}   # bf16 clearly faster
    monkeypatch.setattr(numerics, "probe", lambda *a, **k: dict(fake))
    _fake_kernels(monkeypatch, {"math": 1.0, "sdpa": 0.95}, {"one": 1.0, "separate": 0.95})   # neither clearly
    seen = _autocast_seen(monkeypatch)
    cfg = small_cfg()
    cfg.train.amp_bf16 = "auto"
    run_stream(STREAM[:1], "c2gr", cfg, tmp_path / "run", progress=False)
    rec = json.loads((tmp_path / "run" / "numerics.json").read_text())
    assert rec == {"setup": "bf16", "setting": "auto", "attention": "math", "one_forward": True,
                   "probe_s": {**fake, "math": 1.0, "sdpa": 0.95, "one": 1.0, "separate": 0.95}}
    assert seen and all(seen)


def test_auto_run_resumes_with_the_recorded_setup_bit_equal(tmp_path, monkeypatch):
    """The resumed rounds must not re-measure (a noisy machine could choose otherwise); the matrix of
    an interrupted and resumed run equals the uninterrupted one exactly (same machine, same setup)."""
    cfg = small_cfg()
    cfg.train.amp_bf16 = "auto"
    monkeypatch.setattr(numerics, "probe", lambda *a, **k: {"fp32": 1.0, "fp32_channels_last": 0.8, "bf16": 0.9})
    _fake_kernels(monkeypatch, {"math": 1.0, "sdpa": 0.5}, {"one": 1.0, "separate": 0.5})   # both non-defaults
    full = run_stream(STREAM, "c2gr", cfg, tmp_path / "full", progress=False).matrix
    run_stream(STREAM, "c2gr", cfg, tmp_path / "cut", progress=False, max_rounds=1)
    rec = json.loads((tmp_path / "cut" / "numerics.json").read_text())
    assert (rec["setup"], rec["attention"], rec["one_forward"]) == ("fp32_channels_last", "sdpa", False)
    for name in ("probe", "probe_attention", "probe_forward"):
        monkeypatch.setattr(numerics, name, lambda *a, **k: pytest.fail("a resumed run must not re-measure"))
    resumed = run_stream(STREAM, "c2gr", cfg, tmp_path / "cut", progress=False, resume=True).matrix
    np.testing.assert_array_equal(np.nan_to_num(resumed, nan=-1), np.nan_to_num(full, nan=-1))


def test_channels_last_setup_puts_conv_weights_in_channels_last(tmp_path, monkeypatch):
    from c2gr_core.experiment.runs import load_method

    monkeypatch.setattr(numerics, "probe", lambda *a, **k: {"fp32": 1.0, "fp32_channels_last": 0.5, "bf16": 0.9})
    cfg = small_cfg()
    cfg.train.amp_bf16 = "auto"
    run_stream(STREAM[:1], "c2gr", cfg, tmp_path / "run", progress=False)
    m = load_method(tmp_path / "run")
    assert m.ctx.numerics.setup == "fp32_channels_last"
    convs = [mod.weight for mod in m.model.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_auto_run_without_its_record_is_refused_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(numerics, "probe", lambda *a, **k: {"fp32": 1.0, "fp32_channels_last": 1.0, "bf16": 1.0})
    cfg = small_cfg()
    cfg.train.amp_bf16 = "auto"
    run_stream(STREAM, "finetune", cfg, tmp_path / "cut", progress=False, max_rounds=1)
    (tmp_path / "cut" / "numerics.json").unlink()
    with pytest.raises(FileNotFoundError, match="numerics.json"):
        run_stream(STREAM, "finetune", cfg, tmp_path / "cut", progress=False, resume=True)


# ------------------------------------------------------------------ attention kernel by device
def _attention_flags(net) -> set[bool]:
    return {m.use_flash_attention for m in net.modules() if hasattr(m, "use_flash_attention")}


def test_networks_use_the_math_kernel_on_cpu_unless_told_otherwise():
    den = Denoiser(DenoiserConfig(), mask_channels=3)
    seg = PromptedUNet(SegmentorConfig(), out_channels=3)
    den(*den.example_inputs(2, 16))
    seg(*seg.example_inputs(2, 16))
    assert _attention_flags(den) == {False} and _attention_flags(seg) == {False}
    fixed = Denoiser(DenoiserConfig(), mask_channels=3, fast_attention=True)
    fixed(*fixed.example_inputs(2, 16))
    assert _attention_flags(fixed) == {True}


@pytest.mark.parametrize("make", [lambda: Denoiser(DenoiserConfig(), mask_channels=3),
                                  lambda: PromptedUNet(SegmentorConfig(), out_channels=3)])
def test_both_attention_kernels_compute_the_same_network(make):
    torch.manual_seed(0)
    net = make().double()
    inputs = [t.double() if t.is_floating_point() else t for t in net.example_inputs(2, 16)]
    net.attention = "sdpa"
    a = net(*inputs)
    net.attention = "math"
    b = net(*inputs)
    assert _attention_flags(net) == {False}
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)   # float64: only summation order differs


@pytest.mark.parametrize("name", sorted(__import__("c2gr_core.methods", fromlist=["x"]).available_methods()))
def test_every_method_offers_the_networks_auto_times_without_moving_the_rng(name, tmp_path):
    """With nothing to time, "auto" would choose from noise: every method must name a network, at the
    batch a training step gives it (IndividualTrain builds its models only in its rounds)."""
    from c2gr_core.experiment.runs import method_context
    from c2gr_core.experiment.tasks import resolve_entries
    from c2gr_core.methods import get_method
    from data_catalog.catalog import entry_card

    cfg = small_cfg()
    cards = [entry_card(e) for e in resolve_entries(STREAM)]
    m = get_method(name)(method_context(cfg, cards, work_dir=tmp_path / "work"))
    state = torch.get_rng_state()
    nets = m.probe_networks()
    assert torch.equal(torch.get_rng_state(), state)
    assert nets and all(sum(p.numel() for p in net.parameters()) > 0 for net, _ in nets)
    for net, inputs in nets:
        assert inputs[0].shape[0] == m.probe_batch(net) >= 2 * cfg.train.batch_size
        net(*inputs)   # the inputs fit the network


# ------------------------------------------------------------------ attention kernel and forward batching per run
@pytest.mark.parametrize("times, chosen", [
    ({}, (None, True)),                                                     # nothing timed: the defaults
    ({"math": 1.0, "sdpa": 0.95, "one": 1.0, "separate": 0.95}, ("math", True)),   # 1.05x: not clearly
    ({"math": 1.0, "sdpa": 0.90}, ("sdpa", True)),                          # 1.11x >= 1.10
    ({"math": 0.5, "sdpa": 1.0, "one": 1.0, "separate": 0.80}, ("math", False)),   # 1.25x
    ({"one": 1.0, "separate": 2.0}, (None, True)),
])
def test_choose_kernels_keeps_the_defaults_unless_clearly_beaten(times, chosen):
    assert numerics.choose_kernels(times) == chosen


class _Kernels(torch.nn.Module):
    """Sleeps by attention kernel (its child's flag, as MONAI's blocks carry it) and by rows: a fixed
    cost per call plus a cost per row, so the number and size of the forwards decide. Records calls."""

    calls: list = []

    def __init__(self, per_call: float, per_row: float, sdpa_factor: float = 1.0):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.block = torch.nn.Module()
        self.block.use_flash_attention = False
        self.per_call, self.per_row, self.sdpa_factor = per_call, per_row, sdpa_factor

    def forward(self, x):
        sdpa = self.block.use_flash_attention
        _Kernels.calls.append(("sdpa" if sdpa else "math", len(x)))
        time.sleep((self.per_call + self.per_row * len(x)) * (self.sdpa_factor if sdpa else 1.0))
        return self.lin(x)


def test_probe_attention_times_each_kernel_on_copies(monkeypatch):
    monkeypatch.setattr(_Kernels, "calls", [])
    net = _Kernels(0.01, 0.0, sdpa_factor=3.0)
    plain = torch.nn.Linear(2, 2)   # no attention block: not timed
    t = numerics.probe_attention([(net, (torch.zeros(4, 2),)), (plain, (torch.zeros(4, 2),))],
                                 "fp32", torch.device("cpu"), reps=2)
    assert set(t) == {"math", "sdpa"} and t["sdpa"] >= 3 * 0.01 > t["math"] >= 0.01
    assert {k for k, _ in _Kernels.calls} == {"math", "sdpa"} and net.block.use_flash_attention is False
    assert numerics.choose_kernels(t) == ("math", True)
    assert numerics.probe_attention([(plain, (torch.zeros(4, 2),))], "fp32", torch.device("cpu")) == {}


@pytest.mark.parametrize("per_call, per_row, one", [(0.02, 0.001, True),    # overhead per call: one forward wins
                                                    (0.0, 0.004, None)])    # cost by rows only: a tie
def test_probe_forward_runs_all_rows_once_against_two_halves(monkeypatch, per_call, per_row, one):
    monkeypatch.setattr(_Kernels, "calls", [])
    t = numerics.probe_forward([(_Kernels(per_call, per_row), (torch.zeros(8, 2),))], "fp32", None,
                               torch.device("cpu"), reps=2)
    assert sorted({n for _, n in _Kernels.calls}) == [4, 8]
    assert [n for _, n in _Kernels.calls].count(4) == 2 * [n for _, n in _Kernels.calls].count(8)
    if one is not None:
        assert numerics.choose_kernels(t)[1] is one and t["separate"] >= 2 * per_call
    else:   # 8 rows at once or 4 + 4 take the same time, far from the 1.10 margin
        assert 0.8 < t["one"] / t["separate"] < 1.25


def test_kernel_probes_on_real_networks_leave_them_alone():
    net = Denoiser(DenoiserConfig(), mask_channels=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = torch.get_rng_state()
    nets = [(net, net.example_inputs(4, 16))]
    t = {**numerics.probe_attention(nets, "fp32", torch.device("cpu"), reps=1),
         **numerics.probe_forward(nets, "fp32", "sdpa", torch.device("cpu"), reps=1)}
    assert set(t) == {"math", "sdpa", "one", "separate"} and all(v > 0 for v in t.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.attention is None
    assert torch.equal(torch.get_rng_state(), state)


def test_auto_run_trains_with_the_chosen_kernels_and_keeps_them_when_loaded(tmp_path, monkeypatch):
    from c2gr_core.experiment.runs import load_method
    from c2gr_core.methods import c2gr as c2gr_module

    monkeypatch.setattr(numerics, "probe", lambda *a, **k: {"fp32": 1.0, "fp32_channels_last": 1.0, "bf16": 1.0})
    _fake_kernels(monkeypatch, {"math": 1.0, "sdpa": 0.5}, {"one": 1.0, "separate": 0.5})
    seen = []
    original = c2gr_module.coupled_loss

    def spy(model, *a, **k):
        seen.append((k["one_forward"], frozenset(_attention_flags(model.segmentor) | _attention_flags(model.denoiser))))
        return original(model, *a, **k)

    monkeypatch.setattr(c2gr_module, "coupled_loss", spy)
    cfg = small_cfg()
    cfg.train.amp_bf16 = "auto"
    run_stream(STREAM, "c2gr", cfg, tmp_path / "run", progress=False)
    assert seen and set(seen) == {(False, frozenset({True}))}
    m = load_method(tmp_path / "run")
    assert (m.ctx.numerics.attention, m.ctx.numerics.one_forward) == ("sdpa", False)
    assert _attention_flags(m.model.denoiser) == {True} and m.model.denoiser.attention == "sdpa"


def test_a_method_without_a_batched_step_does_not_time_forwards(tmp_path, monkeypatch):
    monkeypatch.setattr(numerics, "probe", lambda *a, **k: {"fp32": 1.0, "fp32_channels_last": 1.0, "bf16": 1.0})
    _fake_kernels(monkeypatch, {"math": 1.0, "sdpa": 1.0}, {})
    monkeypatch.setattr(numerics, "probe_forward", lambda *a, **k: pytest.fail("finetune has no batched step"))
    cfg = small_cfg()
    cfg.train.amp_bf16 = "auto"
    run_stream(STREAM[:1], "finetune", cfg, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "numerics.json").read_text())["one_forward"] is True


def test_records_without_kernels_read_as_the_defaults_and_bad_ones_are_refused():
    old = numerics.Numerics.from_dict({"setup": "fp32", "setting": "auto", "probe_s": {}})
    assert (old.attention, old.one_forward) == (None, True)
    with pytest.raises(ValueError, match="attention"):
        numerics.Numerics.from_dict({"setup": "fp32", "attention": "flash"})
    with pytest.raises(ValueError, match="one_forward"):
        numerics.Numerics.from_dict({"setup": "fp32", "one_forward": "yes"})
