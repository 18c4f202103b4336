"""Every config field changes what the code does, or is refused with an error naming it.

`PROBES` maps every "section.key" of `ExperimentConfig` (and its top-level `preset`) to a probe: an
alternative value and a small function that observes the behaviour the field controls, through the
code the runner uses (`get_method(name)(ctx)` on the context `run_stream` builds, the method's own
scheduler, Trainer and ReplayStore, `load_stream_task`, `run_stream` itself). Three kinds:

- `Changes`: the default and the alternative are both accepted (`validate`, the method's
  `resolve_config`) and every part of the observation differs between them;
- `Refused`: the runner accepts the default and refuses the alternative with a ValueError naming
  the field, before it writes anything;
- `Forced`: a setting a method always trains with (`Method.forced_settings`): the conflicting value
  is refused for that method with an error naming the key and the method that trains with it, and
  that method does train with it, differently from the default.

`test_every_config_field_has_a_probe` fails when a field is added without a probe here. The base
config is the tiny preset shrunk to 16 x 16 images, 8 training pairs, batches of 4, one epoch and
a 2-step reverse chain, with the hash text encoder wherever the encoder is not the point.

The end of the file checks the same refusals on the paths that build a method without the runner
(`method_context`, `learnable_params`).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from c2gr_core.analysis import downstream
from c2gr_core.training.access import TaskAccess
from c2gr_core.config import ExperimentConfig, preset, validate
from c2gr_core.methods.coupled import PairBatch, coupled_loss
from c2gr_core.methods import get_method
from c2gr_core.analysis.quality import learnable_params
from c2gr_core.experiment.runs import method_context
from c2gr_core.experiment.runner import load_stream_task, resolve_entries, run_stream
from data_catalog.catalog import DATA_ROOT_ENV, entry_card, get_card
from data_catalog.prepared import PREPARED_SIZE, write_prepared

STREAM = ["synthetic:fundus-a", "synthetic:mms-a"]  # C_max = 3; two tasks, so round 1 replays task 0


def base_cfg() -> ExperimentConfig:
    cfg = preset("tiny")
    cfg.prompt.encoder = "hash"
    cfg.data.image_size, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 16, 8, 2, 2
    cfg.train.epochs, cfg.train.batch_size, cfg.train.replay_per_task = 1, 4, 2
    cfg.diffusion.sample_steps = 2
    return cfg


def get_value(cfg: ExperimentConfig, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def set_value(cfg: ExperimentConfig, key: str, value: Any) -> None:
    *sections, name = key.split(".")
    obj = cfg
    for part in sections:
        obj = getattr(obj, part)
    setattr(obj, name, value)


@pytest.fixture(autouse=True)
def _no_data_root_from_env(monkeypatch):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)  # data.data_root alone says where real tasks are


# ------------------------------------------------------------------------------ the code paths
class Stop(Exception):
    """Raised by a recording callback once it has seen what it needs (saves the rest of a fit)."""


def build(cfg: ExperimentConfig, tmp: Path, method: str = "c2gr"):
    """The method as `run_stream` builds it (resolved and validated config, its StreamContext) and
    the round-0 data access. Weights are seeded, so two configs differ only by what they set."""
    cls = get_method(method)
    cfg = validate(cls.resolve_config(copy.deepcopy(cfg)))
    entries = resolve_entries(STREAM)
    cards = [entry_card(e) for e in entries]
    ctx = method_context(cfg, cards, work_dir=tmp / "work")
    torch.manual_seed(0)
    m = cls(ctx)
    access = TaskAccess(cards, lambda j: load_stream_task(entries, j, cfg))
    access.begin_round(0)
    return m, access


def prepare_run(cfg: ExperimentConfig, tmp: Path, method: str = "c2gr") -> Path:
    """`run_stream` up to its first round: config resolution and validation, data checks, text
    encoding, the method built and config.json written (max_rounds=0 trains nothing)."""
    out = tmp / "run"
    run_stream(STREAM, method, cfg, out, progress=False, max_rounds=0)
    return out


def outcome(fn: Callable[[], Any]) -> str:
    """What a call ends in: its result (a string), 'ok', or the exception as 'Type: message'."""
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the probe compares whatever happened
        return f"{type(e).__name__}: {e}"
    return result if isinstance(result, str) else "ok"


def structure(module: torch.nn.Module) -> list:
    """Every submodule's type, parameter shapes and head/group/width attributes."""
    out = []
    for name, mod in module.named_modules():
        attrs = tuple((a, getattr(mod, a)) for a in ("num_heads", "head_dim", "num_groups", "in_features",
                                                      "out_features", "n_tokens", "node_dim", "q_dim")
                      if isinstance(getattr(mod, a, None), int))
        params = tuple((n, tuple(p.shape)) for n, p in mod.named_parameters(recurse=False))
        out.append((name, type(mod).__name__, attrs, params))
    return out


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def record_inputs(module: torch.nn.Module, what: Callable[[tuple], Any]) -> list:
    seen: list = []
    module.register_forward_pre_hook(lambda mod, args: seen.append(what(args)))
    return seen


