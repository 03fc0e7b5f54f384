"""lqs/fidelity.py: the top-k overlap against a brute-force count, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from lqs.fidelity import top_overlap
from lqs.select import keep_count


def brute_top(values, k):
    return {i for _, i in sorted((-v, i) for i, v in enumerate(values.tolist()))[:k]}


@pytest.mark.parametrize("seed", range(8))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    labels = rng.integers(0, 10, size=n).astype(float)  # ties, broken by index
    predictions = labels + rng.normal(0, 3, size=n) if seed % 2 else rng.normal(size=n)
    ratio = float(rng.choice([0.1, 0.29, 0.5, 0.77, 1.0]))
    if ratio * n < 1:
        ratio = 1.0  # a ratio that keeps nothing is refused (test_refusals)
    k = keep_count(ratio, n)
    overlap = len(brute_top(labels, k) & brute_top(predictions, k))
    assert top_overlap(labels, predictions, ratio) == {"k": k, "n": n, "overlap": overlap, "fraction": overlap / k,
                                                       "chance": k / n}


def test_edge_cases():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=100)
    assert top_overlap(labels, rng.normal(size=100), 1.0)["fraction"] == 1.0
    assert top_overlap(labels, labels * 2 + 1, 0.3)["fraction"] == 1.0
    assert top_overlap(labels, -labels, 0.5) == {"k": 50, "n": 100, "overlap": 0, "fraction": 0.0, "chance": 0.5}
    assert top_overlap(np.arange(7.0), -np.arange(7.0), 0.5)["overlap"] == 0
    assert top_overlap(np.zeros(10), np.zeros(10), 0.3)["fraction"] == 1.0  # all tied: both keep indices 0-2


def test_refusals():
    with pytest.raises(ValueError, match="labels but"):
        top_overlap(np.zeros(3), np.zeros(4), 0.5)
    with pytest.raises(ValueError, match="1 of the predictions are NaN"):
        top_overlap(np.zeros(3), np.array([0, np.nan, 1]), 0.5)
    with pytest.raises(ValueError, match="selection.ratio"):
        top_overlap(np.zeros(3), np.zeros(3), 0.1)  # keeps none
