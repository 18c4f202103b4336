"""Recipes for the colour (photographic and optical-microscopy) twins.

Each recipe takes the batch's Draws and the variant (site, device) and returns
(image (n, 3, H, W) in [0, 1], mask (n, H, W) uint8). Parameter ranges are eyeballed
from the public datasets; the point is a recognisable modality and the task's class layout.
"""
from __future__ import annotations

import numpy as np

from .primitives import (Draws, bent_line_distance, blob, blur, camera, fill, fractal_field, gaussian_noise,
                         grid_xy, paint, rgb, smooth_field, soft, spiral_distance, stain, vignette)

# Cross-site shift of the multi-site fundus set (sec. 4.1.1): colour cast, exposure, gamma,
# contrast, optical blur and vignetting of each camera.
FUNDUS_SITES = {
    "Aravind Eye Hospital": dict(gains=(1.0, 0.92, 0.85), brightness=1.05, contrast=1.15, gamma=1.0,
                                 blur=0.0, vignette=0.25),
    "Nidek AFC-210": dict(gains=(1.08, 0.62, 0.52), brightness=0.85, contrast=0.9, gamma=1.15,
                          blur=0.03, vignette=0.15),
    "Canon CR-2": dict(gains=(1.0, 1.08, 0.72), brightness=1.12, contrast=1.0, gamma=0.8,
                       blur=0.012, vignette=0.5),
    "Zeiss Visucam 500": dict(gains=(0.85, 0.72, 0.75), brightness=0.75, contrast=0.8, gamma=1.25,
                              blur=0.02, vignette=0.65),
    "Canon CR5": dict(gains=(1.0, 0.95, 0.8), brightness=1.0, contrast=1.05, gamma=1.0,
                      blur=0.0, vignette=0.3),
}


def _polar(X, Y, cx, cy):
    dx, dy = X - cx, Y - cy
    return np.sqrt(dx * dx + dy * dy), np.arctan2(dy, dx)


def _darken_vessels(img, coverage, strength=0.6):
    """Vessels absorb green and blue more than red: they show as dark red."""
    return img * (1 - strength * coverage[:, None] * rgb(0.55, 1.0, 0.9))


def _fundus_camera(img, d: Draws, X, Y, site: dict):
    img = img * vignette(X, Y, site["vignette"])[:, None]
    img = camera(img, site["gains"], site["brightness"] * d.uniform(0.9, 1.1)[:, None], site["contrast"],
                 site["gamma"])
    return gaussian_noise(blur(img, site["blur"]), 0.012, d)


def fundus(d: Draws, variant: str):
    """Disc-centred fundus crop: label 1 = optic disc rim (disc outside the cup), 2 = optic cup."""
    X, Y = grid_xy(d.size)
    n, size = d.n, d.size
    cx, cy = d.uniform(-0.15, 0.15), d.uniform(-0.15, 0.15)
    r, tall, angle = d.uniform(0.28, 0.38), d.uniform(1.0, 1.15), d.uniform(-0.3, 0.3)
    disc = blob(X, Y, cx, cy, r, r * tall, angle, d.harmonics(3, 0.03))
    # Cup/disc ratio 0.3-0.55, offset temporally. Worst case the cup reaches 0.77 r from the disc
    # centre (0.55 * 1.15 * (1 + harmonic bound) + offset 0.1 r) while the disc is at least
    # 0.95 r wide: a rim of >= 1.5 px at 64^2, so the cup never touches the background.
    temporal = d.sign()
    ratio = d.uniform(0.3, 0.55)
    ccx, ccy = cx + temporal * r * d.uniform(-0.03, 0.09), cy + r * d.uniform(-0.04, 0.04)
    cup = blob(X, Y, ccx, ccy, r * ratio, r * ratio * tall, angle, d.harmonics(3, 0.04))

    light = 1 + 0.12 * smooth_field(d, 3) + 0.05 * fractal_field(d, (8, 16))
    img = fill(n, size, rgb(0.80, 0.34, 0.13)) * light[:, None]
    glow = np.exp(-np.maximum(disc, 0) / 0.1)  # peripapillary brightening
    img = paint(img, 0.3 * glow, rgb(0.95, 0.6, 0.3))
    img = paint(img, soft(disc, 0.04, size), rgb(0.98, 0.72, 0.42) * (1 + 0.04 * light[:, None]))
    img = paint(img, 0.9 * soft(cup, 0.06, size), rgb(1.0, 0.93, 0.78))
    # Vessels leave the cup upwards and downwards and arch towards the temporal side
    # (temporal arcades), thinner ones run nasally; all taper away from the disc.
    rho, theta = _polar(X, Y, ccx, ccy)
    cover = np.zeros((n, size, size), np.float32)
    for up in (-1, 1):
        for t0, c in [(0.1, (0.2, 0.6)), (0.35, (0.1, 0.4)), (-0.3, (-0.4, 0.0))]:
            base = up * (np.pi / 2 - temporal * (t0 + d.uniform(-0.1, 0.1)))
            bend = -up * temporal
            dist = spiral_distance(rho, theta, base, bend * d.uniform(*c), bend * d.uniform(0.0, 0.6), start=0.03)
            half = d.uniform(0.02, 0.032) * (1.2 - 0.4 * np.minimum(rho, 1.5))
            cover = np.maximum(cover, soft(dist - half, 0.02, size))
    img = _darken_vessels(img, cover)
    img = _fundus_camera(img, d, X, Y, FUNDUS_SITES[variant])
    mask = np.where(cup < 0, 2, np.where(disc < 0, 1, 0)).astype(np.uint8)
    return img, mask


