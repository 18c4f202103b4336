"""Recipes for the grey-scale twins: MR, CT, ultrasound, X-ray and OCT.

Each recipe takes the batch's Draws and the variant (vendor, sequence, organ, ...) and returns
(image (n, H, W) in [0, 1], mask (n, H, W) uint8); the caller replicates grey to 3 channels.
Intensities are built as a physical quantity first (MR signal, Hounsfield units, echogenicity,
attenuation) and then pass through the modality's noise model and display mapping.
"""
from __future__ import annotations

import numpy as np

from .primitives import (Draws, blob, blur, fill, fractal_field, gaussian_noise, grid_xy, paint, profile,
                         rician, smooth_field, soft, speckle)

# M&Ms vendors (sec. 4.1.1): signal scale, contrast (gamma), coil bias-field strength, noise level.
MR_VENDORS = {
    "Siemens": dict(scale=0.95, gamma=1.0, bias=0.15, noise=0.035),
    "Philips": dict(scale=0.75, gamma=1.35, bias=0.3, noise=0.05),
    "GE": dict(scale=1.1, gamma=0.75, bias=0.1, noise=0.03),
    "Canon": dict(scale=0.65, gamma=1.0, bias=0.45, noise=0.07),
}

# BraTS sequences: relative signal of each tissue. T1: white > grey matter, CSF and tumour dark;
# T1ce: as T1 plus an enhancing rim round the necrotic core; T2: fluid bright, oedema bright;
# FLAIR: like T2 with the CSF signal suppressed.
BRAIN_SEQUENCES = {
    "T1": dict(csf=0.12, gm=0.45, wm=0.62, edema=0.36, core=0.33, rim=0.38, necrosis=0.2, scalp=0.75),
    "T1ce": dict(csf=0.12, gm=0.45, wm=0.6, edema=0.4, core=0.5, rim=0.97, necrosis=0.12, scalp=0.75),
    "T2": dict(csf=0.95, gm=0.55, wm=0.38, edema=0.82, core=0.68, rim=0.6, necrosis=0.95, scalp=0.45),
    "FLAIR": dict(csf=0.07, gm=0.5, wm=0.4, edema=0.92, core=0.72, rim=0.75, necrosis=0.3, scalp=0.55),
}

# Abdominal CT: where the target organ sits (centre, half-axes, angle, bend; image left =
# patient right, up = anterior) and the Hounsfield units of organ and tumour.
CT_ORGANS = {  # organ and tumour HU; tumour radius as a fraction of the organ's short half-axis
    "pancreas": dict(hu=100, tumour_hu=35, tumour_size=(0.8, 1.2)),
    "kits": dict(hu=170, tumour_hu=70, tumour_size=(0.5, 0.9)),
    "lits": dict(hu=105, tumour_hu=45, tumour_size=(0.2, 0.45)),
}
HU_WINDOW = (40.0, 400.0)  # abdominal soft-tissue window (level, width)


def _mr_scanner(signal, d: Draws, scale=1.0, gamma=1.0, bias=0.15, noise=0.04):
    """Coil bias field, vendor scale and contrast, then Rician magnitude noise."""
    field = np.exp(bias * smooth_field(d, 2))  # smooth, positive coil sensitivity
    img = np.clip(signal * field * scale, 0, 1) ** np.float32(gamma)
    return rician(img, noise, d)


