"""The generator's training objectives: NJD (eq. 1), BJD (eq. 3) and GR's image-only loss, under the
recipe of `DiffusionConfig` (eps or v targets, uniform or min-SNR weights, optional teacher targets).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DiffusionConfig
from .schedule import _abar, add_noise, randn

def target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """What the denoiser is trained to output for a part with clean value x0 and noise `noise`:
    eps itself, or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, eq. in sec. 4)."""
    if prediction == "eps":
        return noise
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def snr_weights(scheduler, k: torch.Tensor, prediction: str, weighting: str, gamma: float) -> torch.Tensor:
    """(B,) loss weight of each sample's timestep. "uniform": 1 (eq. 1 and 3 as written).
    "min_snr" (Hang et al. 2023): the x0-space weight min(SNR, gamma) expressed in the space the
    denoiser predicts, min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v,
    with SNR_k = abar_k / (1 - abar_k)."""
    if weighting == "uniform":
        return torch.ones(k.shape, dtype=torch.float32, device=k.device)
    a = scheduler.alphas_cumprod.to(k.device, torch.float64)[k]
    snr = a / (1 - a)
    clipped = snr.clamp(max=float(gamma))
    return (clipped / snr if prediction == "eps" else clipped / (snr + 1)).float()


def timestep_weights(scheduler, k: torch.Tensor, cfg: DiffusionConfig, teacher: "Teacher | None" = None) -> torch.Tensor:
    """(B,) `snr_weights` under cfg.loss_weighting; on the rows a `teacher` teaches, under
    cfg.teacher_weighting (when set) times cfg.teacher_scale."""
    w = snr_weights(scheduler, k, cfg.prediction, cfg.loss_weighting, cfg.snr_gamma)
    if teacher is None or (cfg.teacher_weighting is None and cfg.teacher_scale == 1):
        return w
    taught = cfg.teacher_scale * snr_weights(scheduler, k, cfg.prediction, cfg.teacher_weighting or cfg.loss_weighting,
                                             cfg.snr_gamma)
    return taught if teacher.rows is None else torch.where(teacher.rows.to(w.device), taught, w)


def pixel_weights(y0: torch.Tensor, balance: float) -> torch.Tensor | None:
    """(B, 1, H, W) weight of each pixel by the class it holds in the clean mask code y0: f_c ** -balance,
    f_c the fraction of the sample's pixels in class c, scaled to mean 1 over the sample's pixels.
    None for balance 0: every pixel alike (eq. 1 and 3 as written).

    Why: under the plain mean a class of 1.7 % of the pixels (the optic cup at 32^2) is 1.7 % of the
    mask error, and the bench generator drew almost none (BENCHMARKS.md section 3)."""
    if balance == 0:
        return None
    labels = y0.argmax(1)
    frac = F.one_hot(labels, y0.shape[1]).flatten(1, 2).float().mean(1)          # (B, M), > 0 where used
    w = frac.clamp_min(1e-12).pow(-float(balance)).gather(1, labels.flatten(1)).view_as(labels)
    return (w / w.flatten(1).mean(1).view(-1, 1, 1)).unsqueeze(1)


def channel_weights(y0: torch.Tensor, balance: float, image_channels: int,
                    parts: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """(1, image_channels + M, 1, 1) weight of each channel of a joint [image, mask] output: 1 for the
    image channels, f_c ** -balance for mask channel c, f_c the share of class c among all the batch's
    clean-mask pixels, scaled so that sum_c f_c w_c = 1 (a pixel's own class channel weighs 1 on
    average, as under `pixel_weights`). A class absent from the batch weighs 1. None for balance 0.
    With `parts` (row counts summing to B: batches of their own in one forward) each part gets the
    weights of its own rows, (B, image_channels + M, 1, 1).

    Why not `pixel_weights`: a weight that depends on the clean label at the pixel changes what the
    loss is minimised by, E[w y0 | y_k] / E[w | y_k] instead of E[y0 | y_k]; where the denoiser is
    unsure, pixels are pulled towards the up-weighted (foreground) classes and the generated
    foreground grows (brats-t1 at 2x its real share, and a segmentor trained on that replay
    over-segments: BENCHMARKS.md section 4e). A weight that is constant over the batch's pixels keeps
    every channel's minimiser at its conditional mean and still gives small classes more of the loss."""
    if balance == 0:
        return None
    if parts is not None:
        return torch.cat([channel_weights(y, balance, image_channels).expand(len(y), -1, -1, -1)
                          for y in y0.split(list(parts))])
    frac = F.one_hot(y0.argmax(1), y0.shape[1]).flatten(0, 2).float().mean(0)      # (M,)
    present = frac > 0
    raw = torch.where(present, frac.clamp_min(1e-12).pow(-float(balance)), torch.ones_like(frac))
    w_mask = raw / (frac * raw).sum()
    w_mask = torch.where(present, w_mask, torch.ones_like(w_mask))
    w = torch.cat([torch.ones(image_channels, device=y0.device), w_mask])
    return w.view(1, -1, 1, 1)


