"""Configuration: one dataclass per component, composed into an experiment config.

Presets (docs/design.md, "Presets"): `tiny` for tests/CI/notebook defaults, `cpu` for laptop benchmarks,
`paper` for sec. 4.2 on a GPU. A config round-trips through JSON (saved beside results).
"""
from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

# The allowed values of the choice fields. They live here, at the bottom layer, so that `validate` can
# check a config without importing the modules that implement the choices (which import this one).
SCHEDULES = ("linear_beta", "scaled_linear_beta")
OBJECTIVES = ("bjd", "njd")
SAMPLERS = ("ddpm", "ddim")
MASK_CODES = ("onehot",)
PREDICTIONS = ("eps", "v")
WEIGHTINGS = ("uniform", "min_snr")
REPLAY_TARGETS = ("data", "teacher")
MASK_BALANCE_BY = ("pixel", "channel", "mixed", "timestep")
TERM_SAMPLING = ("all", "one")
ENCODERS = ("minilm", "open_clip", "hash")
RELATION_NORMS = ("none", "row")


@dataclass
class DataConfig:
    image_size: int = 32
    n_train: int = 48          # synthetic tasks only; real tasks use their prepared splits
    n_val: int = 8
    n_test: int = 16
    data_root: str | None = None  # where `c2gr prepare` wrote real tasks


@dataclass
class SegmentorConfig:
    channels: tuple[int, ...] = (8, 16, 32)
    cross_attention_dim: int = 32   # prompt token dim seen by the cross-attention of eq. 6
    num_head_channels: int = 8
    norm_groups: int = 4


@dataclass
class DenoiserConfig:
    channels: tuple[int, ...] = (16, 32, 32)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 8
    norm_groups: int = 8
    cross_attention_dim: int = 32
    # Eq. 6 prompts the denoiser by cross-attention only, which at the CPU sizes exists at the lowest
    # resolution alone. True also adds a linear projection of the prompt to the timestep embedding,
    # which every residual block receives (as Imagen and SDXL add a pooled text embedding): tasks whose
    # images differ everywhere (two sites, two vendors) need the prompt at every resolution.
    prompt_in_timestep: bool = False


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000            # K (sec. 4.2)
    schedule: str = "linear_beta"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    objective: str = "bjd"                    # "bjd" (eq. 3) or "njd" (eq. 1)
    sampler: str = "ddim"                     # "ddpm" or "ddim"
    sample_steps: int = 10                    # paper: DDPM with 200 reverse steps
    # DDIM's eta (Song et al. eq. 16): 0 the deterministic DDIM, 1 the ancestral DDPM's posterior variance
    # on DDIM's grid. On a trained bench generator eta 1 corresponded 4.5 points better than eta 0 at the
    # same cost (BENCHMARKS.md section 6). DDIM only: the DDPM sampler has no eta.
    ddim_eta: float = 0.0
    mask_code: str = "onehot"                 # how a label map becomes continuous channels
    # The training recipe (diffusion.py). These defaults are eq. 1 / 3 as written; the CPU presets
    # use the recipe that learns at their sizes (BENCHMARKS.md, generator diagnostic).
    prediction: str = "eps"                   # "eps" or "v" (Salimans & Ho 2022)
    loss_weighting: str = "uniform"           # "uniform" or "min_snr" (Hang et al. 2023)
    snr_gamma: float = 5.0                    # gamma of min-SNR weighting
    ema_decay: float = 0.0                    # EMA of the denoiser weights that samples replay; 0: none
    # What the generator's loss on replayed pairs regresses: "data" (eq. 8: the analytic targets of the
    # replayed pairs) or "teacher" (the outputs of the generator as the round began: distillation).
    replay_target: str = "data"
    # The timestep weights of that distillation loss (replay_target "teacher" only): None as loss_weighting,
    # or one of its values. "uniform" keeps the low-noise timesteps that min-SNR all but ignores, where
    # the generator's pairs drifted most from the teacher's (BENCHMARKS.md section 4f).
    teacher_weighting: str | None = None
    # A factor on those distillation weights (replay_target "teacher" only): the weight of keeping the
    # past tasks against learning the new one, which section 4f found to be what uniform weights changed.
    teacher_scale: float = 1.0
    # Pixel weights of the joint losses by the class each pixel holds in the clean mask, f_c ** -mask_balance
    # (mean 1 per pair; diffusion/losses.py pixel_weights). 0: every pixel alike, eq. 1 / 3 as written.
    mask_balance: float = 0.0
    # How those weights are spread: "pixel" (each pixel by its own class: biased towards the up-weighted
    # classes, generated foreground too large), "channel" (each mask channel by its class's share of
    # the batch; the minimiser stays the conditional mean) or "mixed" (per pixel where the clean mask is
    # the denoiser's input, BJD's image-given-mask term; per channel elsewhere) or "timestep" (as "mixed", but
    # a noised mask's weights go from per channel at high noise to per pixel at low noise, by abar_k).
    # diffusion/losses.py mask_weights.
    mask_balance_by: str = "pixel"
    # How each pair meets BJD's three terms (eq. 3): "all" (every pair in every term: three denoiser rows a
    # pair, eq. 3 as written) or "one" (each pair in one term, a random rotation of a balanced assignment,
    # weighted 3: the same loss in expectation for a third of the rows, NJD's cost). NJD and GR have one
    # term, so both values train them alike. diffusion/losses.py bjd_loss.
    term_sampling: str = "all"