def fundus_vessels(d: Draws, variant: str):
    """Whole-retina fundus photograph (DRIVE): label 1 = the retinal vessel tree."""
    X, Y = grid_xy(d.size)
    n, size = d.n, d.size
    Xs = X * d.sign()  # left or right eye: mirror so the disc is always on the nasal side of Xs
    fov = np.sqrt(X * X + Y * Y) - 0.94
    dcx, dcy = d.uniform(0.45, 0.6), d.uniform(-0.12, 0.12)
    disc = blob(Xs, Y, dcx, dcy, d.uniform(0.09, 0.12), d.uniform(0.1, 0.13), 0.0, d.harmonics(2, 0.03))
    mac = blob(Xs, Y, dcx - d.uniform(0.8, 0.95), dcy + d.uniform(0.0, 0.1), 0.22, 0.22)

    light = 1 + 0.1 * smooth_field(d, 3) + 0.04 * fractal_field(d, (8, 16))
    img = fill(n, size, rgb(0.78, 0.33, 0.12)) * light[:, None]
    img = paint(img, 0.35 * soft(mac, 0.25, size), rgb(0.45, 0.16, 0.06))
    img = paint(img, soft(disc, 0.04, size), rgb(0.98, 0.8, 0.5))
    # Vessel tree: two arcades (superior / inferior) curving round the macula, two nasal
    # vessels, and two branches off every main vessel; widths taper away from the disc.
    rho, theta = _polar(Xs, Y, dcx, dcy)
    cover = np.zeros((n, size, size), np.float32)
    mask = np.zeros((n, size, size), bool)
    mains = [(-np.pi / 2, -1.1), (np.pi / 2, 1.1), (-np.pi / 5, -0.3), (np.pi / 5, 0.3)]
    for base, curl0 in mains:
        t0, curl = base + d.uniform(-0.25, 0.25), curl0 * d.uniform(0.8, 1.3)
        curl2 = d.uniform(-0.3, 0.3)
        segs = [(t0, curl, curl2, 0.06, d.uniform(0.045, 0.06))]
        for _ in range(2):  # a branch starts on its parent at rho_s and leaves it at a different rate
            rs = d.uniform(0.2, 0.8)
            rate = curl + 2 * curl2 * rs + d.sign() * d.uniform(0.8, 2.2)
            segs.append((t0 + curl * rs + curl2 * rs * rs - rate * rs, rate, 0.0, rs, d.uniform(0.03, 0.042)))
        for t, c, c2, start, width in segs:
            dist = spiral_distance(rho, theta, t, c, c2, start)
            half = np.maximum(width * (1 - 0.35 * np.minimum(rho, 1.5)), 1.6 / size) / 2  # >= ~1 px: stays connected
            mask |= dist < half
            cover = np.maximum(cover, soft(dist - half, 0.015, size))
    img = _darken_vessels(img, cover, 0.55)
    img = _fundus_camera(img, d, X, Y, FUNDUS_SITES[variant])
    inside = fov < 0
    img = img * soft(fov, 0.02, size)[:, None]  # black outside the circular field of view
    return img, (mask & inside).astype(np.uint8)