def fit_one_step(m, access) -> None:
    """Round 0's fit, stopped after its first optimiser step."""
    def stop(event, trainer):
        if event == "on_step_end":
            raise Stop

    with pytest.raises(Stop):
        m.fit(0, access, None, callbacks=[stop])


def replay_round_1(cfg: ExperimentConfig, tmp: Path, train_round_0: bool = False):
    """Round 1's replay of task 0 (`Method.replay`, the reverse chain of `diffusion.sample_pairs`):
    the method, its ReplayStore and the timesteps the sampling denoiser was called at."""
    m, access = build(cfg, tmp)
    if train_round_0:
        torch.manual_seed(1)
        m.fit(0, access, None)
    steps = record_inputs(m.replay_denoiser, lambda args: int(args[1][0]))
    store = m.replay(1)
    return m, access, store, steps


# ------------------------------------------------------------------------------- observations
def segmentor_modules(cfg, tmp):
    m, _ = build(cfg, tmp)
    return {"segmentor modules": structure(m.model.segmentor)}


def denoiser_modules(cfg, tmp):
    m, _ = build(cfg, tmp)
    return {"denoiser modules": structure(m.model.denoiser)}


def prompt_modules(cfg, tmp):
    m, _ = build(cfg, tmp)
    return {"prompt graph modules": structure(m.model.prompt)}


def prompt_width(cfg, tmp):
    m, _ = build(cfg, tmp)
    return {"zeta shape": tuple(m.model.prompts(m.ctx.emb, 1)[0].shape),
            "segmentor prompt input": m.model.segmentor.prompt_adapter.in_features,
            "denoiser prompt input": m.model.denoiser.prompt_adapter.in_features}


def prompt_tokens(cfg, tmp):
    m, _ = build(cfg, tmp)
    z_seg, z_gen = m.model.prompts(m.ctx.emb, 1)
    tokens = m.model.segmentor.prompt_adapter(z_seg).shape[1] // m.model.segmentor.cross_attention_dim
    return {"segmentor cross-attention tokens": tokens,
            "denoiser context shape": tuple(m.model.denoiser.context(z_gen).shape)}


def zeta(cfg, tmp):
    m, _ = build(cfg, tmp)
    return {"zeta of both tasks": m.model.prompts(m.ctx.emb, 1)[0].detach()}


def training_betas(cfg, tmp):
    m, _ = build(cfg, tmp)
    return {"betas of the method's scheduler": m.scheduler.betas.clone()}


def replayed_pairs(cfg, tmp):
    _, _, store, _ = replay_round_1(cfg, tmp)
    return {"replayed images of task 0": np.array(store.get(0)[0])}


def reverse_chain_steps(cfg, tmp):
    _, _, store, steps = replay_round_1(cfg, tmp)
    return {"timesteps the reverse chain visits": steps}


def replay_pairs_stored(cfg, tmp):
    _, _, store, _ = replay_round_1(cfg, tmp)
    return {"pairs in the ReplayStore": len(store)}


def diffusion_loss_of_zero_denoiser(cfg, tmp):
    """The generator term of `coupled_loss` with the denoiser's output forced to zero: the weighted
    mean square of the loss target, so it moves with what is regressed and how it is weighted."""
    m, access = build(cfg, tmp)
    m.model.denoiser.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    split = access.train(0)
    batch = PairBatch(torch.from_numpy(np.asarray(split.images[:4])),
                      torch.from_numpy(np.asarray(split.masks[:4])).long(), torch.zeros(4, dtype=torch.long))
    torch.manual_seed(1)
    out = coupled_loss(m.model, m.ctx.emb, 0, batch, None, m.scheduler, m.ctx.n_classes, train_segmentor=False)
    return {"diffusion loss against a zero output": out["gen_cur"].detach()}


