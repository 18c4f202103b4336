"""Continual-learning metrics of the paper (eq. 10) over the T x T DSC matrix.

D[i, j] is the DSC on task j after training round i (0-based here; the paper is 1-based).
Values are fractions in [0, 1]; multiply by 100 for the paper's percentages.
"""
from __future__ import annotations

import numpy as np


def _check(D: np.ndarray) -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1] or D.shape[0] == 0:
        raise ValueError(f"DSC matrix must be square T x T, got shape {D.shape}")
    if np.isnan(D[np.tril_indices(len(D))]).any():
        raise ValueError("DSC matrix has NaN on or below the diagonal (rounds not evaluated?)")
    return D


def overall(D: np.ndarray) -> float:
    """eq. (10): mean DSC over all tasks after the final round, sum_j D[T, j] / T."""
    D = _check(D)
    return float(D[-1].mean())


def bwt(D: np.ndarray) -> float:
    """eq. (10): 2 / (T (T-1)) * sum_{i>=2} sum_{j<i} (1 - |min(D[i,j] - D[j,j], 0)|).

    1.0 means no forgetting at all; only drops count (gains are clipped by the min).
    A single-task stream has no pair to compare: BWT is defined as 1.0 there.
    """
    D = _check(D)
    T = len(D)
    if T == 1:
        return 1.0
    i, j = np.tril_indices(T, k=-1)
    drops = np.abs(np.minimum(D[i, j] - D[j, j], 0.0))
    return float(2.0 * np.sum(1.0 - drops) / (T * (T - 1)))


def tl(D: np.ndarray) -> float:
    """eq. (10): plasticity, mean of the diagonal sum_i D[i, i] / T."""
    D = _check(D)
    return float(np.mean(np.diag(D)))


def summarize(D: np.ndarray) -> dict[str, float]:
    return {"overall": overall(D), "bwt": bwt(D), "tl": tl(D)}


def forgetting_curves(D: np.ndarray) -> np.ndarray:
    """Per task j, D[i, j] for rounds i >= j (NaN before the task arrived): the per-round curves."""
    D = np.array(D, dtype=np.float64)
    out = D.copy()
    out[np.triu_indices(len(D), k=1)] = np.nan
    return out