def histology_glands(d: Draws, variant=None):
    """H&E colon histology (GlaS): label 1 = gland (epithelium and lumen)."""
    X, Y = grid_xy(d.size)
    n, size = d.n, d.size
    fibre = fractal_field(d, (6, 12, 24))
    hema = 0.12 + 0.05 * fibre + 1.2 * soft(2.0 - smooth_field(d, 28), 0.3, size)  # stroma with scattered nuclei
    eosin = 0.55 + 0.2 * fibre
    epi_nuclei = soft(0.3 - smooth_field(d, 32), 0.4, size)
    glands = np.zeros((n, size, size), bool)
    for i, (sx, sy) in enumerate([(-0.55, -0.5), (0.5, -0.55), (-0.5, 0.5), (0.55, 0.5), (0.0, 0.0)]):
        present = d.chance(1.0 if i == 4 else 0.7)
        g = blob(X, Y, sx + d.uniform(-0.15, 0.15), sy + d.uniform(-0.15, 0.15), d.uniform(0.25, 0.42),
                 d.uniform(0.18, 0.3), d.uniform(0, np.pi), d.harmonics(4, 0.12))
        g = np.where(present, g, np.inf)
        wall = d.uniform(0.09, 0.15)
        epithelium = soft(g, 0.02, size) * soft(-(g + wall), 0.03, size)
        basal = soft(-(g + 0.6 * wall), 0.03, size)  # nuclei crowd the basal half of the epithelium
        lumen = soft(g + wall, 0.03, size)
        hema = paint(hema, epithelium, 0.35 + 1.4 * epi_nuclei * basal)
        eosin = paint(eosin, epithelium, 0.45)
        hema = paint(hema, lumen, 0.03)
        eosin = paint(eosin, lumen, 0.05 + 0.1 * d.uniform(0, 1))
        glands |= g < 0
    # Staining varies from slide to slide: scale both stain amounts per sample.
    img = stain(hema * d.uniform(0.8, 1.2), eosin * d.uniform(0.75, 1.2))
    img = gaussian_noise(blur(img, 0.01), 0.015, d)
    return img, glands.astype(np.uint8)


def endoscopy_polyp(d: Draws, variant=None):
    """Colonoscopy frame (Kvasir / CVC style): label 1 = polyp."""
    X, Y = grid_xy(d.size)
    size = d.size
    tone = rgb(0.82, 0.42, 0.36) * np.stack([d.uniform(0.9, 1.1), d.uniform(0.8, 1.15),
                                              d.uniform(0.8, 1.15)], 1)
    tex = fractal_field(d, (4, 8, 16))
    img = tone * (1 + 0.08 * tex)[:, None]
    capillaries = soft(np.abs(smooth_field(d, 12)) - 0.06, 0.05, size)
    img = img * (1 - 0.25 * capillaries[:, None] * rgb(0.3, 1, 1))
    # Lumen: a dark hole with fold rings around it.
    lx, ly = d.uniform(-0.7, 0.7), d.uniform(-0.7, 0.7)
    lum = blob(X, Y, lx, ly, d.uniform(0.12, 0.25), d.uniform(0.12, 0.25), 0.0, d.harmonics(2, 0.1))
    folds = 0.5 + 0.5 * np.cos(np.maximum(lum, 0) * d.uniform(8, 14) + 2 * smooth_field(d, 3))
    img = img * (0.85 + 0.18 * folds)[:, None]
    img = paint(img, soft(lum, 0.35, size), rgb(0.12, 0.04, 0.03))
    # Polyp: a lit dome, paler and smoother than the mucosa, with a shadow under it.
    r = d.uniform(0.15, 0.35)
    pcx, pcy = d.uniform(-0.5, 0.5), d.uniform(-0.5, 0.5)
    polyp = blob(X, Y, pcx, pcy, r, r * d.uniform(0.8, 1.2), d.uniform(0, np.pi), d.harmonics(3, 0.06))
    dome = np.sqrt(np.clip(-polyp / r, 0, 1))
    shadow = soft(blob(X, Y, pcx + 0.03, pcy + 0.05, r * 1.1, r * 1.1), 0.08, size)
    img = img * (1 - 0.35 * shadow)[:, None]
    polyp_colour = rgb(0.9, 0.52, 0.45) * (0.7 + 0.4 * dome)[:, None]
    img = paint(img, soft(polyp, 0.03, size), polyp_colour)
    # Specular highlights: wet-surface reflections, mostly on the dome.
    spots = soft(2.0 - smooth_field(d, 20) - 0.8 * dome, 0.25, size)
    img = paint(img, spots, rgb(1.0, 1.0, 0.97))
    img = img * vignette(X, Y, d.uniform(0.4, 0.7), 1.5)[:, None]
    img = gaussian_noise(img, 0.01, d)
    img = img * soft(np.abs(X) + np.abs(Y) - 1.75, 0.02, size)[:, None]  # black scope corners
    return img, (polyp < 0).astype(np.uint8)