def cardiac_mr(d: Draws, variant: str):
    """Short-axis cine MR (M&Ms): 1 = left-ventricle blood pool, 2 = myocardium, 3 = right ventricle."""
    X, Y = grid_xy(d.size)
    size = d.size
    body = blob(X, Y, d.uniform(-0.05, 0.05), d.uniform(0.0, 0.1), d.uniform(1.05, 1.2), d.uniform(0.85, 0.95),
                0.0, d.harmonics(2, 0.03))
    lungs = np.minimum(blob(X, Y, -0.72, d.uniform(-0.25, -0.05), 0.34, 0.55, 0.2, d.harmonics(2, 0.05)),
                       blob(X, Y, 0.78, d.uniform(-0.25, -0.05), 0.32, 0.5, -0.2, d.harmonics(2, 0.05)))
    liver = blob(X, Y, -0.55, 0.75, 0.5, 0.35, 0.3)
    hx, hy = d.uniform(0.05, 0.25), d.uniform(-0.1, 0.1)
    r = d.uniform(0.17, 0.25)
    lv = blob(X, Y, hx, hy, r, r * d.uniform(0.9, 1.1), d.uniform(0, np.pi), d.harmonics(3, 0.05))
    # Myocardium: a ring 0.7-1.3 x t thick round the LV (t >= 0.05, so >= 1.1 px at 64^2).
    t = r * d.uniform(0.3, 0.45) * (1 + 0.3 * np.clip(smooth_field(d, 3), -1, 1))
    epi = lv - t
    # RV: a larger blob on the septal side, minus the LV and its wall: a crescent.
    rv_blob = blob(X, Y, hx - (r + 0.08) * d.uniform(0.8, 1.1), hy - d.uniform(0.0, 0.1),
                   d.uniform(0.2, 0.3), d.uniform(0.28, 0.4), d.uniform(-0.3, 0.3), d.harmonics(2, 0.05))
    rv = np.maximum(rv_blob, -epi)

    sig = fill(d.n, size, 0.0)
    sig = paint(sig, soft(body, 0.02, size), 0.55)  # subcutaneous fat
    sig = paint(sig, soft(body + 0.06, 0.02, size), 0.3 + 0.06 * fractal_field(d, (4, 8, 16)))  # muscle, mediastinum
    sig = paint(sig, soft(lungs, 0.04, size), 0.04)
    sig = paint(sig, soft(liver, 0.03, size) * soft(body, 0.02, size), 0.33)
    sig = paint(sig, soft(np.minimum(epi, rv_blob) - 0.04, 0.04, size), 0.62)  # epicardial fat
    sig = paint(sig, soft(epi, 0.015, size), 0.22)
    sig = paint(sig, soft(rv, 0.015, size), 0.82)
    sig = paint(sig, soft(lv, 0.015, size), 0.88)
    img = _mr_scanner(sig, d, **MR_VENDORS[variant])
    mask = np.where(lv < 0, 1, np.where(epi < 0, 2, np.where(rv < 0, 3, 0))).astype(np.uint8)
    return img, mask


def brain_mr(d: Draws, variant: str):
    """Axial brain MR (BraTS): 1 = whole tumour (oedema and core); contrast set by the sequence."""
    X, Y = grid_xy(d.size)
    size = d.size
    tissue = BRAIN_SEQUENCES[variant]
    cx, cy, rx, ry = d.uniform(-0.05, 0.05), d.uniform(-0.05, 0.05), d.uniform(0.62, 0.72), d.uniform(0.78, 0.88)
    head = blob(X, Y, cx, cy, rx, ry, d.uniform(-0.1, 0.1), d.harmonics(2, 0.02))
    brain = head + 0.09  # 0.04 scalp + 0.05 skull
    gyri = fractal_field(d, (6, 12))
    depth = -brain
    white = soft(0.1 + 0.07 * gyri - depth, 0.03, size)  # white matter under a folded cortex
    sulci = soft(np.abs(gyri) - 0.15, 0.15, size) * soft(depth - 0.12, 0.05, size) * soft(brain, 0.02, size)
    vent = np.minimum(blob(X, Y, cx - 0.09, cy - 0.05, 0.05, 0.2, 0.25, d.harmonics(2, 0.1)),
                      blob(X, Y, cx + 0.09, cy - 0.05, 0.05, 0.2, -0.25, d.harmonics(2, 0.1)))
    # Tumour centre within 35 % of the brain radii, clipped to stay >= 0.05 inside the brain.
    tx, ty = cx + rx * d.uniform(-0.35, 0.35), cy + ry * d.uniform(-0.35, 0.35)
    rt = d.uniform(0.13, 0.28)
    edema = np.maximum(blob(X, Y, tx, ty, rt, rt * d.uniform(0.8, 1.2), d.uniform(0, np.pi), d.harmonics(3, 0.12)),
                       brain + 0.05)
    rc = rt * d.uniform(0.45, 0.65)
    core = blob(X, Y, tx + 0.3 * (rt - rc), ty, rc, rc, 0.0, d.harmonics(3, 0.1))
    necrosis = core + rc * d.uniform(0.3, 0.5)

    sig = fill(d.n, size, 0.0)
    sig = paint(sig, soft(head, 0.02, size), tissue["scalp"])
    sig = paint(sig, soft(head + 0.04, 0.02, size), 0.03)  # cortical bone: no signal
    sig = paint(sig, soft(brain, 0.02, size), tissue["csf"])
    matter = tissue["gm"] + (tissue["wm"] - tissue["gm"]) * white
    sig = paint(sig, soft(brain + 0.03, 0.02, size), matter + 0.03 * gyri)
    sig = paint(sig, 0.7 * sulci, tissue["csf"])
    sig = paint(sig, soft(vent, 0.02, size), tissue["csf"])
    sig = paint(sig, soft(edema, 0.04, size), tissue["edema"] + 0.04 * gyri)
    sig = paint(sig, soft(core, 0.02, size), tissue["rim"])
    sig = paint(sig, soft(necrosis, 0.02, size), tissue["necrosis"])
    img = _mr_scanner(sig, d, scale=d.uniform(0.9, 1.05), bias=0.08, noise=0.03)
    return img, (edema < 0).astype(np.uint8)