def mask_weights(y0: torch.Tensor, cfg: DiffusionConfig, image_channels: int,
                 parts: tuple[int, ...] | None = None, mask_given: bool = False,
                 abar: torch.Tensor | None = None) -> torch.Tensor | None:
    """The weights of cfg.mask_balance as `cfg.mask_balance_by` spreads them over a term's error:
    "pixel": per pixel (`pixel_weights`, (B, 1, H, W); per sample, so `parts` changes nothing);
    "channel": per mask channel (`channel_weights`, by the shares of the batch or of each part);
    "mixed": per pixel in a term whose input holds the clean mask (`mask_given`: BJD's image-given-mask
    term), per channel elsewhere. Where the clean mask is an input, a weight computed from it is a
    function of what the denoiser sees and moves no minimiser; where the mask is noised it would.
    "timestep": as "mixed", but where the mask is noised each sample blends the two by its abar_k
    ((B, 1, 1, 1), required): abar_k * per pixel + (1 - abar_k) * per channel. The per-pixel bias
    scales with how unsure the clean class is given y_k: large at high noise (abar_k -> 0, where the
    blend is per channel), vanishing at low noise (abar_k -> 1, where it is per pixel and the small
    classes' outlines get their weight)."""
    by = cfg.mask_balance_by
    if by == "pixel" or (by in ("mixed", "timestep") and mask_given):
        return pixel_weights(y0, cfg.mask_balance)
    per_channel = channel_weights(y0, cfg.mask_balance, image_channels, parts)
    if by in ("channel", "mixed") or per_channel is None:
        return per_channel
    if abar is None:
        raise ValueError('mask_weights: mask_balance_by "timestep" needs each sample\'s abar_k')
    s = abar.reshape(-1, 1, 1, 1).float()
    return s * pixel_weights(y0, cfg.mask_balance) + (1 - s) * per_channel