@dataclass
class PromptConfig:
    encoder: str = "minilm"                   # "minilm" (offline default) | "open_clip" | "hash" (tests only)
    open_clip_model: str = "ViT-B-32"
    open_clip_checkpoint: str | None = None   # a local file; nothing is downloaded
    node_dim: int = 32                        # paper: 512
    q_dim: int = 16                           # paper: 256
    rups: bool = True                         # False: the "w/o RUPS" ablation
    relation_norm: str = "none"               # "none": eq. 4 as written | "row": cosine rows of unit mass (prompting/rups.py)
    residual: bool = False                    # True: zeta_i = n_i + RUPS message (prompting/rups.py)
    # Each network maps the prompt to n_tokens cross-attention tokens. With a single token the
    # softmax of eq. 6 is identically 1 and the attention degenerates to adding V*zeta.
    n_tokens: int = 4


@dataclass
class TrainConfig:
    epochs: int = 2                           # per round; paper: 300
    batch_size: int = 16                      # paper: 48
    lr: float = 1e-4
    seg_lr: float | None = None               # None: same as lr
    gen_lr: float | None = None               # generator (denoiser) learning rate; None: same as lr
    gen_epochs: int | None = None             # generator epochs per round (>= epochs); None: same as epochs
    replay_per_task: int | None = None        # None: as many as the task's training set (sec. 4.2)
    amp_bf16: bool | str = False             # true, false or "auto": measured per run, with the CPU kernels (training/numerics.py)
    seed: int = 0
    device: str = "cpu"


@dataclass
class ExperimentConfig:
    preset: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    segmentor: SegmentorConfig = field(default_factory=SegmentorConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        return _from_dict(cls, d, "config")

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, AttributeError) as e:  # the message names the file
            raise ValueError(f"{path}: not a readable config ({e})") from e