def prostate_mr(d: Draws, variant: str = "T2"):
    """Axial T2 pelvic MR (PROMISE12): 1 = prostate (peripheral and transition zones)."""
    X, Y = grid_xy(d.size)
    size = d.size
    body = blob(X, Y, 0.0, d.uniform(-0.05, 0.05), d.uniform(1.2, 1.35), d.uniform(0.95, 1.05), 0.0,
                d.harmonics(2, 0.03))
    sig = paint(fill(d.n, size, 0.0), soft(body, 0.02, size), 0.62 + 0.08 * fractal_field(d, (4, 8, 16)))
    for side in (-1, 1):
        muscle = blob(X, Y, side * d.uniform(0.5, 0.58), 0.0, 0.14, 0.42, side * 0.25, d.harmonics(2, 0.05))
        levator = blob(X, Y, side * 0.3, 0.35, 0.05, 0.22, -side * 0.6)
        femur = blob(X, Y, side * 0.92, d.uniform(-0.1, 0.05), 0.26, 0.26)
        sig = paint(sig, soft(muscle, 0.03, size), 0.24 + 0.03 * fractal_field(d, (8,)))
        sig = paint(sig, soft(levator, 0.02, size), 0.22)
        sig = paint(sig, soft(femur, 0.02, size), 0.08)  # cortex
        sig = paint(sig, soft(femur + 0.035, 0.02, size), 0.5)  # marrow
    bladder = np.where(d.chance(0.5), blob(X, Y, 0.0, -0.55, d.uniform(0.25, 0.4), 0.22, 0.0, d.harmonics(2, 0.08)),
                       np.inf)
    sig = paint(sig, soft(bladder, 0.02, size), 0.95)
    rectum = blob(X, Y, 0.0, d.uniform(0.55, 0.65), 0.2, 0.15, 0.0, d.harmonics(2, 0.08))
    sig = paint(sig, soft(rectum, 0.02, size), 0.3)
    sig = paint(sig, soft(rectum + 0.06, 0.02, size), 0.06)  # air in the lumen
    pcx, pcy, prx, pry = d.uniform(-0.06, 0.06), d.uniform(0.0, 0.12), d.uniform(0.24, 0.34), d.uniform(0.2, 0.28)
    prostate = blob(X, Y, pcx, pcy, prx, pry, d.uniform(-0.15, 0.15), d.harmonics(3, 0.05))
    # Transition zone: darker, heterogeneous, anterior; the bright peripheral zone wraps behind it.
    tz = blob(X, Y, pcx, pcy - 0.3 * pry, prx * 0.7, pry * 0.6, 0.0, d.harmonics(2, 0.08))
    sig = paint(sig, soft(prostate - 0.02, 0.02, size), 0.18)  # capsule and periprostatic veins
    sig = paint(sig, soft(prostate, 0.02, size), 0.62 + 0.05 * fractal_field(d, (8, 16)))
    sig = paint(sig, soft(tz, 0.04, size), 0.36 + 0.08 * fractal_field(d, (8, 16)))
    img = _mr_scanner(sig, d, scale=d.uniform(0.85, 1.05), bias=0.35, noise=0.04)
    return img, (prostate < 0).astype(np.uint8)


def _inside_point(cx, cy, angle, bend, u, v):
    """Image coordinates of (u, v) given in a blob's own (rotated, bent) frame."""
    v = v + bend * u * u
    c, s = np.cos(angle), np.sin(angle)
    return cx + u * c - v * s, cy + u * s + v * c