def _weighted_mse(pred: torch.Tensor, tgt: torch.Tensor, w: torch.Tensor, reduce: bool = True,
                  pixels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over samples of w_i times sample i's mean squared error; with w = 1 the plain MSE.
    `pixels` weights the squared errors by broadcasting: (B, 1, H, W) each pixel in every channel
    (`pixel_weights`), (1, C, 1, 1) each channel (`channel_weights`).
    reduce=False: the (B,) terms w_i * mse_i before the mean."""
    err = (pred.float() - tgt.float()).pow(2)
    if pixels is not None:
        err = err * pixels
    per_sample = w.to(pred.device) * err.flatten(1).mean(1)
    return per_sample.mean() if reduce else per_sample



@dataclass
class NoiseDraws:
    """The random part of eq. (1)/(3): one timestep k and one (eps_x, eps_y) per sample."""
    k: torch.Tensor        # (B,) long
    eps_x: torch.Tensor    # like x0
    eps_y: torch.Tensor | None   # like y0 (None for images alone)
    # (B,) long in {0, 1, 2}: the one BJD term each pair trains (diffusion.term_sampling "one", `draw_terms`);
    # None: every pair trains all three.
    term: torch.Tensor | None = None


@dataclass
class Teacher:
    """A frozen copy of the generator as a round began, and the prompts it was trained with.

    With `replay_target = "teacher"` the loss on replayed pairs regresses the teacher's outputs on the
    same noised inputs instead of the analytic targets (generative distillation, Masip et al. 2023):
    the generator is asked to keep the function that produced the replay, not to re-learn the
    replay's pixels, whose errors would otherwise be learnt again every round."""
    denoiser: nn.Module
    prompt: torch.Tensor   # (R, P): the teacher's prompt for each pair it teaches
    rows: torch.Tensor | None = None   # (B,) bool: the pairs it teaches (R of them); None: all


def _with_teacher(targets: list[torch.Tensor], teacher: Teacher, inputs: list[torch.Tensor],
                  k: torch.Tensor) -> list[torch.Tensor]:
    """`targets` (one per denoiser input) with the teacher's outputs on the rows it teaches."""
    rows = teacher.rows
    if rows is None:
        return list(_teacher_out(teacher, torch.cat(inputs, 0), k.repeat(len(inputs)),
                                 repeat=len(inputs)).chunk(len(inputs), dim=0))
    if not rows.any():
        return targets
    taught = _teacher_out(teacher, torch.cat([x[rows] for x in inputs], 0), k[rows].repeat(len(inputs)),
                          repeat=len(inputs)).chunk(len(inputs), dim=0)
    out = []
    for tgt, t in zip(targets, taught):
        tgt = tgt.float().clone()
        tgt[rows] = t
        out.append(tgt)
    return out


def _teacher_out(teacher: Teacher, inputs: torch.Tensor, k: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return teacher.denoiser(inputs, k, teacher.prompt.repeat(repeat, 1)).float()


@dataclass
class JointLoss:
    """`total` carries the gradient; `terms` are detached per-term values for logging."""
    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def draw_noise(x0: torch.Tensor, y0: torch.Tensor | None, num_train_timesteps: int,
               generator: torch.Generator | None = None, one_term: bool = False) -> NoiseDraws:
    """k ~ U{0..K-1}, eps_x, eps_y ~ N(0, I), drawn in that order from `generator` (no eps_y without y0);
    with `one_term`, then each pair's BJD term (`draw_terms`)."""
    b = x0.shape[0]
    gdev = generator.device if generator is not None else x0.device
    k = torch.randint(0, int(num_train_timesteps), (b,), generator=generator, device=gdev).to(x0.device)
    eps_x = randn(x0.shape, generator, x0.device)
    eps_y = None if y0 is None else randn(y0.shape, generator, y0.device)
    return NoiseDraws(k, eps_x, eps_y, draw_terms(b, generator, x0.device) if one_term else None)


def draw_terms(b: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(b,) term of eq. 3 for each of b pairs (0 joint, 1 image given mask, 2 mask given image): a random
    permutation of 0, 1, 2, 0, 1, ... shifted by one random offset. The offset makes each pair's term
    uniform on the three (so 3x the term's loss is unbiased for eq. 3's sum); the permutation keeps
    the batch balanced (each term on b/3 pairs, +-1), which plain independent draws would not."""
    gdev = generator.device if generator is not None else device
    perm = torch.randperm(b, generator=generator, device=gdev)
    offset = torch.randint(0, 3, (), generator=generator, device=gdev)
    return ((perm + offset) % 3).to(device)


def _check_pair(x0: torch.Tensor, y0: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    if x0.ndim != 4 or y0.ndim != 4 or x0.shape[0] != y0.shape[0] or x0.shape[2:] != y0.shape[2:]:
        raise ValueError(f"joint diffusion: x0 (B, 3, H, W) and y0 (B, M, H, W) must agree, got "
                         f"{tuple(x0.shape)} and {tuple(y0.shape)}")
    if not y0.is_floating_point():
        raise ValueError("joint diffusion: y0 must be the continuous mask code (MaskCodec.encode), not labels")
    if prompt.ndim == 1:
        prompt = prompt.unsqueeze(0).expand(x0.shape[0], -1)
    if prompt.ndim != 2 or prompt.shape[0] != x0.shape[0]:
        raise ValueError(f"joint diffusion: prompt must be (P,) or (B, P) with B = {x0.shape[0]}, "
                         f"got {tuple(prompt.shape)}")
    return prompt


def njd_loss(denoiser: nn.Module, x0: torch.Tensor, y0: torch.Tensor, prompt: torch.Tensor, scheduler,
             generator: torch.Generator | None = None, draws: NoiseDraws | None = None,
             cfg: DiffusionConfig | None = None, teacher: Teacher | None = None, reduce: bool = True,
             parts: tuple[int, ...] | None = None) -> JointLoss:
    """Naive joint diffusion, eq. (1): || [eps_x, eps_y] - eps_theta([x_k, y_k], k) ||^2.

    The squared norm is the mean squared error over all elements (batch, channels, pixels). With
    cfg.prediction = "v" the target is [v_x, v_y]; cfg.loss_weighting weights each sample's error
    by its timestep (`snr_weights`), cfg.mask_balance > 0 each pixel by its class in y0 (`pixel_weights`)
    or each mask channel by its class's share of the batch (`channel_weights`), as cfg.mask_balance_by says.
    cfg defaults to DiffusionConfig() (eps, uniform, every pixel alike: eq. 1 as written).
    reduce=False: `total` is the (B,) per-sample loss whose mean is the loss (batches of several
    parts in one forward, methods/coupled.py).
    """
    cfg = cfg or DiffusionConfig()
    prompt = _check_pair(x0, y0, prompt)
    d = draws if draws is not None else draw_noise(x0, y0, scheduler.num_train_timesteps, generator)
    xk, yk = add_noise(scheduler, x0, d.eps_x, d.k), add_noise(scheduler, y0, d.eps_y, d.k)
    pred = denoiser(torch.cat([xk, yk], 1), d.k, prompt)
    a = _abar(scheduler, d.k, x0)
    tgt = torch.cat([target(cfg.prediction, x0, d.eps_x, a), target(cfg.prediction, y0, d.eps_y, a)], 1)
    if teacher is not None:
        (tgt,) = _with_teacher([tgt], teacher, [torch.cat([xk, yk], 1)], d.k)
    w = timestep_weights(scheduler, d.k, cfg, teacher)
    loss = _weighted_mse(pred, tgt, w, reduce, mask_weights(y0, cfg, x0.shape[1], parts, abar=a))
    return JointLoss(loss, {"joint": loss.detach().mean()})


def bjd_loss(denoiser: nn.Module, x0: torch.Tensor, y0: torch.Tensor, prompt: torch.Tensor, scheduler,
             batched: bool = True, generator: torch.Generator | None = None,
             draws: NoiseDraws | None = None, cfg: DiffusionConfig | None = None,
             teacher: Teacher | None = None, reduce: bool = True, parts: tuple[int, ...] | None = None) -> JointLoss:
    """Bayesian joint diffusion, eq. (3): the joint term of eq. (1) plus two conditional terms

        || [eps_x, 0] - eps_theta([x_k, y_0], k) ||^2    image denoised with the clean mask as reference
        || [0, eps_y] - eps_theta([x_0, y_k], k) ||^2    mask denoised with the clean image as reference

    with the same k, eps_x, eps_y per sample in all three. Each term is the mean squared error over
    all its elements; the loss is their sum. `batched` stacks the three inputs along the batch into
    one denoiser forward (same result as three forwards, see benchmarks/diffusion_speed.py for speed).

    Under cfg.prediction = "v" every part's target is `target("v", clean, noise, abar_k)`. The clean
    half of a conditional term carries no noise, so its target is v with eps = 0, i.e.
    -sqrt(1 - abar_k) * clean: the same definition as for a noisy part, and the direct analogue of
    eq. 3's zero under eps. (The other reading, "a v that the sampler would decode into eps = 0",
    is -sqrt((1 - abar_k) / abar_k) * clean: 160x the data at k = 999, which would swamp the loss.)
    The per-sample weights of cfg.loss_weighting and the weights of cfg.mask_balance (from the clean
    mask y0, `mask_weights`) apply to all three terms; under mask_balance_by "mixed" the
    image-given-mask term takes them per pixel, the other two per channel ("timestep": blended by abar_k). With a `teacher`
    the targets of all three terms are the teacher's outputs on the same inputs (see `Teacher`).
    reduce=False: `total` is the (B,) per-sample sum of the three terms (see `njd_loss`).

    cfg.term_sampling = "one" trains each pair on one term only, `draws.term` (drawn here if absent),
    with weight 3: one denoiser row per pair instead of three, an unbiased estimate of the same sum
    (its mean over the three rotations of `draw_terms` is the "all" loss exactly). `terms` then logs
    each term's mean over the pairs that trained it (0 where none did).
    """
    cfg = cfg or DiffusionConfig()
    prompt = _check_pair(x0, y0, prompt)
    one_term = cfg.term_sampling == "one"
    d = draws if draws is not None else draw_noise(x0, y0, scheduler.num_train_timesteps, generator, one_term)
    if d.term is not None and not one_term:
        raise ValueError('bjd_loss: draws.term is given but diffusion.term_sampling is "all"')
    xk, yk = add_noise(scheduler, x0, d.eps_x, d.k), add_noise(scheduler, y0, d.eps_y, d.k)
    a = _abar(scheduler, d.k, x0)
    tx, ty = target(cfg.prediction, x0, d.eps_x, a), target(cfg.prediction, y0, d.eps_y, a)
    cx = target(cfg.prediction, x0, torch.zeros_like(d.eps_x), a)   # clean image: no noise on this half
    cy = target(cfg.prediction, y0, torch.zeros_like(d.eps_y), a)   # clean mask: no noise on this half
    names = ("joint", "image_given_mask", "mask_given_image")
    if one_term:
        term = d.term if d.term is not None else draw_terms(len(x0), generator, x0.device)
        return _bjd_one_term(denoiser, term.to(x0.device), (x0, y0, xk, yk), (tx, ty, cx, cy), prompt, scheduler,
                             d.k, a, cfg, teacher, reduce, parts, names)
    inputs = [torch.cat([xk, yk], 1), torch.cat([xk, y0], 1), torch.cat([x0, yk], 1)]
    targets = [torch.cat([tx, ty], 1), torch.cat([tx, cy], 1), torch.cat([cx, ty], 1)]
    if teacher is not None:
        targets = _with_teacher(targets, teacher, inputs, d.k)
    if batched:
        preds = denoiser(torch.cat(inputs, 0), d.k.repeat(3), prompt.repeat(3, 1)).chunk(3, dim=0)
    else:
        preds = [denoiser(inp, d.k, prompt) for inp in inputs]
    w = timestep_weights(scheduler, d.k, cfg, teacher)
    given = (False, True, False)     # the clean mask is an input of the image-given-mask term only
    terms = {n: _weighted_mse(p, t, w, reduce, mask_weights(y0, cfg, x0.shape[1], parts, g, a))
             for n, p, t, g in zip(names, preds, targets, given)}
    total = terms["joint"] + terms["image_given_mask"] + terms["mask_given_image"]
    return JointLoss(total, {n: v.detach().mean() for n, v in terms.items()})


def _bjd_one_term(denoiser, term, clean_noisy, targets, prompt, scheduler, k, a, cfg, teacher, reduce, parts,
                  names) -> JointLoss:
    """bjd_loss with each pair in its one `term`: the input and target halves of that term, row by row."""
    x0, y0, xk, yk = clean_noisy
    tx, ty, cx, cy = targets
    image_clean, mask_clean = (term == 2).view(-1, 1, 1, 1), (term == 1).view(-1, 1, 1, 1)
    inp = torch.cat([torch.where(image_clean, x0, xk), torch.where(mask_clean, y0, yk)], 1)
    tgt = torch.cat([torch.where(image_clean, cx, tx), torch.where(mask_clean, cy, ty)], 1)
    if teacher is not None:
        (tgt,) = _with_teacher([tgt], teacher, [inp], k)
    pred = denoiser(inp, k, prompt)
    given, other = (mask_weights(y0, cfg, x0.shape[1], parts, g, a) for g in (True, False))
    pixels = None if given is None and other is None else torch.where(
        mask_clean, 1.0 if given is None else given, 1.0 if other is None else other)
    per_sample = 3 * _weighted_mse(pred, tgt, timestep_weights(scheduler, k, cfg, teacher), False, pixels)
    terms = {n: (per_sample.detach() / 3 * (term == j)).sum() / (term == j).sum().clamp_min(1)
             for j, n in enumerate(names)}
    return JointLoss(per_sample.mean() if reduce else per_sample, terms)


def image_loss(denoiser: nn.Module, x0: torch.Tensor, prompt: torch.Tensor, scheduler,
               generator: torch.Generator | None = None, cfg: DiffusionConfig | None = None,
               teacher: Teacher | None = None) -> JointLoss:
    """The image-only objective of GR (Ho et al. eq. 14 under the same recipe): || eps - eps_theta(x_k, k) ||^2."""
    cfg = cfg or DiffusionConfig()
    if x0.ndim != 4:
        raise ValueError(f"image diffusion: x0 must be (B, C, H, W), got {tuple(x0.shape)}")
    d = draw_noise(x0, None, scheduler.num_train_timesteps, generator)
    k, eps = d.k, d.eps_x
    xk = add_noise(scheduler, x0, eps, k)
    pred = denoiser(xk, k, prompt)
    w = timestep_weights(scheduler, k, cfg, teacher)
    tgt = target(cfg.prediction, x0, eps, _abar(scheduler, k, x0)) if teacher is None else _teacher_out(teacher, xk, k)
    loss = _weighted_mse(pred, tgt, w)
    return JointLoss(loss, {"image": loss.detach()})


def joint_loss(cfg: DiffusionConfig, denoiser, x0, y0, prompt, scheduler, generator=None,
               teacher: Teacher | None = None, draws: NoiseDraws | None = None, reduce: bool = True,
               parts: tuple[int, ...] | None = None) -> JointLoss:
    """The loss named by `cfg.objective`: "bjd" (eq. 3, batched) or "njd" (eq. 1), under cfg's recipe.
    `parts`: row counts of batches sharing one forward (see `channel_weights`)."""
    if cfg.objective == "bjd":
        return bjd_loss(denoiser, x0, y0, prompt, scheduler, batched=True, generator=generator, cfg=cfg,
                        teacher=teacher, draws=draws, reduce=reduce, parts=parts)
    if cfg.objective == "njd":
        return njd_loss(denoiser, x0, y0, prompt, scheduler, generator=generator, cfg=cfg, teacher=teacher,
                        draws=draws, reduce=reduce, parts=parts)
    raise ValueError(f"DiffusionConfig.objective: unknown {cfg.objective!r}; allowed: ['bjd', 'njd']")