def _from_dict(cls, d: dict[str, Any], where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# The diffusion recipe of the CPU presets: v-prediction and min-SNR-5 weighting, and an EMA of the
# denoiser sampling the replay (its decay set per preset, by the steps a round gives). The `paper`
# preset keeps eq. 1 and 3 as written (eps, uniform, no EMA). Measured on the bench denoiser, fundus-a,
# 300 BJD steps: correspondence DSC 0.20 (eps, uniform) vs 0.54 (this recipe, EMA 0.95): BENCHMARKS.md,
# generator diagnostic.
#
# mask_balance 0.5: pixels weighted by their class's share of the mask, f_c ** -0.5. Under the plain mean
# the bench generator all but stopped drawing the optic cup (1.7 % of fundus pixels: generated 0.1-0.6 %,
# its correspondence 0.15 falling to 0.00 within six rounds), so C2GR kept the fundus tasks at 30-40 %.
# With 0.5 a single fundus-a task reached correspondence 0.67 at 300 steps (0.30 without; optic cup
# 0.63 vs 0.03; feature-FID 16.3 vs 2.7: the images pay a little), and the 9-task C2GR run 67.72 Overall
# against 54.66 (seed 0; BENCHMARKS.md sections 1 and 3). Eq. 1 and 3 weight every pixel alike: `paper`
# keeps 0.
LAPTOP_RECIPE = dict(prediction="v", loss_weighting="min_snr", snr_gamma=5.0, mask_balance=0.5)
# RUPS prompts that keep each task's identity (prompting/rups.py, "Note on task identity"). With eq. 4 read
# literally the nine trained prompts of the 9-task bench stream ended at off-diagonal cosine 0.95-1.00
# and C2GR scored 26.36 Overall (busi 0.0 in its own round); with both options 0.72-1.00 (mean 0.85)
# and 32.34, busi 62.2 (benchmarks/c2gr_variants.py, seed 0; BENCHMARKS.md, "RUPS prompts").
LAPTOP_PROMPT = dict(relation_norm="row", residual=True)


def _tiny() -> ExperimentConfig:
    # Smoke size (tests, CI, notebook defaults): ~50k-param segmentor, ~100k-param denoiser, a few
    # steps per round. With so few steps the paper's lr of 1e-4 learns nothing, hence 2e-3.
    return ExperimentConfig(
        preset="tiny",
        denoiser=DenoiserConfig(channels=(8, 16, 16), attention_levels=(False, False, True),
                                num_head_channels=8, norm_groups=4, cross_attention_dim=32),
        diffusion=DiffusionConfig(ema_decay=0.95, **LAPTOP_RECIPE),
        prompt=PromptConfig(**LAPTOP_PROMPT),
        train=TrainConfig(epochs=3, lr=2e-3, replay_per_task=16),
    )


def _cpu() -> ExperimentConfig:
    # The recipe measured at bench size; its EMA decay (0.995, for the longer rounds of this preset)
    # and generator budget have not been measured at 64^2.
    return ExperimentConfig(
        preset="cpu",
        data=DataConfig(image_size=64, n_train=200, n_val=40, n_test=60),
        segmentor=SegmentorConfig(channels=(16, 32, 64, 128), cross_attention_dim=128,
                                  num_head_channels=16, norm_groups=8),
        denoiser=DenoiserConfig(channels=(32, 64, 64, 128), attention_levels=(False, False, True, True),
                                num_res_blocks=1, num_head_channels=16, norm_groups=16,
                                cross_attention_dim=128),
        diffusion=DiffusionConfig(sample_steps=25, ema_decay=0.995, **LAPTOP_RECIPE),
        prompt=PromptConfig(node_dim=128, q_dim=64, **LAPTOP_PROMPT),
        train=TrainConfig(epochs=10, batch_size=16, lr=2e-4, amp_bf16="auto"),
    )


def _paper() -> ExperimentConfig:
    # Sec. 4.2: segmentor 32..512, denoiser 128..512, cross-attention 768, K = 1000,
    # 200 reverse steps, Adam 1e-4, batch 48, 300 epochs/round, node dim 512, q dim 256.
    return ExperimentConfig(
        preset="paper",
        data=DataConfig(image_size=256, n_train=1000, n_val=250, n_test=400),
        segmentor=SegmentorConfig(channels=(32, 64, 128, 256, 512, 512, 512), cross_attention_dim=768,
                                  num_head_channels=32, norm_groups=16),
        denoiser=DenoiserConfig(channels=(128, 128, 256, 256, 512, 512),
                                attention_levels=(False, False, False, True, True, True),
                                num_res_blocks=2, num_head_channels=64, norm_groups=32,
                                cross_attention_dim=768),
        diffusion=DiffusionConfig(sampler="ddpm", sample_steps=200),
        prompt=PromptConfig(encoder="open_clip", node_dim=512, q_dim=256),
        train=TrainConfig(epochs=300, batch_size=48, lr=1e-4),
    )


def _bench() -> ExperimentConfig:
    # `make stream` (FineTune, JointTrain, C2GR on the 20-task synthetic stream in about 20 minutes on
    # 2 cores) and benchmarks/method_table.py. amp_bf16 "auto": fp32, channels-last fp32 or bf16, whichever the run measures fastest.
    # Segmentor (8, 16, 32), 96 steps per round (epochs 32), chosen on the validation split
    # (benchmarks/segmentor_budget.py): with 24 the segmentor was under-trained in every round and the
    # replay buffer of real pairs kept 79 % Overall on the 9-task stream; 48 / 96 / 192 steps gave it
    # 87.5 / 91.0 / 91.1 % on validation (seed 0; 85.8 / 89.9 / 89.4 seed 1). Denoiser (16, 32, 32): at 300 steps its pairs reached
    # correspondence DSC 0.54 / 0.51 (fundus-a / mms-a) against 0.23 / 0.26 for (8, 16, 16) and
    # 0.47 / 0.44 for (24, 48, 48), at 1.6x and 3.3x the step time of (8, 16, 16); EMA 0.95 beat
    # 0.98 and 0.995 at these step counts (benchmarks/generator_recipes.py). The prompt also enters the
    # timestep embedding of every block (prompt_in_timestep): with it alone C2GR kept sibling tasks apart
    # and rose by 4.6 Overall on the 9-task stream (seeds 0-1 paired; 81.0 over seeds 0-2, BENCHMARKS.md
    # 4d). The generator gets 1200 steps per round (gen_epochs 400, of which the first 32 epochs are the
    # coupled phase), each pair in one of BJD's three terms (term_sampling "one": the same loss in
    # expectation for a third of the denoiser rows, so twice the steps of "all" at 600 take the same time):
    # 86.07 against 84.90 Overall (seeds 0-2 paired on an Intel Xeon with AMX, fp32, +1.16 +- 1.62; replay
    # correspondence higher in every seed, BENCHMARKS.md section 7). Before: 600 steps 84.2 against 300
    # steps 81.0 (seeds 0-2) and 55.4 against 32.3 for 300 vs 120 steps on an older preset. `make stream`
    # passes smaller budgets to fit its time budget (Makefile).
    # replay_target "teacher": with "data" (eq. 8) the generator drifts through its own replay (fundus
    # tasks at 0-14 % DSC after the four M&Ms rounds of the 20-task stream); distilling the generator
    # as the round began kept them at 33-52 % (BENCHMARKS.md, the 20-task stream).
    # mask_balance_by "timestep": a noised mask's class weights go from per channel at high noise to per
    # pixel at low noise. Per-pixel weights (the other presets) bias the generated foreground upwards;
    # on the 9-task stream "timestep" gave 85.38 +- 0.51 Overall against 84.21 +- 0.89 (seeds 0-2, fp32,
    # ahead in every seed; validation 86.01 vs 84.40; BENCHMARKS.md 4e). Measured at the previous bench preset
    # (all three BJD terms, 600 steps) only.
    # lr 3e-3 because with so few steps 1e-4 learns nothing (1e-2 was worse for the generator).
    return ExperimentConfig(
        preset="bench",
        data=DataConfig(image_size=32, n_train=48, n_val=8, n_test=32),
        denoiser=DenoiserConfig(channels=(16, 32, 32), attention_levels=(False, False, True),
                                num_head_channels=8, norm_groups=8, cross_attention_dim=32,
                                prompt_in_timestep=True),
        diffusion=DiffusionConfig(sampler="ddim", sample_steps=25, ema_decay=0.95, replay_target="teacher",
                                  term_sampling="one", **{**LAPTOP_RECIPE, "mask_balance_by": "timestep"}),
        prompt=PromptConfig(**LAPTOP_PROMPT),
        train=TrainConfig(epochs=32, gen_epochs=400, batch_size=16, lr=3e-3, replay_per_task=32, amp_bf16="auto"),
    )


PRESETS = {"tiny": _tiny, "cpu": _cpu, "paper": _paper, "bench": _bench}


def preset(name: str, **overrides: Any) -> ExperimentConfig:
    """A fresh config for preset `name`; `overrides` replace top-level sections."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return replace(cfg, **overrides) if overrides else cfg


# ---------------------------------------------------------------------------- validation
# A parameter is checked here, where it is defined, before a run touches the disk: its type from
# the dataclass annotation, its range or allowed values from `_rules`. Errors name "section.key".

def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, tuple) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # a bool is not a number here (train.epochs=true must not mean 1)
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _members(hint: Any) -> tuple:
    """The types a union annotation admits (the annotation itself if it is no union)."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return "a list of " + {int: "integers", float: "numbers", bool: "true/false values"}.get(item, str(item))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, str(hint))


def _rules(cfg: "ExperimentConfig") -> dict[str, tuple]:
    """section.key -> (check(value) -> bool, what the value must be). Types are checked first."""
    pos = (lambda v: v >= 1, "an integer >= 1")
    pos_all = (lambda v: len(v) > 0 and all(c >= 1 for c in v), "a non-empty list of integers >= 1")
    above0 = (lambda v: v > 0, "a number > 0")
    opt_above0 = (lambda v: v is None or v > 0, "a number > 0, or null (same as train.lr)")
    one_of = lambda allowed: (lambda v: v in allowed, f"one of {list(allowed)}")  # noqa: E731
    levels = max(len(cfg.segmentor.channels), len(cfg.denoiser.channels))
    return {
        "data.image_size": (lambda v: v >= 1 and v % 2 ** (levels - 1) == 0,
                            f">= 1 and a multiple of {2 ** (levels - 1)} (the networks halve it "
                            f"{levels - 1} times)"),
        "data.n_train": pos, "data.n_val": pos, "data.n_test": pos,
        **{f"{net}.{k}": pos for net in ("segmentor", "denoiser")
           for k in ("cross_attention_dim", "num_head_channels", "norm_groups")},
        "segmentor.channels": pos_all, "denoiser.channels": pos_all, "denoiser.num_res_blocks": pos,
        "denoiser.attention_levels": (lambda v: len(v) == len(cfg.denoiser.channels),
                                      f"one entry per denoiser.channels entry ({len(cfg.denoiser.channels)})"),
        "diffusion.num_train_timesteps": (lambda v: v >= 2, ">= 2"),
        "diffusion.schedule": one_of(SCHEDULES),
        "diffusion.beta_start": (lambda v: 0 < v < cfg.diffusion.beta_end, "> 0 and < diffusion.beta_end"),
        "diffusion.beta_end": (lambda v: v < 1, "< 1"),
        "diffusion.objective": one_of(OBJECTIVES),
        "diffusion.sampler": one_of(SAMPLERS),
        "diffusion.sample_steps": (lambda v: 1 <= v <= cfg.diffusion.num_train_timesteps,
                                   ">= 1 and <= diffusion.num_train_timesteps"),
        "diffusion.ddim_eta": (lambda v: 0 <= v <= 1 and (v == 0 or cfg.diffusion.sampler == "ddim"),
                               "in [0, 1], and 0 unless diffusion.sampler is 'ddim' (the DDPM sampler has no eta)"),
        # Only the one-hot code is implemented; another name would be recorded and ignored.
        "diffusion.mask_code": one_of(MASK_CODES),
        "diffusion.prediction": one_of(PREDICTIONS),
        "diffusion.loss_weighting": one_of(WEIGHTINGS),
        "diffusion.snr_gamma": above0,
        "diffusion.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0: no EMA)"),
        "diffusion.replay_target": one_of(REPLAY_TARGETS),
        "diffusion.teacher_weighting": (lambda v: v is None or (v in WEIGHTINGS and cfg.diffusion.replay_target == "teacher"),
                                        f"null, or one of {list(WEIGHTINGS)} with diffusion.replay_target "
                                        "'teacher' (it weights the distillation loss only)"),
        "diffusion.teacher_scale": (lambda v: 0 < v < math.inf and (v == 1 or cfg.diffusion.replay_target == "teacher"),
                                    "finite and > 0, and 1 unless diffusion.replay_target is 'teacher' (it scales the "
                                    "distillation loss only)"),
        "diffusion.mask_balance": (lambda v: 0 <= v <= 1, "in [0, 1] (0: every pixel alike)"),
        "diffusion.mask_balance_by": one_of(MASK_BALANCE_BY),
        "diffusion.term_sampling": one_of(TERM_SAMPLING),
        "prompt.encoder": one_of(ENCODERS),
        "prompt.node_dim": pos, "prompt.q_dim": pos, "prompt.n_tokens": pos,
        "prompt.relation_norm": one_of(RELATION_NORMS),
        "train.epochs": pos, "train.batch_size": pos, "train.lr": above0,
        "train.amp_bf16": (lambda v: v in (True, False, "auto"),
                            'true, false or "auto" (measured at the start of the run)'),
        "train.seg_lr": opt_above0, "train.gen_lr": opt_above0,
        "train.gen_epochs": (lambda v: v is None or v >= cfg.train.epochs,
                             f">= train.epochs ({cfg.train.epochs}), or null: same as train.epochs"),
        "train.replay_per_task": (lambda v: v is None or v >= 1,
                                  "an integer >= 1, or null (the task's training-set size)"),
        "train.seed": (lambda v: 0 <= v < 2 ** 63, "an integer >= 0 (and < 2**63)"),
        "train.device": (lambda v: re.fullmatch(r"cpu|cuda(:\d+)?|mps", v) is not None,
                         "'cpu', 'cuda', 'cuda:N' or 'mps'"),
    }


