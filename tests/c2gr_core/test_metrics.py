"""eq. (10) checked on the paper's Table 1 rows and on a hand-worked 3x3 matrix."""
import numpy as np
import pytest

from c2gr_core.metrics import bwt, forgetting_curves, overall, summarize, tl

# Final-round rows of Table 1 (%, Fundus-A .. ISIC18) and the Overall the paper prints for them.
TABLE1 = {
    "C2GR": ([84.58, 84.25, 87.41, 88.41, 87.72, 88.64, 89.40, 89.83, 77.94, 82.79,
              87.60, 89.93, 73.84, 84.64, 77.98, 84.68, 71.39, 74.67, 79.18, 87.53], 83.62),
    "JointTrain": ([89.59, 86.29, 89.47, 91.14, 90.83, 91.30, 91.17, 92.27, 77.67, 81.18,
                    89.17, 89.98, 72.07, 89.15, 81.23, 88.88, 76.34, 77.82, 88.13, 87.59], 86.06),
    "FineTune": ([27.82, 17.79, 20.85, 11.73, 6.76, 6.75, 7.93, 3.67, 17.53, 18.12,
                  19.66, 16.76, 31.73, 35.63, 6.73, 47.84, 31.74, 39.58, 48.01, 88.02], 25.23),
    "GR": ([81.72, 77.01, 84.16, 86.11, 86.54, 87.52, 86.53, 88.60, 69.39, 69.85,
            82.51, 84.86, 51.31, 71.77, 69.86, 63.76, 49.41, 65.46, 66.45, 87.89], 75.54),
}


@pytest.mark.parametrize("method", sorted(TABLE1))
def test_overall_reproduces_table1(method):
    row, printed = TABLE1[method]
    D = np.full((20, 20), np.nan)
    D[np.tril_indices(20)] = 0.5          # earlier rounds do not enter Overall
    D[-1] = np.array(row) / 100
    assert round(100 * overall(D), 2) == printed


def test_hand_worked_3x3():
    # rows = after round i, columns = task j
    D = np.array([[0.80, np.nan, np.nan],
                  [0.60, 0.90, np.nan],
                  [0.85, 0.70, 0.50]])
    # pairs (i>j): (1,0): 0.60-0.80=-0.20 -> 0.80 ; (2,0): 0.85-0.80=+0.05 -> 1.00 ; (2,1): 0.70-0.90=-0.20 -> 0.80
    assert bwt(D) == pytest.approx(2 * (0.80 + 1.00 + 0.80) / (3 * 2))
    assert tl(D) == pytest.approx((0.80 + 0.90 + 0.50) / 3)
    assert overall(D) == pytest.approx((0.85 + 0.70 + 0.50) / 3)
    assert set(summarize(D)) == {"overall", "bwt", "tl"}


def test_no_forgetting_gives_bwt_one_and_curves_mask_future():
    D = np.tril(np.full((4, 4), 0.7)) + np.triu(np.full((4, 4), np.nan), 1)
    assert bwt(D) == 1.0
    curves = forgetting_curves(D)
    assert np.isnan(curves[0, 1]) and curves[3, 1] == 0.7


def test_bad_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        overall(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        tl(np.array([[np.nan]]))
