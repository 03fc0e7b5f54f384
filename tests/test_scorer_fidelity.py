"""Scorer fidelity (lqs.fidelity.selection_fidelity, docs/maths.md#scorer-fidelity): the top-r
overlap of the trained scorer's validation predictions with their exact labels, reported in
results/selection/summary.json, against brute-force counts; train_scorer's
valid_predictions.parquet against the labels file; the report's fidelity figure."""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import stage_function

from lqs import report
from lqs.batch_scoring import INDEX_SCHEMA
from lqs.fidelity import FIDELITY_KEYS, VALID_PREDICTIONS, selection_fidelity
from lqs.scorer import spearman
from lqs.stages import plots as plots_stage
from lqs.stages import select_order as select_order_stage

SELECTION = dict(method="top", ratio=1.0, threshold=None, temperature=1.0, seed=0)
ORDERING = dict(method="folding", folds=3, seed=0)


def brute_overlap(labels: list[float], predictions: list[float], k: int) -> int:
    """|top-k labels ∩ top-k predictions|, each top-k by value descending, ties by position."""
    def top(values):
        return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])
    return len(top(labels) & top(predictions))


def fake_scorer(root: Path, labels, predictions, spearman_value: float | None = 0.5) -> Path:
    """A scorer directory with what selection_fidelity reads: valid_predictions.parquet, metrics.json."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sample_id": np.arange(len(labels), dtype=np.int64) * 3 + 7, "label": np.asarray(labels, float),
                  "prediction": np.asarray(predictions, float)}).to_parquet(root / VALID_PREDICTIONS)
    if spearman_value is not None:
        (root / "metrics.json").write_text(json.dumps({"valid_spearman": spearman_value}))
    return root


@pytest.mark.parametrize("seed", range(6))
def test_selection_fidelity_against_brute_force(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.integers(0, 6, n).astype(float)  # ties
    predictions = labels + rng.normal(0, 2, n)
    scorer = fake_scorer(tmp_path / "scorer", labels, predictions)
    documents = int(rng.integers(50, 500))
    for method in ("top", "gumbel"):
        ratio = float(rng.choice([0.29, 0.5, 0.77, 1.0]))
        block = selection_fidelity(scorer, SELECTION | {"method": method, "ratio": ratio}, documents, 0)
        k = math.floor(Fraction(str(ratio)) * n)
        assert block == {"valid_samples": n, "spearman": 0.5, "ratio": ratio, "ratio_of": "selection.ratio", "k": k,
                         "overlap": brute_overlap(labels.tolist(), predictions.tolist(), k),
                         "fraction": brute_overlap(labels.tolist(), predictions.tolist(), k) / k,
                         "chance": k / n, "note": None}
    # threshold: the fraction of the corpus it kept, floor(selected * n / scored) validation samples
    selected = int(rng.integers(documents // 4, documents + 1))
    block = selection_fidelity(scorer, SELECTION | {"method": "threshold", "threshold": 0.1}, documents, selected)
    k = selected * n // documents
    assert (block["ratio"], block["k"]) == (selected / documents, k)
    assert block["overlap"] == brute_overlap(labels.tolist(), predictions.tolist(), k)


def test_selection_fidelity_threshold_cut_is_exact(tmp_path):
    """A third of the corpus kept, 3 validation samples: k = 1 (a float ratio of 0.333… would give 0)."""
    scorer = fake_scorer(tmp_path / "scorer", [3.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    block = selection_fidelity(scorer, SELECTION | {"method": "threshold", "threshold": 0.0}, 300, 100)
    assert (block["k"], block["overlap"], block["chance"]) == (1, 0, 1 / 3)


def test_selection_fidelity_that_cannot_be_measured_is_null_with_a_note(tmp_path):
    scorer = fake_scorer(tmp_path / "scorer", [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], spearman_value=-1.0)
    block = selection_fidelity(scorer, SELECTION | {"ratio": 0.2}, 100, 20)  # floor(0.2 * 3) = 0
    assert list(block) == list(FIDELITY_KEYS)
    assert {k: block[k] for k in ("valid_samples", "spearman", "ratio", "k", "overlap", "fraction")} == \
        {"valid_samples": 3, "spearman": -1.0, "ratio": 0.2, "k": None, "overlap": None, "fraction": None}
    assert "keeps none of the 3 validation samples" in block["note"]
    (scorer / VALID_PREDICTIONS).unlink()  # a scorer trained before the file was written
    block = selection_fidelity(scorer, SELECTION | {"ratio": 0.5}, 100, 50)
    assert block["overlap"] is None and block["spearman"] == -1.0
    assert f"{scorer / VALID_PREDICTIONS} is missing" in block["note"] and "--forcerun train_scorer" in block["note"]


# ----------------------------------------------------------------------------------------------
# the tiny workflow's run (completed_workflow): train_scorer's file and select_order's block


@pytest.mark.workflow
def test_valid_predictions_are_the_labels_files_validation_rows(completed_workflow):
    results = completed_workflow / "results"
    predictions = pd.read_parquet(results / "scorer" / VALID_PREDICTIONS)
    labels = pd.read_parquet(results / "annotation" / "labels.parquet")
    valid = labels[labels["split"] == "valid"].sort_values("sample_id")
    assert list(predictions.columns) == ["sample_id", "label", "prediction"]
    assert predictions["sample_id"].tolist() == valid["sample_id"].tolist()  # every validation sample, once
    assert predictions["label"].tolist() == valid["score"].tolist()  # exactly, float64
    assert np.isfinite(predictions["prediction"]).all()
    metrics = json.loads((results / "scorer" / "metrics.json").read_text())
    assert metrics["valid_samples"] == len(predictions)
    assert spearman(predictions["prediction"].to_numpy(), predictions["label"].to_numpy()) == \
        pytest.approx(metrics["valid_spearman"], abs=1e-12)
    assert np.mean((predictions["prediction"] - predictions["label"]) ** 2) == \
        pytest.approx(metrics["valid_mse"], rel=1e-9)


@pytest.mark.workflow
def test_workflow_selection_summary_reports_the_brute_force_overlap(completed_workflow):
    results = completed_workflow / "results"
    predictions = pd.read_parquet(results / "scorer" / VALID_PREDICTIONS)
    summary = json.loads((results / "selection" / "summary.json").read_text())
    fidelity = summary["scorer_fidelity"]
    n, ratio = len(predictions), summary["selection"]["ratio"]
    k = math.floor(Fraction(str(ratio)) * n)
    overlap = brute_overlap(predictions["label"].tolist(), predictions["prediction"].tolist(), k)
    assert fidelity == {"valid_samples": n, "ratio": ratio, "ratio_of": "selection.ratio", "k": k,
                        "overlap": overlap, "fraction": overlap / k, "chance": k / n, "note": None,
                        "spearman": json.loads((results / "summary.json").read_text())["scorer_valid_spearman"]}


@pytest.mark.workflow
@pytest.mark.parametrize("selection", [{"ratio": 0.5}, {"ratio": 0.29, "method": "gumbel"},
                                       {"method": "threshold"}], ids=["top", "gumbel", "threshold"])
def test_select_order_on_the_run_reports_the_brute_force_overlap(completed_workflow, tmp_path, selection):
    """select_order (the stage) on the tiny run's files, at cuts the run did not make (it kept
    everything): the block against a count from valid_predictions.parquet."""
    results = completed_workflow / "results"
    if selection.get("method") == "threshold":  # about half the corpus
        scores = [json.loads(line)["score"] for line in (completed_workflow / "scored.jsonl").read_text().splitlines()]
        selection = selection | {"threshold": float(np.median(scores))}
    summary = stage_function(select_order_stage)(
        str(completed_workflow / "scored.jsonl"), str(results / "scores" / "index.parquet"),
        sorted(map(str, (results / "corpus").glob("shard-*.parquet"))),  # num_shards 1: one
        str(tmp_path / "selected.jsonl"), str(tmp_path / "order.parquet"), str(tmp_path / "summary.json"),
        selection=SELECTION | selection, ordering=ORDERING, scorer_dir=str(results / "scorer"))
    predictions = pd.read_parquet(results / "scorer" / VALID_PREDICTIONS)
    n = len(predictions)
    if selection.get("method") == "threshold":
        k = summary["documents_selected"] * n // summary["documents_scored"]
    else:
        k = math.floor(Fraction(str(selection["ratio"])) * n)
    assert 0 < k < n
    fidelity = json.loads((tmp_path / "summary.json").read_text())["scorer_fidelity"]
    assert (fidelity["k"], fidelity["overlap"]) == \
        (k, brute_overlap(predictions["label"].tolist(), predictions["prediction"].tolist(), k))


# ----------------------------------------------------------------------------------------------
# the report's figure


def test_fidelity_figure_is_written_in_every_case(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = rng.normal(size=40)
    scorer = fake_scorer(tmp_path / "scorer", labels, labels + rng.normal(0, 0.5, 40))
    drawn = []
    real_scatter = report.plt.Axes.scatter

    def scatter(ax, x, y, **kwargs):
        drawn.append((len(x), kwargs.get("label")))
        return real_scatter(ax, x, y, **kwargs)

    monkeypatch.setattr(report.plt.Axes, "scatter", scatter)
    block = selection_fidelity(scorer, SELECTION | {"ratio": 0.25}, 400, 100)
    (tmp_path / "selection.json").write_text(json.dumps({"scorer_fidelity": block}))
    plots = tmp_path / "plots"  # the stage: the scorer's file, cut where the selection summary says
    index = tmp_path / "index.parquet"  # gather_scores' index of a scored output: empty here
    pq.write_table(INDEX_SCHEMA.empty_table(), index)
    stage_function(plots_stage)(str(plots), str(tmp_path / "no-benchmarks"), str(index),
                                annotated_steps=[], scorer_dir=str(scorer),
                                selection_summary=str(tmp_path / "selection.json"))
    assert (plots / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the four groups: both top-k (the overlap), the labels' only, the scorer's only, neither
    counts = [count for count, _ in drawn]
    assert counts == [block["overlap"], 10 - block["overlap"], 10 - block["overlap"], 40 - 20 + block["overlap"]]
    drawn.clear()
    for fidelity in (None, selection_fidelity(scorer, SELECTION | {"ratio": 0.01}, 400, 4)):  # no cut: one group
        report.plot_fidelity(scorer / VALID_PREDICTIONS, fidelity, tmp_path / "plain.png")
        assert (tmp_path / "plain.png").is_file() and drawn.pop() == (40, None)
    shutil.rmtree(scorer)  # no predictions file: a figure that says so
    report.plot_fidelity(scorer / VALID_PREDICTIONS, None, tmp_path / "missing.png")
    assert (tmp_path / "missing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not drawn