def abdominal_ct(d: Draws, variant: str):
    """Contrast-enhanced abdominal CT slice: 1 = organ (pancreas / kidneys / liver), 2 = its tumour."""
    X, Y = grid_xy(d.size)
    size = d.size
    organ_hu = CT_ORGANS[variant]
    body = blob(X, Y, d.uniform(-0.04, 0.04), d.uniform(0.0, 0.08), d.uniform(0.82, 0.92), d.uniform(0.6, 0.7),
                0.0, d.harmonics(3, 0.03))
    hu = fill(d.n, size, -1000.0)
    hu = paint(hu, soft(body, 0.01, size), -100.0)  # subcutaneous fat
    viscera = body + d.uniform(0.04, 0.1)
    visceral_fat = soft(smooth_field(d, 6) - 0.4, 0.3, size)
    hu = paint(hu, soft(viscera, 0.02, size), 35.0 - 120.0 * visceral_fat)
    for side in (-1, 1):
        hu = paint(hu, soft(blob(X, Y, side * 0.17, 0.48, 0.13, 0.1, 0.0), 0.02, size), 50.0)  # paraspinal muscle
    spine = blob(X, Y, 0.0, 0.33, 0.1, 0.09)
    hu = paint(hu, soft(spine, 0.01, size), 700.0)
    hu = paint(hu, soft(spine + 0.025, 0.01, size), 230.0)
    hu = paint(hu, soft(blob(X, Y, 0.05, 0.15, 0.045, 0.045), 0.01, size), 190.0)  # aorta
    hu = paint(hu, soft(blob(X, Y, -0.1, 0.16, 0.05, 0.035), 0.01, size), 130.0)  # IVC
    for _ in range(4):  # bowel loops with gas
        loop = blob(X, Y, d.uniform(-0.3, 0.5), d.uniform(-0.45, -0.1), d.uniform(0.07, 0.12),
                    d.uniform(0.06, 0.1), d.uniform(0, np.pi), d.harmonics(2, 0.1))
        hu = paint(hu, soft(loop, 0.01, size), 30.0)
        hu = paint(hu, soft(loop + 0.035, 0.01, size) * d.chance(0.5), -900.0)

    # Context organs, then the target; only the target is labelled.
    big_liver = variant == "lits"
    liver_frame = (-0.4 + d.uniform(-0.05, 0.05), -0.05 + d.uniform(-0.05, 0.05),
                   d.uniform(0.38, 0.46) if big_liver else d.uniform(0.2, 0.28),
                   d.uniform(0.42, 0.5) if big_liver else d.uniform(0.22, 0.3), d.uniform(-0.3, 0.0), 0.0)
    liver = np.maximum(blob(X, Y, *liver_frame[:5], d.harmonics(3, 0.06)), viscera + 0.02)
    hu = paint(hu, soft(liver, 0.01, size), 105.0)
    hu = paint(hu, soft(blob(X, Y, 0.58, 0.15, 0.13, 0.2, -0.5, d.harmonics(2, 0.05)), 0.01, size), 110.0)  # spleen
    kidney_sides = []
    for side in (-1, 1):
        kf = (side * d.uniform(0.33, 0.4), d.uniform(0.22, 0.3), d.uniform(0.1, 0.13), d.uniform(0.15, 0.19),
              side * d.uniform(0.2, 0.5), -side * 0.9)
        k = blob(X, Y, *kf[:4], kf[4], d.harmonics(2, 0.04), bend=kf[5])  # bean: bent towards the hilum
        kidney_sides.append((kf, k))
        hu = paint(hu, soft(k, 0.01, size), 170.0)
        hu = paint(hu, soft(k + 0.035, 0.02, size), 110.0)  # medulla
    pf = (d.uniform(0.1, 0.2), d.uniform(0.0, 0.08), d.uniform(0.26, 0.34), d.uniform(0.08, 0.11),
          d.uniform(-0.35, -0.1), d.uniform(0.8, 1.6))
    pancreas = blob(X, Y, *pf[:5], d.harmonics(3, 0.05), bend=pf[5])
    hu = paint(hu, soft(pancreas, 0.01, size), 95.0)

    if variant == "kits":
        right = d.chance(0.5)
        organ = np.minimum(kidney_sides[0][1], kidney_sides[1][1])
        frames = [np.where(right, a, b).astype(np.float32) for a, b in zip(kidney_sides[1][0], kidney_sides[0][0])]
    elif variant == "lits":
        organ, frames = liver, liver_frame
    else:
        organ, frames = pancreas, pf
    cx, cy, rx, ry, angle, bend = frames
    # Tumour centre within 40 % of the organ's long half-axis, on the organ's midline.
    tx, ty = _inside_point(cx, cy, angle, bend, rx * d.uniform(-0.4, 0.4), 0.0)
    rt = np.minimum(rx, ry) * d.uniform(*organ_hu["tumour_size"])
    # Clipped to 0.045 (1.4 px at 64^2) inside the organ outline: organ tissue surrounds it.
    tumour = np.maximum(blob(X, Y, tx, ty, rt, rt * d.uniform(0.8, 1.2), 0.0, d.harmonics(3, 0.1)), organ + 0.045)
    tumour = np.where(d.chance(0.85), tumour, np.inf)
    hu = paint(hu, soft(organ, 0.01, size), organ_hu["hu"] + 8 * fractal_field(d, (8, 16)))
    hu = paint(hu, soft(tumour, 0.02, size), organ_hu["tumour_hu"] + 15 * fractal_field(d, (8, 16)))
    hu = gaussian_noise(blur(hu, 0.01), 12.0, d)
    level, width = HU_WINDOW
    img = (hu - (level - width / 2)) / width
    mask = np.where(tumour < 0, 2, np.where(organ < 0, 1, 0)).astype(np.uint8)
    return img, mask


