"""Building blocks of the procedural twins: random draws, shapes, textures, noise models, colour.

Every function works on a whole batch at once: per-sample parameters are arrays of shape
(n, 1, 1) that broadcast against the pixel grid (1, H, W). Geometry lives in continuous
normalised coordinates, x and y in [-1, 1] (y grows downwards, as image rows do), so a scene
does not depend on the resolution it is rendered at; only pixel noise does.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

N_PARAMS = 160  # uniform numbers drawn per sample up front; a recipe may use at most this many
_ANGLE_BINS = 512  # angular resolution of a blob's tabulated radius (a power of two)


class Draws:
    """The random numbers of a batch of samples, each from its own generator.

    Sample i uses a generator seeded by (seed, task key, index), so it renders the same
    whatever batch it is part of. Everything is drawn in an order and amount that does not
    depend on the resolution (uniforms first, then texture grids and noise offsets as the
    recipe asks for them), so a scene is the same at every size.
    """

    def __init__(self, seed: int, key: int, indices, size: int):
        self.size = int(size)
        self._seeds = [(int(seed), int(key), int(i)) for i in indices]
        self._scene = [np.random.default_rng(s) for s in self._seeds]
        self._u = np.stack([g.random(N_PARAMS, dtype=np.float32) for g in self._scene]) if self._scene \
            else np.zeros((0, N_PARAMS), np.float32)
        self._col = 0

    @property
    def n(self) -> int:
        return len(self._seeds)

    def _next(self) -> np.ndarray:
        if self._col >= N_PARAMS:
            raise RuntimeError(f"a synthetic recipe used more than N_PARAMS={N_PARAMS} random parameters")
        col = self._u[:, self._col]
        self._col += 1
        return col[:, None, None]

    def uniform(self, lo: float, hi: float) -> np.ndarray:
        """(n, 1, 1) uniform in [lo, hi)."""
        return lo + (hi - lo) * self._next()

    def chance(self, p: float) -> np.ndarray:
        """(n, 1, 1) bool, True with probability p."""
        return self._next() < p

    def sign(self) -> np.ndarray:
        return np.where(self._next() < 0.5, -1.0, 1.0).astype(np.float32)

    def harmonics(self, orders: int, amplitude: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Random Fourier coefficients (a_k, b_k) of a boundary, for k = 2 .. orders + 1.

        |a_k|, |b_k| <= amplitude / k, so boundaries are irregular but not ragged and the radius
        deviates from 1 by at most harmonic_bound(orders, amplitude); recipes use that bound
        to keep nested shapes (cup in disc, nucleus in cell) apart.
        """
        return [(self.uniform(-amplitude, amplitude) / k, self.uniform(-amplitude, amplitude) / k)
                for k in range(2, orders + 2)]

    def grid(self, cells: int) -> np.ndarray:
        """(n, cells, cells) standard normals from the scene generator (resolution independent)."""
        return np.stack([g.standard_normal((cells, cells), dtype=np.float32) for g in self._scene])

    def line(self, cells: int) -> np.ndarray:
        """(n, cells) standard normals from the scene generator (a 1D random profile)."""
        return np.stack([g.standard_normal(cells, dtype=np.float32) for g in self._scene])

    def pixels(self, channels: int = 1) -> np.ndarray:
        """(n, channels, H, W) standard normal pixel noise: windows at random offsets in a fixed
        bank of N(0, 1) numbers, ~20x cheaper than drawing fresh normals for every pixel."""
        bank = _noise_bank(self.size)
        span = bank.shape[0] - self.size + 1
        out = np.empty((self.n, channels, self.size, self.size), np.float32)
        for i, g in enumerate(self._scene):
            for c, (oy, ox) in enumerate((g.random((channels, 2)) * span).astype(int)):
                out[i, c] = bank[oy:oy + self.size, ox:ox + self.size]
        return out


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of N(0, 1) numbers (its own seed: part of the generator's definition)."""
    side = max(512, 4 * size)
    return np.random.default_rng(20_240_607).standard_normal((side, side), dtype=np.float32)


# ---------------------------------------------------------------- coordinates and shapes

@lru_cache(maxsize=16)
def grid_xy(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates X, Y of shape (1, size, size) in [-1, 1]."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    return t[None, None, :].repeat(size, 1), t[None, :, None].repeat(size, 2)


def frame(X, Y, cx, cy, angle=0.0):
    """Coordinates (u, v) relative to a centre, rotated by `angle` (radians)."""
    dx, dy = X - cx, Y - cy
    if np.ndim(angle) == 0 and angle == 0:
        return dx, dy
    angle = np.asarray(angle, np.float32)  # a float64 scalar would promote the whole batch
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, dy * c - dx * s


def blob(X, Y, cx, cy, rx, ry, angle=0.0, harm=(), bend=0.0):
    """Approximate signed distance (< 0 inside, normalised units) to a star-shaped blob.

    An ellipse with half-axes rx, ry, rotated by `angle`, optionally bent along its long axis
    (v -> v - bend * u^2, a bean / banana), whose radius is modulated by Fourier harmonics:
    r(theta) = 1 + sum_k a_k cos(k theta) + b_k sin(k theta).
    """
    u, v = frame(X, Y, cx, cy, angle)
    if np.any(bend):
        v = v - bend * u * u
    u, v = u / rx, v / ry
    rho = np.sqrt(u * u + v * v)
    radius = _radius_lookup(harm, u, v) if harm else 1.0
    return (rho - radius) * np.asarray(np.minimum(rx, ry), np.float32)


def per_sample_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b where one operand is a fixed matrix and the other holds samples along axis 0, with
    each sample's product computed on its own. numpy hands a batched product to BLAS as one
    large matrix; OpenBLAS picks its kernel (and so its summation order) from the shape and the
    CPU, so a sample's pixels would depend on the batch it was rendered in (seen on an AMD EPYC:
    3 pixels of a BUSI batch off by 1.8e-7). Per sample the shapes, hence the kernels, are fixed."""
    if b.ndim == 2:
        return np.stack([x @ b for x in a]) if len(a) else a @ b
    return np.stack([a @ x for x in b]) if len(b) else a @ b


@lru_cache(maxsize=8)
def _harmonic_basis(orders: int) -> np.ndarray:
    """(2 * orders, bins): cos(k theta), sin(k theta) for k = 2 .. orders + 1 at the bin centres."""
    theta = (np.arange(_ANGLE_BINS) + 0.5) * (2 * np.pi / _ANGLE_BINS) - np.pi
    k = np.arange(2, orders + 2)[:, None]
    return np.concatenate([np.cos(k * theta), np.sin(k * theta)]).astype(np.float32)


def _radius_lookup(harm, u, v):
    """r(theta) = 1 + sum_k a_k cos(k theta) + b_k sin(k theta) at every pixel. The series is
    tabulated at 512 angles per sample and looked up: one arctan2 and one gather instead of
    ten array operations per harmonic."""
    coef = np.concatenate([np.concatenate([a for a, _ in harm], 1), np.concatenate([b for _, b in harm], 1)], 1)
    table = 1 + per_sample_matmul(coef[:, :, 0], _harmonic_basis(len(harm)))  # (n, bins)
    scale = np.float32(_ANGLE_BINS / (2 * np.pi))
    idx = ((np.arctan2(v, u) + np.float32(np.pi)) * scale).astype(np.int32) & (_ANGLE_BINS - 1)
    return np.take(table.ravel(), idx + (np.arange(len(table), dtype=np.int32) * _ANGLE_BINS)[:, None, None])


def harmonic_bound(orders: int, amplitude: float) -> float:
    """Largest |r(theta) - 1| that Draws.harmonics(orders, amplitude) can produce."""
    return float(np.sqrt(2) * amplitude * sum(1 / k for k in range(2, orders + 2)))


def soft(d, width, size):
    """Anti-aliased inside-ness in [0, 1] of a signed distance; edges at least one pixel wide."""
    w = np.maximum(np.asarray(width, np.float32), np.float32(2.0 / size))
    return np.clip(0.5 - d / w, 0.0, 1.0)


def wrap(angle):
    """Angle wrapped to [-pi, pi)."""
    return angle - np.float32(2 * np.pi) * np.round(angle / np.float32(2 * np.pi))


def spiral_distance(rho, theta, theta0, curl, curl2=0.0, start=0.0):
    """Distance from pixels (polar rho, theta about a centre) to the curve
    theta(r) = theta0 + curl*r + curl2*r^2 for r >= start; inf before the curve starts.
    Vessels leaving an optic disc are such curves. The arc length rho * |dtheta| is divided by
    sqrt(1 + (r theta'(r))^2), which turns it into the distance across a curve that winds
    steeply round the centre (else such stretches come out too thin)."""
    slope = rho * (curl + 2 * curl2 * rho)
    d = np.abs(wrap(theta - theta0 - curl * rho - curl2 * rho * rho)) * rho / np.sqrt(1 + slope * slope)
    return np.where(rho >= start, d, np.inf)


def bent_line_distance(X, Y, cx, cy, angle, bend, half_length):
    """Distance to a parabolic arc (a hair, a fibre) of the given half length; inf beyond its ends."""
    u, v = frame(X, Y, cx, cy, angle)
    d = np.abs(v - bend * u * u)
    return np.where(np.abs(u) <= half_length, d, np.inf)


# ---------------------------------------------------------------- textures and filters

def _no_denormals(m: np.ndarray) -> np.ndarray:
    """float32 copy with negligible Gaussian tails set to 0: denormal floats would make every
    matrix product with them ~30x slower on x86."""
    m = m.astype(np.float32)
    m[np.abs(m) < 1e-7] = 0.0
    return np.ascontiguousarray(m)


@lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) Gaussian-RBF weights of grid nodes at pixel centres, scaled so that an
    i.i.d. N(0, 1) grid gives a field of about unit variance at every resolution."""
    def weights(n):
        x = (np.arange(n) + 0.5) / n
        nodes = (np.arange(cells) + 0.5) / cells
        w = np.exp(-0.5 * ((x[:, None] - nodes[None, :]) * cells / 0.75) ** 2)
        return w / w.sum(1, keepdims=True)
    ref = weights(cells * 16)  # the normalisation comes from a fixed fine sampling, not from `size`
    scale = 1.0 / np.sqrt(np.mean((ref ** 2).sum(1)))
    return _no_denormals(weights(size) * scale)


def smooth_field(draws: Draws, cells: int) -> np.ndarray:
    """(n, H, W) smooth random field of about unit variance with `cells` features per side:
    an N(0, 1) grid interpolated to pixels (two matrix products, so it costs almost nothing)."""
    m = _interp_matrix(draws.size, cells)
    return per_sample_matmul(per_sample_matmul(m, draws.grid(cells)), m.T)


def fractal_field(draws: Draws, cells=(4, 8, 16), gain: float = 0.5) -> np.ndarray:
    """Sum of smooth fields, each octave `gain` times weaker, normalised to unit variance."""
    amps = [gain ** i for i in range(len(cells))]
    total = sum(a * smooth_field(draws, c) for a, c in zip(amps, cells))
    return total / np.float32(np.sqrt(sum(a * a for a in amps)))


def profile(draws: Draws, cells: int) -> np.ndarray:
    """(n, 1, W) smooth random 1D profile along x (layer thicknesses, boundaries)."""
    m = _interp_matrix(draws.size, cells)
    return per_sample_matmul(draws.line(cells), m.T)[:, None, :]


@lru_cache(maxsize=64)
def _gauss_matrix(size: int, sigma_px: float) -> np.ndarray:
    i = np.arange(size)
    k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma_px) ** 2)
    return _no_denormals(k / k.sum(1, keepdims=True))  # renormalised rows: no dark border


def blur(img: np.ndarray, sigma: float, axis: str = "xy") -> np.ndarray:
    """Gaussian blur of (..., H, W); sigma in normalised units (the image is 2 units wide)."""
    size = img.shape[-1]
    sigma_px = round(float(sigma) * size / 2, 2)
    if sigma_px < 0.3:
        return img
    k = _gauss_matrix(size, sigma_px)
    out = per_sample_matmul(img, k.T) if "x" in axis else img
    return per_sample_matmul(k, out) if "y" in axis else out


# ---------------------------------------------------------------- noise models

def rician(signal: np.ndarray, sigma, draws: Draws) -> np.ndarray:
    """MR magnitude image: |signal + complex Gaussian noise| (Rician; dark areas get a noise floor)."""
    n = draws.pixels(2)
    re = signal + sigma * n[:, 0]
    return np.sqrt(re * re + (sigma * n[:, 1]) ** 2)


def speckle(draws: Draws, lateral_blur: float = 0.0) -> np.ndarray:
    """(n, H, W) multiplicative ultrasound speckle: a Rayleigh envelope of mean 1, optionally
    smeared laterally (the resolution cell of a probe is wider than it is deep)."""
    n = draws.pixels(2)
    env = np.sqrt(n[:, 0] ** 2 + n[:, 1] ** 2) / np.float32(np.sqrt(np.pi / 2))
    return blur(env, lateral_blur, axis="x") if lateral_blur else env


def gaussian_noise(img: np.ndarray, sigma, draws: Draws) -> np.ndarray:
    """Additive Gaussian noise, one field per channel of (n, H, W) or (n, C, H, W);
    sigma is a scalar or a per-sample (n, 1, 1) array."""
    sigma = np.asarray(sigma, np.float32)
    if img.ndim == 3:
        return img + sigma * draws.pixels(1)[:, 0]
    return img + (sigma[:, None] if sigma.ndim == 3 else sigma) * draws.pixels(img.shape[1])


# ---------------------------------------------------------------- painting and colour

def rgb(*c) -> np.ndarray:
    """A colour (r, g, b) in [0, 1] shaped (1, 3, 1, 1) to broadcast over a batch."""
    return np.asarray(c, np.float32).reshape(1, 3, 1, 1)


def fill(n: int, size: int, value) -> np.ndarray:
    """A canvas: (n, H, W) for a scalar / (n, 1, 1) grey value, (n, 3, H, W) for a colour."""
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
        return np.broadcast_to(value, (n, 3, size, size)).copy()
    return np.broadcast_to(value, (n, size, size)).copy()


def paint(img: np.ndarray, alpha: np.ndarray, value) -> np.ndarray:
    """Alpha-composite `value` (grey or colour, constant or per-pixel) over `img` with coverage alpha."""
    if img.ndim == 4:
        alpha = alpha[:, None]
    return img + alpha * (value - img)


def stain(hematoxylin: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    """H&E colour from stain amounts by Beer-Lambert: RGB = exp(-(h * OD_H + e * OD_E)).
    Optical densities after Ruifrok & Johnston (2001), eosin given some blue absorbance so
    that stroma comes out pink rather than magenta, as in scanned slides."""
    od_h = rgb(0.65, 0.72, 0.29)
    od_e = rgb(0.1, 0.95, 0.45)
    return np.exp(-(hematoxylin[:, None] * od_h + eosin[:, None] * od_e))


def vignette(X, Y, strength, radius=1.4):
    """Multiplicative light fall-off towards the corners: 1 at the centre, 1 - strength at `radius`."""
    return 1.0 - strength * np.clip((X * X + Y * Y) / radius ** 2, 0.0, 1.0)


def camera(img: np.ndarray, gains=(1.0, 1.0, 1.0), brightness=1.0, contrast=1.0, gamma=1.0) -> np.ndarray:
    """A device's response: per-channel gain (colour cast), brightness, gamma, contrast about mid-grey."""
    g = np.asarray(gains, np.float32).reshape(1, -1, 1, 1) if img.ndim == 4 else np.float32(gains[0])
    out = np.clip(img * g * brightness, 0.0, 1.0) ** np.float32(gamma)
    return (out - 0.5) * contrast + 0.5


def to_model_range(img: np.ndarray) -> np.ndarray:
    """[0, 1] intensities -> float32 (n, 3, H, W) in [-1, 1]; grey images replicated to 3 channels."""
    img = np.clip(img, 0.0, 1.0) * 2 - 1
    if img.ndim == 3:
        img = np.repeat(img[:, None], 3, axis=1)
    return np.ascontiguousarray(img, dtype=np.float32)