def validate(cfg: "ExperimentConfig") -> "ExperimentConfig":
    """Refuse a config any run would fail on, or silently ignore; the error names the parameter."""
    def show(v):
        return json.dumps(list(v) if isinstance(v, tuple) else v) if v is None or isinstance(
            v, (bool, int, float, str, tuple)) else repr(v)

    for sec in fields(cfg):
        section = getattr(cfg, sec.name)
        if not is_dataclass(section):
            continue
        hints = typing.get_type_hints(type(section))
        for f in fields(section):
            value = getattr(section, f.name)
            if not _type_ok(value, hints[f.name]):
                raise ValueError(f"{sec.name}.{f.name} must be {_type_name(hints[f.name])}, got {show(value)}")
    for key, (check, what) in _rules(cfg).items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not check(value):
            raise ValueError(f"{key} must be {what}, got {show(value)}")
    for net in ("segmentor", "denoiser"):
        c = getattr(cfg, net)
        if any(ch % c.norm_groups for ch in c.channels):
            raise ValueError(f"{net}.norm_groups ({c.norm_groups}) must divide every {net}.channels entry "
                             f"({list(c.channels)})")
    device = cfg.train.device
    if device.startswith("cuda") or device == "mps":
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"train.device is {device!r}, but torch finds no CUDA device here")
        if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
            raise ValueError(f"train.device is {device!r}, but torch finds {torch.cuda.device_count()} CUDA device(s)")
        if device == "mps" and not torch.backends.mps.is_available():
            raise ValueError("train.device is 'mps', but torch finds no MPS device here")
    return cfg


