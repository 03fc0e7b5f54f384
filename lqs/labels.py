"""Per-sample scores γ from the gradient statistics (docs/maths.md#labels-lqs-and-pds; the stage:
lqs.stages.lqs_labels): reading the statistics, the label formulas, the normalisation and the split.

    pds: γ(x) = η Σ_{t∈S} d_t(x)
    lqs: γ(x) = η Σ_j ‖λ_{t_j+1}‖ · r_j(x) · cos(g_{t_j}(x), λ_{t_j+1}),  t_1 > t_2 > … (latest first)
         r_1 = n_{t_1},  r_j = n_{t_j} / n_{t_{j−1}}
A step where a needed norm is 0 contributes 0 (and is logged), never NaN or Inf.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lqs.io import read_parquet

log = logging.getLogger(__name__)


def read_stats(paths: Sequence[str]) -> tuple[np.ndarray, list[int], dict[str, np.ndarray]]:
    """sample ids, annotated steps (ascending), and (samples × steps) arrays n, d, ‖λ‖."""
    stats = pd.concat([read_parquet(p).to_pandas() for p in paths], ignore_index=True)
    if stats.duplicated(["sample_id", "step"]).any():
        raise ValueError("per-sample statistics list a (sample_id, step) pair twice")
    wide = stats.pivot(index="sample_id", columns="step")
    if wide.isna().any().any():
        raise ValueError("per-sample statistics are missing for some (sample, step) pairs")
    steps = sorted(wide["grad_norm"].columns)
    arrays = {k: wide[k][steps].to_numpy(np.float64) for k in ("grad_norm", "dot", "lambda_norm")}
    return wide.index.to_numpy(np.int64), steps, arrays


def raw_scores(grad_norm: np.ndarray, dot: np.ndarray, lambda_norm: np.ndarray, lr: float,
               score: str) -> np.ndarray:
    """γ for each row; columns are the annotated steps in ascending order."""
    if score == "pds":
        return lr * dot.sum(axis=1)
    if score != "lqs":
        raise ValueError(f"unknown annotation.score {score!r} (expected 'lqs' or 'pds')")
    n, d, lam = grad_norm[:, ::-1], dot[:, ::-1], lambda_norm[:, ::-1]  # latest step first
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip(d / (n * lam), -1.0, 1.0)
        ratio = np.concatenate([n[:, :1], n[:, 1:] / n[:, :-1]], axis=1)
        terms = lam * ratio * cos
    undefined = ~np.isfinite(terms)
    if undefined.any():
        log.warning("%d (sample, step) terms have a zero gradient or costate norm; they contribute 0",
                    int(undefined.sum()))
    return lr * np.where(undefined, 0.0, terms).sum(axis=1)


def normalize(raw: np.ndarray, method: str) -> np.ndarray:
    if method == "none":
        return raw.copy()
    if method != "zscore_clip3":
        raise ValueError(f"unknown annotation.normalize {method!r}")
    std = raw.std()
    z = (raw - raw.mean()) / std if std > 0 else np.zeros_like(raw)
    return np.clip(z, -3.0, 3.0)


def split(num: int, valid_size: float, seed: int) -> np.ndarray:
    """'train'/'valid' per row; valid_size is a count (>= 1) or a fraction (< 1)."""
    n_valid = int(round(valid_size * num)) if valid_size < 1 else int(valid_size)
    if not 0 < n_valid < num:
        raise ValueError(f"scorer.valid_size {valid_size} leaves no train or no validation "
                         f"samples out of {num} proxy samples")
    labels = np.full(num, "train", dtype=object)
    labels[np.random.default_rng(seed).choice(num, n_valid, replace=False)] = "valid"
    return labels