def _b_mode(echo, d: Draws, depth):
    """Envelope with multiplicative Rayleigh speckle, depth attenuation with partial time-gain
    compensation, and log compression to display range."""
    env = np.maximum(echo, 0) * speckle(d, lateral_blur=0.02) * (1 - 0.35 * np.clip(depth, 0, 1))
    return np.log1p(12 * env) / np.float32(np.log1p(12))


def ultrasound_lesion(d: Draws, variant: str):
    """B-mode ultrasound: breast (BUSI; sector probe) or thyroid (DDTI; linear probe); 1 = lesion."""
    if variant not in ("breast", "thyroid"):
        raise ValueError(f"ultrasound_lesion variant must be one of ['breast', 'thyroid'], got {variant!r}")
    X, Y = grid_xy(d.size)
    size = d.size
    wave = 0.05 * profile(d, 4)
    if variant == "breast":
        apex = 1.6  # sector probe above the image: depth and angle about the apex
        rho, phi = np.sqrt(X * X + (Y + apex) ** 2), np.arctan2(X, Y + apex)
        fov = np.maximum(np.abs(phi) - 0.45, 0.6 - rho)
        depth = (rho - 0.6) / 2.0
        echo = fill(d.n, size, 0.85)  # skin line
        echo = paint(echo, soft(0.04 + wave - depth, 0.01, size), 0.0)
        echo = paint(echo, soft(0.05 + wave - depth, 0.02, size),
                     0.35 + 0.35 * soft(np.abs(smooth_field(d, 10)) - 0.1, 0.1, size))  # fat with septa
        gland = 0.25 + 0.1 * d.uniform(-1, 1) + wave
        echo = paint(echo, soft(gland - depth, 0.04, size), 0.55 + 0.15 * fractal_field(d, (6, 12)))
        echo = paint(echo, soft(0.72 + wave - depth, 0.03, size), 0.38 + 0.08 * np.cos(depth * 70 + 4 * wave))  # pectoralis
        lr, lphi = 0.6 + 2.0 * d.uniform(0.3, 0.55), d.uniform(-0.2, 0.2)
        lx, ly = lr * np.sin(lphi), lr * np.cos(lphi) - apex
        r = d.uniform(0.12, 0.26)
        lesion = blob(X, Y, lx, ly, r * d.uniform(1.0, 1.4), r, d.uniform(-0.3, 0.3),
                      d.harmonics(4, 0.2))
        # Posterior shadowing (or enhancement, negative strength) along the beam behind the lesion.
        behind = soft(np.abs(phi - lphi) - r / lr, 0.03, size) * soft(lr - rho, 0.1, size)
        echo = echo * (1 - d.uniform(-0.3, 0.6) * behind)
    else:
        depth = (Y + 1) / 2
        fov = np.maximum(-0.94 - Y, -1.0)  # a thin black band at the top (probe contact)
        echo = fill(d.n, size, 0.8)
        echo = paint(echo, soft(-0.86 + wave - Y, 0.01, size), 0.0)
        echo = paint(echo, soft(-0.84 + wave - Y, 0.02, size), 0.45)  # subcutis
        echo = paint(echo, soft(-0.7 + wave - Y, 0.03, size), 0.28 + 0.1 * np.cos(Y * 60))  # strap muscles
        side = d.sign()
        tx, ty, trx, try_ = side * d.uniform(-0.15, 0.05), d.uniform(-0.1, 0.05), d.uniform(0.5, 0.65), d.uniform(0.32, 0.4)
        thyroid = blob(X, Y, tx, ty, trx, try_, d.uniform(-0.1, 0.1), d.harmonics(2, 0.05))
        echo = paint(echo, soft(-0.5 + wave - Y, 0.03, size), 0.35 + 0.1 * fractal_field(d, (6, 12)))
        echo = paint(echo, soft(thyroid, 0.02, size), 0.62 + 0.06 * fractal_field(d, (8, 16)))
        trachea = blob(X, Y, -side * 0.85, -0.05, 0.28, 0.28)
        echo = paint(echo, soft(np.abs(trachea) - 0.02, 0.02, size) * (Y < -0.1), 0.95)  # cartilage: front arc
        shadow = np.maximum(soft(trachea + 0.02, 0.02, size), soft(np.abs(X + side * 0.85) - 0.15, 0.1, size) * (Y > -0.1))
        echo = paint(echo, shadow, 0.12)  # air in the trachea and its acoustic shadow
        carotid = blob(X, Y, side * 0.8, d.uniform(-0.05, 0.15), 0.14, 0.14)
        echo = paint(echo, soft(carotid, 0.01, size), 0.03)
        # Nodule: centre within 35 % of the lobe's half-axes, radius <= 0.55 of its short one.
        r = try_ * d.uniform(0.3, 0.55)
        lesion = np.maximum(blob(X, Y, tx + trx * d.uniform(-0.35, 0.35), ty + try_ * d.uniform(-0.3, 0.3),
                                 r * d.uniform(1.0, 1.3), r, d.uniform(-0.4, 0.4), d.harmonics(3, 0.1)),
                            thyroid)
        halo = soft(np.abs(lesion) - 0.015, 0.015, size) * d.chance(0.5)
        echo = paint(echo, halo, 0.08)
    nodule_echo = d.uniform(0.05, 0.25) + 0.08 * fractal_field(d, (8, 16))
    echo = paint(echo, soft(lesion, 0.03, size), nodule_echo)
    img = _b_mode(echo, d, depth) * soft(fov, 0.02, size)
    return img, ((lesion < 0) & (fov < 0)).astype(np.uint8)