def dermoscopy_lesion(d: Draws, variant=None):
    """Dermoscopy (ISIC 2018): label 1 = skin lesion; hairs and a round scope vignette on top."""
    X, Y = grid_xy(d.size)
    n, size = d.n, d.size
    skin = paint(rgb(0.93, 0.76, 0.66), d.uniform(0, 1), rgb(0.72, 0.5, 0.38))
    img = skin * (1 + 0.05 * fractal_field(d, (4, 16)))[:, None]
    lesion = blob(X, Y, d.uniform(-0.25, 0.25), d.uniform(-0.25, 0.25), d.uniform(0.28, 0.55),
                  d.uniform(0.25, 0.5), d.uniform(0, np.pi), d.harmonics(4, 0.18))
    depth = np.clip(-lesion / 0.3, 0, 1)  # pigment darkens towards the centre, mottled
    mottle = fractal_field(d, (6, 12, 24))
    pigment = paint(rgb(0.58, 0.38, 0.26), depth * (0.7 + 0.3 * mottle), rgb(0.26, 0.15, 0.1))
    veil = soft(1.0 - smooth_field(d, 5), 0.4, size) * depth
    pigment = paint(pigment, 0.5 * veil, rgb(0.42, 0.42, 0.52))  # blue-grey veil
    img = paint(img, soft(lesion, d.uniform(0.03, 0.1), size), pigment)
    cover = np.zeros((n, size, size), np.float32)
    for _ in range(6):
        present = d.chance(0.35)
        dist = bent_line_distance(X, Y, d.uniform(-0.8, 0.8), d.uniform(-0.8, 0.8), d.uniform(0, np.pi),
                                  d.uniform(-0.6, 0.6), d.uniform(0.4, 1.2))
        cover = np.maximum(cover, np.where(present, soft(dist - 0.008, 0.02, size), 0))
    img = paint(img, 0.85 * cover, rgb(0.16, 0.1, 0.07))
    img = gaussian_noise(blur(img, 0.01), 0.012, d)
    scope = np.where(d.chance(0.5), np.sqrt(X * X + Y * Y) - d.uniform(1.0, 1.4), -1.0)
    img = img * soft(scope, 0.08, size)[:, None]
    return img, (lesion < 0).astype(np.uint8)


def microscopy_cells(d: Draws, variant=None):
    """Bone-marrow smear (SegPC): label 1 = plasma-cell cytoplasm, 2 = nucleus."""
    X, Y = grid_xy(d.size)
    n, size = d.n, d.size
    img = rgb(0.93, 0.87, 0.92) * (1 + 0.03 * smooth_field(d, 4))[:, None]
    for _ in range(6):  # red blood cells: pale discs with central pallor, unlabelled
        present = d.chance(0.6)
        rbc = blob(X, Y, d.uniform(-0.9, 0.9), d.uniform(-0.9, 0.9), d.uniform(0.07, 0.1), d.uniform(0.07, 0.1))
        rbc = np.where(present, rbc, np.inf)
        img = paint(img, soft(rbc, 0.03, size) * (0.5 + 0.5 * np.clip(rbc / -0.05, 0, 1)), rgb(0.9, 0.62, 0.7))
    cyto = np.zeros((n, size, size), bool)
    nucleus = np.zeros((n, size, size), bool)
    chromatin = fractal_field(d, (10, 20))
    for i, (sx, sy) in enumerate([(-0.42, -0.35), (0.42, -0.3), (0.0, 0.45)]):
        present = d.chance(1.0 if i == 0 else 0.6)
        r, aspect, angle = d.uniform(0.17, 0.26), d.uniform(1.0, 1.08), d.uniform(0, np.pi)
        cx, cy = sx + d.uniform(-0.12, 0.12), sy + d.uniform(-0.12, 0.12)
        cell = np.where(present, blob(X, Y, cx, cy, r * aspect, r / aspect, angle, d.harmonics(3, 0.03)), np.inf)
        # Eccentric nucleus: at most 0.65 r from the cell centre while the cell is >= 0.88 r
        # wide, so a cytoplasm rim of >= 1 px (64^2) always surrounds it.
        off, phi = r * d.uniform(0.0, 0.12), d.uniform(0, 2 * np.pi)
        nr = r * d.uniform(0.4, 0.5)
        nuc = blob(X, Y, cx + off * np.cos(phi), cy + off * np.sin(phi), nr, nr, 0.0, d.harmonics(3, 0.04))
        nuc = np.where(present, nuc, np.inf)
        img = paint(img, soft(cell, 0.03, size), rgb(0.62, 0.56, 0.82) * (1 + 0.05 * chromatin)[:, None])
        img = paint(img, soft(nuc, 0.03, size), rgb(0.32, 0.16, 0.46) * (1 + 0.15 * chromatin)[:, None])
        cyto |= cell < 0
        nucleus |= nuc < 0
    stain_batch = np.stack([d.uniform(0.95, 1.05), d.uniform(0.92, 1.05), d.uniform(0.95, 1.05)], 1)
    img = img * stain_batch
    img = gaussian_noise(blur(img, 0.008), 0.012, d)
    mask = np.where(nucleus, 2, np.where(cyto, 1, 0)).astype(np.uint8)
    return img, mask