def replay_weights(cfg, tmp):
    m, access = build(cfg, tmp)
    torch.manual_seed(1)
    m.fit(0, access, None)
    return {"weights that sample the replay": flat(m.replay_denoiser),
            "replay samples from the trained weights": m.replay_denoiser is m.denoiser_trained}


def loss_on_replay(cfg, tmp):
    m, access, store, _ = replay_round_1(cfg, tmp, train_round_0=True)
    access.begin_round(1)
    torch.manual_seed(2)
    hist = m.fit(1, access, store)
    return {"generator loss on replayed pairs": hist["gen_rep"]}


def task_embeddings(cfg, tmp):
    cards = [entry_card(e) for e in resolve_entries(STREAM)]
    return {"task embeddings": method_context(cfg, cards, work_dir=tmp / "work").emb.e}


def run_start(cfg, tmp):
    return {"run_stream outcome": outcome(lambda: prepare_run(cfg, tmp))}


def optimiser_steps(cfg, tmp):
    """Steps of one round: the segmentor's (coupled phase) and the generator's (both phases)."""
    m, access = build(cfg, tmp)
    hist = m.fit(0, access, None)
    return {"segmentor optimiser steps": len(hist["seg_cur"]), "generator optimiser steps": len(hist["gen_cur"])}


def segmentor_batches(cfg, tmp):
    m, access = build(cfg, tmp)
    sizes = record_inputs(m.model.segmentor, lambda args: args[0].shape[0])
    m.fit(0, access, None)
    return {"batch sizes the segmentor sees": sizes}


def learning_rates(cfg, tmp):
    """The lr of the segmentor's and the generator's param group in the optimiser fit builds."""
    m, access = build(cfg, tmp)
    seg = {id(p) for p in m.model.segmentor.parameters()}
    gen = {id(p) for p in m.model.denoiser.parameters()}
    lrs = {}

    def grab(event, trainer):
        if event == "on_train_start":
            for g in trainer.optimizer.param_groups:
                ids = {id(p) for p in g["params"]}
                lrs.update({"segmentor": g["lr"]} if ids & seg else {})
                lrs.update({"generator": g["lr"]} if ids & gen else {})
            raise Stop

    with pytest.raises(Stop):
        m.fit(0, access, None, callbacks=[grab])
    return lrs


def autocast_in_forward(cfg, tmp):
    m, access = build(cfg, tmp)
    seg = record_inputs(m.model.segmentor, lambda args: torch.is_autocast_enabled("cpu"))
    den = record_inputs(m.model.denoiser, lambda args: torch.is_autocast_enabled("cpu"))
    fit_one_step(m, access)
    return {"bf16 autocast in the segmentor": seg, "bf16 autocast in the denoiser": den}


def seeded_draws(cfg, tmp):
    """The synthetic task a run draws and, on the same data, the order training visits it in."""
    entries = resolve_entries(STREAM)
    fixed = base_cfg()  # the data of seed 0 for the batch order, whatever cfg's seed
    m, _ = build(cfg, tmp)
    access = TaskAccess([entry_card(e) for e in entries], lambda j: load_stream_task(entries, j, fixed))
    access.begin_round(0)
    first = record_inputs(m.model.segmentor, lambda args: args[0].detach().clone())
    fit_one_step(m, access)
    return {"synthetic task": load_stream_task(entries, 0, cfg).train.images.copy(),
            "first training batch": first[0]}


def split_sizes(cfg, tmp):
    data = load_stream_task(resolve_entries(STREAM), 0, cfg)
    return {f"{name} pairs": len(data.split(name)) for name in ("train", "val", "test")}


def image_sizes(cfg, tmp):
    data = load_stream_task(resolve_entries(STREAM), 0, cfg)
    _, _, store, _ = replay_round_1(cfg, tmp)
    return {"task images": data.train.images.shape[-2:], "replayed images": store.get(0)[0].shape[-2:]}