def xray_lung(d: Draws, variant=None):
    """Frontal chest X-ray (QaTa-COV19): 1 = COVID-19 opacity inside the lung fields."""
    X, Y = grid_xy(d.size)
    size = d.size
    body = blob(X, Y, 0.0, d.uniform(0.3, 0.45), d.uniform(0.95, 1.1), 1.3, 0.0)
    lungs_lr = []
    for side in (-1, 1):
        cx, cy, rx, ry = side * d.uniform(0.42, 0.5), d.uniform(-0.05, 0.05), d.uniform(0.34, 0.4), d.uniform(0.62, 0.72)
        taper = np.clip(0.85 + 0.3 * (Y - cy) / ry, 0.55, 1.15)  # narrow apex, wide base
        lungs_lr.append(blob(cx + (X - cx) / taper, Y, cx, cy, rx, ry, 0.0, d.harmonics(2, 0.04)))
    heart = blob(X, Y, d.uniform(0.08, 0.18), d.uniform(0.3, 0.4), d.uniform(0.26, 0.34), 0.26, 0.3)
    lungs = np.maximum(np.minimum(*lungs_lr), -heart)
    att = fill(d.n, size, 0.06)
    att = paint(att, soft(body, 0.06, size), 0.62 + 0.04 * smooth_field(d, 4))
    att = paint(att, soft(np.abs(X) - 0.12, 0.06, size) * soft(-0.6 - Y, 0.2, size), 0.75)  # mediastinum
    lung_texture = 0.05 * fractal_field(d, (8, 16))
    att = paint(att, soft(lungs, 0.05, size), 0.18 + lung_texture)
    att = paint(att, 0.6 * soft(heart, 0.06, size), 0.7)
    # Ribs: bright arcs, a periodic band pattern bent downwards laterally; clavicles on top.
    arc = Y - d.uniform(0.5, 0.7) * (np.abs(X) - 0.1) ** 2
    ribs = np.clip(3 * np.cos(2 * np.pi * d.uniform(3.0, 3.6) * arc + d.uniform(0, 6)) - 1.8, 0, 1)
    att = att + 0.14 * ribs * soft(0.14 - np.abs(X), 0.06, size) * soft(Y - 0.6, 0.1, size) * soft(body, 0.05, size)
    clav = np.abs(Y + 0.75 - 0.3 * np.abs(X) * d.uniform(0.6, 1.2)) - 0.04
    att = paint(att, 0.7 * soft(clav, 0.03, size) * soft(np.abs(X) - 0.8, 0.05, size), 0.8)
    # Opacities: hazy patches, mostly in the lower zones, on one or both sides.
    side = d.sign()
    opacity = np.full((d.n, size, size), np.inf, np.float32)
    for k in range(2):
        present = d.chance(1.0 if k == 0 else 0.5)
        s = side if k == 0 else -side
        o = blob(X, Y, s * d.uniform(0.3, 0.5), d.uniform(-0.1, 0.4), d.uniform(0.16, 0.3), d.uniform(0.18, 0.36),
                 d.uniform(0, np.pi), d.harmonics(3, 0.15))
        opacity = np.minimum(opacity, np.where(present, o, np.inf))
    opacity = np.maximum(opacity, lungs)
    haze = soft(opacity, 0.1, size) * (0.7 + 0.3 * smooth_field(d, 10))
    att = att + d.uniform(0.2, 0.3) * haze
    img = np.clip(gaussian_noise(blur(att, 0.012), 0.015, d), 0, 1) ** d.uniform(0.8, 1.25) * d.uniform(0.9, 1.1)
    return img, (opacity < 0).astype(np.uint8)


