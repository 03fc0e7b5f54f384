"""Rule `plots`: figures of a finished run for `snakemake --report`.

trajectory.png  train and target loss, ‖λ_t‖ per SGD step
labels.png      distribution of the raw and normalised labels
scorer.png      scorer training loss and validation Spearman per epoch
scores.png      corpus score histogram, overall and per source
stages.png      wall time and throughput per stage, from the benchmark files

and, for the efficacy target, curves.png: each arm's target and corpus loss against the tokens
trained on (lqs.efficacy calls plot_efficacy).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from lqs.gather import stage_seconds  # noqa: E402
from lqs.io import atomic_path, parquet_batches, read_parquet  # noqa: E402
from lqs.output import read_lines  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_trajectory(log_path: str, out: Path) -> None:
    log = read_parquet(log_path).to_pandas()
    fig, (loss_ax, lam_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(log["step"], log["train_loss"], marker=".", label="train batch loss L_t(θ_t)")
    loss_ax.plot(log["step"], log["target_loss"], marker=".", label="target loss J(θ_t)")
    loss_ax.set(xlabel="SGD step t", ylabel="loss", title="Proxy LM trajectory")
    loss_ax.legend()
    lam_ax.plot(log["step"], log["lambda_norm"], marker=".", color="tab:green")
    lam_ax.set(xlabel="step t", ylabel="‖λ_t‖", title="Costate norm")
    _save(fig, out)


def plot_labels(labels_path: str, out: Path) -> None:
    labels = read_parquet(labels_path).to_pandas()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].hist(labels["raw"], bins=40, color="tab:blue")
    axes[0].set(xlabel="raw score γ", ylabel="proxy samples", title="Raw labels")
    for split, group in labels.groupby("split"):
        axes[1].hist(group["score"], bins=40, alpha=0.6, label=f"{split} ({len(group)})")
    axes[1].set(xlabel="normalised score", title="Normalised labels by split")
    axes[1].legend()
    _save(fig, out)


def plot_scorer(metrics_path: str, out: Path) -> None:
    history = pd.DataFrame(json.loads(Path(metrics_path).read_text())["history"])
    fig, (loss_ax, rho_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(history["epoch"], history["train_loss"], marker="o", label="train MSE")
    loss_ax.plot(history["epoch"], history["valid_mse"], marker="o", label="validation MSE")
    loss_ax.set(xlabel="epoch", ylabel="MSE", title="Scorer training")
    loss_ax.legend()
    rho_ax.plot(history["epoch"], history["valid_spearman"], marker="o", color="tab:purple")
    rho_ax.set(xlabel="epoch", ylabel="Spearman ρ", title="Validation Spearman")
    _save(fig, out)


def scores_by_source(scored_paths: Sequence[str], score_field: str) -> dict[str, list[float]]:
    """Each document's score, by its `source` field ("all" without one), streamed from the scored
    output's files (JSONL, .jsonl.gz or Parquet): memory holds the scores, not the records."""
    by_source: dict[str, list[float]] = defaultdict(list)
    for path in scored_paths:
        if path.endswith(".parquet"):
            names = pq.read_schema(path).names
            for batch in parquet_batches(path, [score_field] + (["source"] if "source" in names else [])):
                sources = batch.column(1).to_pylist() if batch.num_columns > 1 else [None] * batch.num_rows
                for source, score in zip(sources, batch.column(0).to_pylist()):
                    by_source[source if isinstance(source, str) else "all"].append(score)
            continue
        for line in read_lines(path):
            record = json.loads(line)
            source = record.get("source")
            by_source[source if isinstance(source, str) else "all"].append(record[score_field])
    return by_source


def plot_scores(scored_paths: Sequence[str], score_field: str, out: Path, bins: int = 50) -> None:
    """Histograms of the corpus scores, overall and per source."""
    by_source = scores_by_source(scored_paths, score_field)
    everything = np.concatenate([np.asarray(v) for v in by_source.values()] or [np.zeros(0)])
    edges = np.histogram_bin_edges(everything, bins=bins) if len(everything) else np.linspace(0, 1, bins + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].hist(everything, bins=edges, color="tab:gray")
    axes[0].set(xlabel="score", ylabel="documents", title=f"All documents ({len(everything)})")
    for source, values in sorted(by_source.items()):
        axes[1].hist(values, bins=edges, histtype="step", linewidth=1.5, density=True,
                     label=f"{source} (mean {np.mean(values):.2f})")
    axes[1].set(xlabel="score", ylabel="density", title="By source")
    axes[1].legend(fontsize=8)
    _save(fig, out)


def plot_stages(benchmarks_dir: str, summary_path: str, out: Path) -> None:
    seconds = stage_seconds(benchmarks_dir)
    summary = json.loads(Path(summary_path).read_text())
    counts = {"tokenize_shard": summary.get("documents_read"), "score_shard": summary.get("documents_scored"),
              "gather_scores": summary.get("documents_read")}
    annotation = summary.get("annotation") or {}
    if annotation:
        counts["grad_stats"] = annotation.get("proxy_samples", 0) * len(annotation.get("annotated_steps", []))
    fig, (time_ax, rate_ax) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(seconds)
    time_ax.barh(names, [seconds[n] for n in names], color="tab:blue")
    time_ax.set(xlabel="wall seconds (all jobs of the rule)", title="Wall time per stage")
    rated = [n for n in names if counts.get(n) and seconds[n] > 0]
    rate_ax.barh(rated, [counts[n] / seconds[n] for n in rated], color="tab:orange")
    rate_ax.set(xlabel="documents/s (grad_stats: samples × steps / s)",
                title="Throughput per stage")
    _save(fig, out)


def plot_efficacy(curves: pd.DataFrame, summary: dict, out: Path) -> None:
    """Mean over seeds of each arm's losses at each evaluation, with the seeds' range shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, runs in curves.groupby("arm", sort=False):
        at = runs.assign(point=runs.groupby("seed").cumcount()).groupby("point")
        tokens = at["tokens_seen"].mean()
        vs = summary["vs_conventional"].get(arm)
        for ax, key in zip(axes, ("target_loss", "corpus_loss")):
            label = f"{arm}: {summary['arms'][arm][key]['mean']:.3f}" + (f" ({vs[key + '_diff']:+.3f})" if vs else "")
            line, = ax.plot(tokens, at[key].mean(), marker=".", label=label)
            ax.fill_between(tokens, at[key].min(), at[key].max(), color=line.get_color(), alpha=0.2)
    seeds = summary["seeds"]
    axes[0].set(xlabel="training tokens", ylabel="mean sample loss", title="Held-out target set")
    axes[1].set(xlabel="training tokens", title="Held-out corpus documents")
    for ax in axes:
        ax.legend(fontsize=8, title=f"final loss (vs conventional), {seeds} seed{'s' * (seeds > 1)}",
                  title_fontsize=8)
    _save(fig, out)


def make_plots(out_dir: str, *, summary: str, benchmarks_dir: str, scored: Sequence[str], score_field: str,
               trajectory_log: str | None = None, labels: str | None = None,
               scorer_metrics: str | None = None) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if trajectory_log:
        plot_trajectory(trajectory_log, out / "trajectory.png")
    if labels:
        plot_labels(labels, out / "labels.png")
    if scorer_metrics:
        plot_scorer(scorer_metrics, out / "scorer.png")
    plot_scores(scored, score_field, out / "scores.png")
    plot_stages(benchmarks_dir, summary, out / "stages.png")
