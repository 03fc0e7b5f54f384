"""How faithfully one ranking of documents reproduces another where a selection uses it: the
overlap of the top-k sets (e.g. the LQS labels against the scorer's predictions of them, or the
scorer against a classifier)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# In a trained scorer's directory (stage train_scorer): the sample_id, label and prediction of each
# validation sample, the predictions those of the epoch the checkpoint kept.
VALID_PREDICTIONS = "valid_predictions.parquet"


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest values, ties broken by index ascending (as lqs.select's top)."""
    return np.argsort(-np.asarray(values), kind="stable")[:k]


def top_overlap(labels: np.ndarray, predictions: np.ndarray, ratio: float) -> dict:
    """With k the number of documents a top-`ratio` selection keeps of n (lqs.select keep_count):
    how many of the k highest `labels` are also among the k highest `predictions` (higher is better
    for both; ties broken by index), that count as a fraction of k, and the fraction expected by
    chance, k / n."""
    from lqs.select import keep_count

    return top_k_overlap(labels, predictions, keep_count(ratio, len(labels)))


def top_k_overlap(labels: np.ndarray, predictions: np.ndarray, k: int) -> dict:
    """top_overlap's count for a given k, 1 <= k <= n."""
    labels, predictions = np.asarray(labels, np.float64), np.asarray(predictions, np.float64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"top_overlap: {labels.shape} labels but {predictions.shape} predictions")
    for values, what in ((labels, "labels"), (predictions, "predictions")):
        if np.isnan(values).any():
            raise ValueError(f"top_overlap: {int(np.isnan(values).sum())} of the {what} are NaN")
    n = len(labels)
    if not 1 <= k <= n:
        raise ValueError(f"top_overlap: k = {k} of {n} values")
    overlap = len(np.intersect1d(top_indices(labels, k), top_indices(predictions, k)))
    return {"k": k, "n": n, "overlap": overlap, "fraction": overlap / k, "chance": k / n}


def top_cut(values: np.ndarray, k: int) -> float | None:
    """A value that separates the k highest of `values` from the rest (halfway between the k-th and
    the (k+1)-th highest; equal to both when they tie): the cut line of the report's figure. None
    when k keeps every value."""
    ranked = np.sort(np.asarray(values, np.float64))[::-1]
    return None if k >= len(ranked) else float((ranked[k - 1] + ranked[k]) / 2)


# The selection's fidelity block (results/selection/summary.json `scorer_fidelity`): its keys,
# all present, null where a value cannot be measured (`note` says why).
FIDELITY_KEYS = ("valid_samples", "spearman", "ratio", "ratio_of", "k", "overlap", "fraction", "chance", "note")


def selection_fidelity(scorer_dir: str | Path, selection: Mapping[str, Any], documents_scored: int,
                       documents_selected: int) -> dict:
    """How faithfully the trained scorer (`scorer_dir`, as train_scorer writes it) reproduces the
    exact labels where this selection cuts: on the validation samples it never trained on
    (valid_predictions.parquet), the top-r overlap of its predictions with their labels
    (top_overlap) and the validation Spearman (metrics.json).

    r is selection.ratio for methods top and gumbel (gumbel: the overlap of the rankings without
    the noise); for method threshold, which keeps no set ratio, it is the fraction of the corpus
    the threshold kept, documents_selected / documents_scored, the validation samples kept then
    being floor(documents_selected · n / documents_scored). A measure that cannot be taken (no
    predictions file: a scorer trained before it was written; r·n < 1 validation samples) is null,
    with a note, never an error: it reports on the selection and does not stop it."""
    from lqs.io import read_json, read_parquet
    from lqs.select import keep_count

    block: dict = dict.fromkeys(FIDELITY_KEYS)
    directory = Path(scorer_dir)
    path, metrics = directory / VALID_PREDICTIONS, directory / "metrics.json"
    if metrics.is_file():
        block["spearman"] = read_json(metrics).get("valid_spearman")
    if not path.is_file():
        block["note"] = (f"{path} is missing: a scorer trained before its validation predictions were kept; "
                         "rerun train_scorer (snakemake --forcerun train_scorer) to measure the overlap")
        log.warning("scorer fidelity: %s", block["note"])
        return block
    table = read_parquet(path, columns=["label", "prediction"])
    labels, predictions = (table.column(c).to_numpy() for c in ("label", "prediction"))
    n = block["valid_samples"] = len(labels)
    if selection["method"] == "threshold":
        block["ratio"] = documents_selected / documents_scored
        block["ratio_of"] = "documents_selected / documents_scored"
        k = documents_selected * n // documents_scored
    else:
        block["ratio"], block["ratio_of"] = float(selection["ratio"]), "selection.ratio"
        try:
            k = keep_count(selection["ratio"], n)
        except ValueError:  # floor(r·n) = 0
            k = 0
    if k == 0:
        block["note"] = (f"r = {block['ratio']:.4g} keeps none of the {n} validation samples (floor(r·n) = 0): "
                         "no overlap to measure; a larger scorer.valid_size measures it")
        log.warning("scorer fidelity: %s", block["note"])
        return block
    block.update(top_k_overlap(labels, predictions, k))
    del block["n"]
    log.info("scorer fidelity on %d validation samples: the scorer's top %d hold %d of the labels' top %d "
             "(%.3f; chance %.3f); Spearman %s", n, k, block["overlap"], k, block["fraction"], block["chance"],
             block["spearman"])
    return block