def oct_layers(d: Draws, variant=None):
    """OCT B-scan (GOALS): 1 = retinal nerve fibre layer, 2 = ganglion cell-inner plexiform layer, 3 = choroid."""
    X, Y = grid_xy(d.size)
    size = d.size
    pit = np.exp(-((X - d.uniform(-0.3, 0.3)) / 0.18) ** 2)  # foveal pit: inner layers thin out
    top = d.uniform(-0.55, -0.35) + d.uniform(0.0, 0.25) * X * X + d.uniform(-0.1, 0.1) * X \
        + 0.04 * profile(d, 4) + 0.1 * pit
    rnfl = (0.05 + 0.02 * X * d.sign() + 0.012 * profile(d, 6)) * (1 - 0.75 * pit)
    gcipl = (0.07 + 0.012 * profile(d, 6)) * (1 - 0.6 * pit)
    outer = 0.2 + 0.015 * profile(d, 5)
    choroid = d.uniform(0.14, 0.22) + 0.03 * profile(d, 6)
    z = Y - top
    b1 = np.maximum(rnfl, 0.012)
    b2 = b1 + np.maximum(gcipl, 0.02)
    b3 = b2 + outer
    b4 = b3 + 0.035  # RPE
    b5 = b4 + choroid
    layers = [(0.0, 0.85), (b1, 0.48), (b2, 0.22), (b2 + 0.3 * outer, 0.5), (b2 + 0.4 * outer, 0.14),
              (b3 - 0.03, 0.72), (b3, 0.95), (b4, 0.5), (b5, 0.28)]
    refl = fill(d.n, size, 0.04)
    for boundary, value in layers:  # each layer from its upper boundary downwards
        refl = paint(refl, soft(boundary - z, 0.012, size), value)
    vessels = soft(smooth_field(d, 14) - 0.5, 0.3, size) * (z > b4) * (z < b5)
    refl = refl * (1 - 0.6 * vessels) * (1 - 0.6 * np.clip(z - b5, 0, 1))
    img = _b_mode(refl, d, 0.3 * (Y + 1))
    mask = np.select([(z >= 0) & (z < b1), (z >= b1) & (z < b2), (z >= b4) & (z < b5)], [1, 2, 3], 0)
    return img, mask.astype(np.uint8)