def denoiser_batches(cfg, tmp, method="c2gr"):
    """Pairs per denoiser call in one training step (BJD stacks its three inputs into one call)."""
    m, access = build(cfg, tmp, method)
    sizes = record_inputs(m.model.denoiser, lambda args: args[0].shape[0])
    fit_one_step(m, access)
    return {"denoiser batch per step": sizes}


def prompt_sharing(cfg, tmp, method="c2gr"):
    m, access = build(cfg, tmp, method)
    z_seg, z_gen = m.model.prompts(m.ctx.emb, 1)
    hist = m.fit(0, access, None)
    assert all(np.isfinite(v).all() for v in hist.values())
    return {"prompt modules": sorted(n for n in ("prompt", "seg_prompt", "gen_prompt") if hasattr(m.model, n)),
            "one zeta for both networks": z_seg is z_gen}


def adapt_defaults(cfg, tmp):
    return {"epochs, lr of downstream.adapt": downstream._defaults(cfg, None, None)}


def real_task(cfg, tmp):
    """Task fundus-a (the catalog task, not its twin) as every round reads it."""
    def load():
        images = load_stream_task(resolve_entries(["fundus-a"]), 0, cfg).train.images
        return f"loaded, mean {float(np.mean(images)):.3f}"
    return {"fundus-a": outcome(load)}


# ---------------------------------------------------------------------------------- the probes
@dataclass
class AtTmp:
    """An alternative value that lives under the test's tmp_path (a file or a folder)."""
    fn: Callable[[Path], Any]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and bool(torch.equal(a, b)))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _short(v) -> str:
    text = repr(v.shape if hasattr(v, "shape") and not isinstance(v, tuple) else v)
    return text if len(text) < 200 else text[:200] + "..."


@dataclass
class Probe:
    alt: Any
    setup: Callable[[ExperimentConfig, Path], None] | None = None  # base config of this probe (shared by both)
    xfail: str | None = None

    def configs(self, key: str, tmp: Path) -> tuple[ExperimentConfig, ExperimentConfig, Any, Any]:
        base = base_cfg()
        if self.setup is not None:
            self.setup(base, tmp)
        alt = self.alt.fn(tmp) if isinstance(self.alt, AtTmp) else self.alt
        default = get_value(base, key)
        assert not _same(alt, default), f"{key}: the probe's alternative equals the value it is compared with"
        other = copy.deepcopy(base)
        set_value(other, key, alt)
        return base, other, default, alt


@dataclass
class Changes(Probe):
    """Both values accepted; every part of `observe`'s result differs between them, except the parts
    named in `keep`, which the field must leave alone (seg_lr moves the segmentor's lr only)."""
    observe: Callable[[ExperimentConfig, Path], dict] = None
    keep: tuple[str, ...] = ()
    expect: Callable[[dict, dict, Any, Path], None] | None = None  # further checks on the observations

    def check(self, key: str, tmp: Path) -> None:
        base, other, default, alt = self.configs(key, tmp)
        validate(copy.deepcopy(other))  # a legal value, not one some later error happens to reject
        seen_default = self.observe(base, tmp / "default")
        seen_alt = self.observe(other, tmp / "alt")
        assert seen_default.keys() == seen_alt.keys() and set(seen_default) > set(self.keep)
        same = [part for part in seen_default if part not in self.keep and _same(seen_default[part], seen_alt[part])]
        assert not same, (f"{key}: {default!r} -> {alt!r} left {same} unchanged "
                          f"({', '.join(_short(seen_default[p]) for p in same)}): the field is ignored there")
        moved = [part for part in self.keep if not _same(seen_default[part], seen_alt[part])]
        assert not moved, f"{key}: {default!r} -> {alt!r} also changed {moved}, which it should leave alone"
        if self.expect is not None:
            self.expect(seen_default, seen_alt, alt, tmp)


@dataclass
class Refused(Probe):
    """The runner trains with the default and refuses the alternative before writing anything, with a
    ValueError whose message names the field as "section.key"."""
    method: str = "c2gr"

    def check(self, key: str, tmp: Path) -> None:
        base, other, default, alt = self.configs(key, tmp)
        prepare_run(base, tmp / "default", self.method)
        with pytest.raises(ValueError, match=re.escape(key)):
            prepare_run(other, tmp / "alt", self.method)
        assert not (tmp / "alt" / "run").exists(), f"{key}={alt!r}: refused only after writing the run folder"