def apply_overrides(cfg, items: list[str]):
    """`--set section.key=value` overrides, typed like the default they replace."""
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects section.key=value (e.g. train.epochs=5), got {item!r}")
        key, raw = item.split("=", 1)
        section, field = key.split(".", 1)
        if not hasattr(cfg, section) or not is_dataclass(getattr(cfg, section)):
            raise ValueError(f"--set {item!r}: unknown section {section!r}; sections: "
                             f"{[f.name for f in fields(cfg) if is_dataclass(getattr(cfg, f.name))]}")
        sec = getattr(cfg, section)
        names = [f.name for f in fields(sec)]
        if field not in names:
            raise ValueError(f"--set {item!r}: unknown key {field!r} in {section}; keys: {names}")
        # Typed by the field's annotation, not by its current value: `train.amp_bf16` (bool | str) holds
        # "auto" in bench and must still take false.
        hint = typing.get_type_hints(type(sec))[field]
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list) and _type_ok(tuple(value), hint):
            value = tuple(value)
        elif type(value) is int and float in _members(hint) and int not in _members(hint):
            value = float(value)
        if not _type_ok(value, hint):
            raise ValueError(f"--set {item!r}: {key} must be {_type_name(hint)}, got {raw!r}")
        setattr(sec, field, value)
    return validate(cfg)  # ranges and allowed values, named by section.key


def config_diff(a: "ExperimentConfig", b: "ExperimentConfig") -> list[str]:
    """The keys whose values differ, as "section.key: <in a> vs <in b>" (for the resume refusal)."""
    da, db = a.to_dict(), b.to_dict()
    out = []
    for sec in da:
        if isinstance(da[sec], dict):
            out += [f"{sec}.{k}: {da[sec][k]!r} vs {db[sec].get(k)!r}" for k in da[sec] if da[sec][k] != db[sec].get(k)]
        elif da[sec] != db[sec]:
            out.append(f"{sec}: {da[sec]!r} vs {db[sec]!r}")
    return out