@dataclass
class Forced(Probe):
    """A setting that `refused_by` always trains at the default value of and `trained_by` at `alt`
    (`Method.forced_settings`): `refused_by` refuses `alt`, naming the key and `trained_by`;
    `trained_by` trains with `alt` whether it is given `alt` or the default, and `observe` (of each
    method at its own value) tells the two apart."""
    refused_by: str = "c2gr"
    trained_by: str = ""
    observe: Callable[..., dict] = None

    def check(self, key: str, tmp: Path) -> None:
        base, other, default, alt = self.configs(key, tmp)
        for method, value in ((self.refused_by, default), (self.trained_by, alt)):
            assert get_method(method).forced_settings().get(key, "nothing") == value, \
                f"{method} no longer trains with {key}={value!r} whatever the config says"
        names = rf"{re.escape(key)}.*{re.escape(self.refused_by)}.*{re.escape(self.trained_by)}"
        with pytest.raises(ValueError, match=names):
            prepare_run(other, tmp / "refused", self.refused_by)
        assert not (tmp / "refused" / "run").exists()
        for given in (other, base):  # an explicit alt, or the default left alone: both train with alt
            resolved = get_method(self.trained_by).resolve_config(copy.deepcopy(given))
            assert get_value(resolved, key) == alt
        seen_default = self.observe(base, tmp / "default", self.refused_by)
        seen_alt = self.observe(other, tmp / "alt", self.trained_by)
        same = [part for part in seen_default if _same(seen_default[part], seen_alt[part])]
        assert not same, f"{key}: {self.refused_by} ({default!r}) and {self.trained_by} ({alt!r}) agree on {same}"


def _teacher_targets(cfg, tmp):
    cfg.diffusion.replay_target = "teacher"


def _open_clip(cfg, tmp):
    cfg.prompt.encoder = "open_clip"


def _open_clip_missing_file(cfg, tmp):
    cfg.prompt.encoder = "open_clip"
    cfg.prompt.open_clip_checkpoint = str(tmp / "no-such-clip.pt")


def _names_open_clip_fields(default, alt, value, tmp):
    # Without a local checkpoint the encoder fails with an error naming the setting and the file.
    assert "open_clip_checkpoint" in default["run_stream outcome"]
    assert alt["run_stream outcome"].startswith("FileNotFoundError") and str(value) in alt["run_stream outcome"]
    assert not (tmp / "default" / "run").exists() and not (tmp / "alt" / "run").exists()


def _names_model(default, alt, value, tmp):
    assert f"'{value}'" in alt["run_stream outcome"] and "'ViT-B-32'" in default["run_stream outcome"]


def _prepared_fundus(root: Path) -> Path:
    """A prepared fundus-a under root (as `c2gr prepare` writes it): every image grey level 200."""
    if not (root / "fundus-a").exists():
        s = PREPARED_SIZE
        masks = np.zeros((2, s, s), np.uint8)
        masks[:, 100:150, 100:150] = 1
        splits = {name: (np.full((2, s, s, 3), 200, np.uint8), masks, [f"{name}{i}" for i in range(2)])
                  for name in ("train", "val", "test")}
        write_prepared(root / "fundus-a", get_card("fundus-a"), splits)
    return root


def _reads_from_root(default, alt, value, tmp):
    assert "no data root is set" in default["fundus-a"]
    assert alt["fundus-a"] == f"loaded, mean {200 / 127.5 - 1:.3f}"  # the prepared images, scaled to [-1, 1]
    # A root that does not hold the task: the runner refuses it, naming the folder, before writing.
    cfg = base_cfg()
    cfg.data.data_root = str(tmp / "nowhere")
    with pytest.raises(ValueError, match=re.escape(str(tmp / "nowhere" / "fundus-a"))):
        run_stream(["synthetic:mms-a", "fundus-a"], "c2gr", cfg, tmp / "missing" / "run", progress=False, max_rounds=0)
    assert not (tmp / "missing" / "run").exists()


def _size_is(part):
    def expect(default, alt, value, tmp):
        assert alt[part] == value
    return expect


PROBES: dict[str, Probe] = {
    # The top-level label of the preset; the downstream adaptation takes the paper's budget from it.
    "preset": Changes("paper", observe=adapt_defaults),
    # ---- data
    "data.image_size": Changes(32, observe=image_sizes),
    "data.n_train": Changes(6, observe=split_sizes, keep=("val pairs", "test pairs"), expect=_size_is("train pairs")),
    "data.n_val": Changes(3, observe=split_sizes, keep=("train pairs", "test pairs"), expect=_size_is("val pairs")),
    "data.n_test": Changes(3, observe=split_sizes, keep=("train pairs", "val pairs"), expect=_size_is("test pairs")),
    "data.data_root": Changes(AtTmp(lambda tmp: str(_prepared_fundus(tmp / "prepared"))), observe=real_task,
                              expect=_reads_from_root),
    # ---- segmentor (the PromptedUNet the method builds)
    "segmentor.channels": Changes((8, 16, 24), observe=segmentor_modules),
    "segmentor.cross_attention_dim": Changes(16, observe=segmentor_modules),
    "segmentor.num_head_channels": Changes(4, observe=segmentor_modules),
    "segmentor.norm_groups": Changes(8, observe=segmentor_modules),
    # ---- denoiser
    "denoiser.channels": Changes((8, 16, 24), observe=denoiser_modules),
    "denoiser.attention_levels": Changes((False, True, True), observe=denoiser_modules),
    "denoiser.num_res_blocks": Changes(2, observe=denoiser_modules),
    "denoiser.num_head_channels": Changes(4, observe=denoiser_modules),
    "denoiser.norm_groups": Changes(8, observe=denoiser_modules),
    "denoiser.cross_attention_dim": Changes(16, observe=denoiser_modules),
    "denoiser.prompt_in_timestep": Changes(True, observe=denoiser_modules),
    # ---- diffusion
    "diffusion.num_train_timesteps": Changes(500, observe=training_betas),
    "diffusion.schedule": Changes("scaled_linear_beta", observe=training_betas),
    "diffusion.beta_start": Changes(1e-3, observe=training_betas),
    "diffusion.beta_end": Changes(3e-2, observe=training_betas),
    "diffusion.objective": Forced("njd", refused_by="c2gr", trained_by="c2gr-njd", observe=denoiser_batches),
    "diffusion.sampler": Changes("ddpm", observe=replayed_pairs),
    "diffusion.sample_steps": Changes(3, observe=reverse_chain_steps),
    "diffusion.ddim_eta": Changes(1.0, observe=replayed_pairs),
    "diffusion.mask_code": Refused("bits"),
    "diffusion.prediction": Changes("eps", observe=diffusion_loss_of_zero_denoiser),
    "diffusion.loss_weighting": Changes("uniform", observe=diffusion_loss_of_zero_denoiser),
    "diffusion.snr_gamma": Changes(0.05, observe=diffusion_loss_of_zero_denoiser),
    "diffusion.ema_decay": Changes(0.0, observe=replay_weights),
    "diffusion.replay_target": Changes("teacher", observe=loss_on_replay),
    "diffusion.teacher_weighting": Changes("uniform", setup=_teacher_targets, observe=loss_on_replay),
    "diffusion.teacher_scale": Changes(2.5, setup=_teacher_targets, observe=loss_on_replay),
    "diffusion.mask_balance": Changes(0.0, observe=diffusion_loss_of_zero_denoiser),
    "diffusion.mask_balance_by": Changes("channel", observe=diffusion_loss_of_zero_denoiser),
    "diffusion.term_sampling": Changes("one", observe=denoiser_batches),
    # ---- prompt
    "prompt.encoder": Changes("minilm", observe=task_embeddings),
    "prompt.open_clip_model": Changes("ViT-S-32", setup=_open_clip_missing_file, observe=run_start,
                                      expect=_names_model),
    "prompt.open_clip_checkpoint": Changes(AtTmp(lambda tmp: str(tmp / "missing-clip.pt")), setup=_open_clip,
                                           observe=run_start, expect=_names_open_clip_fields),
    "prompt.node_dim": Changes(16, observe=prompt_width),
    "prompt.q_dim": Changes(8, observe=prompt_modules),
    "prompt.rups": Forced(False, refused_by="c2gr", trained_by="c2gr-norups", observe=prompt_sharing),
    "prompt.relation_norm": Changes("none", observe=zeta),
    "prompt.residual": Changes(False, observe=zeta),
    "prompt.n_tokens": Changes(2, observe=prompt_tokens),
    # ---- train
    "train.epochs": Changes(2, observe=optimiser_steps),
    "train.batch_size": Changes(8, observe=segmentor_batches),
    "train.lr": Changes(1e-3, observe=learning_rates),
    "train.seg_lr": Changes(1e-3, observe=learning_rates, keep=("generator",)),
    "train.gen_lr": Changes(1e-3, observe=learning_rates, keep=("segmentor",)),
    "train.gen_epochs": Changes(2, observe=optimiser_steps, keep=("segmentor optimiser steps",)),
    "train.replay_per_task": Changes(3, observe=replay_pairs_stored),
    "train.amp_bf16": Changes(True, observe=autocast_in_forward),
    "train.seed": Changes(1, observe=seeded_draws),
    "train.device": Refused(f"cuda:{torch.cuda.device_count()}"),  # a device torch does not have
}


def config_keys() -> list[str]:
    cfg = ExperimentConfig()
    keys = []
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        keys += [f"{f.name}.{g.name}" for g in fields(section)] if is_dataclass(section) else [f.name]
    return keys


def test_every_config_field_has_a_probe():
    keys = config_keys()
    missing = [k for k in keys if k not in PROBES]
    assert not missing, (f"config field(s) {missing} have no probe in PROBES: add one that shows changing the "
                         "field changes behaviour, or that the runner refuses it naming the field")
    stale = sorted(set(PROBES) - set(keys))
    assert not stale, f"PROBES has entries for fields the config no longer has: {stale}"


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=p.xfail))
                                 if p.xfail else k for k, p in PROBES.items()])
def test_field_changes_behaviour_or_is_refused(key, tmp_path):
    PROBES[key].check(key, tmp_path)


# --------------------------------------------------- the same refusals on paths off the runner
# run_stream refuses both settings below (validate; resolve_config); so must code that builds a
# method from a config without going through run_stream.

def test_a_method_built_without_the_runner_refuses_a_mask_code_it_does_not_implement(tmp_path):
    cfg = base_cfg()
    cfg.diffusion.mask_code = "bits"
    cards = [entry_card(e) for e in resolve_entries(STREAM)]
    with pytest.raises(ValueError, match="mask_code"):
        get_method("c2gr")(method_context(cfg, cards, work_dir=tmp_path / "work"))


def test_learnable_params_refuses_a_setting_the_method_does_not_train_with():
    cfg = base_cfg()
    cfg.prompt.rups = False
    with pytest.raises(ValueError, match=r"prompt\.rups"):
        learnable_params("c2gr", cfg, STREAM)


@pytest.mark.parametrize("key, value", [("teacher_weighting", "uniform"), ("teacher_scale", 2.5)])
def test_distillation_weights_without_teacher_targets_are_refused(key, value):
    """The fields weight the distillation loss only: with eq. 8's data targets there is nothing they
    could weigh, so the run refuses them rather than record them unused."""
    cfg = base_cfg()
    assert cfg.diffusion.replay_target == "data"
    setattr(cfg.diffusion, key, value)
    with pytest.raises(ValueError, match=rf"diffusion\.{key}"):
        validate(cfg)
    cfg.diffusion.replay_target = "teacher"
    validate(cfg)


@pytest.mark.parametrize("sampler, eta, ok", [("ddim", 1.0, True), ("ddim", 0.0, True), ("ddpm", 0.0, True),
                                               ("ddpm", 1.0, False), ("ddim", 1.5, False), ("ddim", -0.1, False)])
def test_ddim_eta_is_refused_outside_ddim_and_outside_0_1(sampler, eta, ok):
    """DDIM's eta has no meaning for the DDPM sampler: a run would record it unused, so it is refused."""
    cfg = base_cfg()
    cfg.diffusion.sampler, cfg.diffusion.ddim_eta = sampler, eta
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ValueError, match=r"diffusion\.ddim_eta"):
            validate(cfg)
