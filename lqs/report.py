"""The figures of a finished run for `snakemake --report` (stage `plots`: lqs.stages.plots):

trajectory.png  train and target loss, ‖λ_t‖ per SGD step, the annotated steps marked
labels.png      distribution of the raw and normalised labels
scorer.png      scorer training loss and validation Spearman per epoch, the kept epoch marked
fidelity.png    the scorer's predictions against the exact labels of the validation samples, with
                the selection's top-r cuts (lqs.fidelity)
scores.png      corpus score histogram, overall and per source
stages.png      time and throughput per stage, from each stage's stats line in its log
                (lqs.cli), beside its jobs' wall time from the benchmark files

and, for the efficacy target, curves.png: each arm's target and corpus loss against the tokens
trained on, and the paired differences with their 95% intervals (lqs.stages.efficacy calls
plot_efficacy).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lqs.efficacy import comparisons  # noqa: E402
from lqs.fidelity import top_cut, top_indices  # noqa: E402
from lqs.io import atomic_path, benchmark_seconds, parquet_batches, read_parquet  # noqa: E402
from lqs.runtime import STATS_PREFIX  # noqa: E402
from lqs.stage import PIPELINE  # noqa: E402

_STATS_LINE = re.compile(re.escape(STATS_PREFIX) + r"(\{.*\})\s*$")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_trajectory(log_path: str, out: Path, annotated_steps: list[int] = ()) -> None:
    """annotated_steps: the steps t whose per-sample statistics make the labels, marked."""
    log = read_parquet(log_path).to_pandas()
    fig, (loss_ax, lam_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax in (loss_ax, lam_ax):
        for i, t in enumerate(annotated_steps):
            ax.axvline(t, color="tab:gray", linestyle=":", linewidth=1,
                       label="annotated step t" if i == 0 else None)
    loss_ax.plot(log["step"], log["train_loss"], marker=".", label="train batch loss L_t(θ_t)")
    loss_ax.plot(log["step"], log["target_loss"], marker=".", label="target loss J(θ_t)")
    loss_ax.set(xlabel="SGD step t", ylabel="loss", title="Proxy LM trajectory")
    loss_ax.legend()
    lam_ax.plot(log["step"], log["lambda_norm"], marker=".", color="tab:green", label="‖λ_t‖")
    lam_ax.set(xlabel="step t", ylabel="‖λ_t‖", title="Costate norm")
    if len(annotated_steps):
        lam_ax.legend()
    for ax in (loss_ax, lam_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    metrics = json.loads(Path(metrics_path).read_text())
    history = pd.DataFrame(metrics["history"])
    kept = metrics.get("best_epoch")  # the epoch whose weights the checkpoint has
    fig, (loss_ax, rho_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(history["epoch"], history["train_loss"], marker="o", label="train MSE")
    loss_ax.plot(history["epoch"], history["valid_mse"], marker="o", label="validation MSE")
    loss_ax.set(xlabel="epoch", ylabel="MSE", title="Scorer training")
    rho_ax.plot(history["epoch"], history["valid_spearman"], marker="o", color="tab:purple",
                label="validation Spearman")
    rho_ax.set(xlabel="epoch", ylabel="Spearman ρ", title="Validation Spearman")
    if kept is not None:
        for ax in (loss_ax, rho_ax):
            ax.axvline(kept, color="tab:red", linestyle="--", linewidth=1,
                       label=f"kept: epoch {kept} (best validation Spearman)")
        rho_ax.plot([kept], history.loc[history["epoch"] == kept, "valid_spearman"], marker="*",
                    markersize=14, color="tab:red", linestyle="none")
        rho_ax.legend(fontsize=8)
    loss_ax.legend(fontsize=8)
    for ax in (loss_ax, rho_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, out)


def plot_fidelity(predictions_path: str | Path, fidelity: dict | None, out: Path) -> None:
    """The kept epoch's prediction against the exact label of each validation sample (the
    scorer's valid_predictions.parquet); with the selection's fidelity block (lqs.fidelity
    selection_fidelity, from results/selection/summary.json), the labels' and the predictions'
    top-k cuts, the samples coloured by which top-k holds them, and the overlap in the title."""
    fig, ax = plt.subplots(figsize=(7, 6))
    path = Path(predictions_path)
    if not path.is_file():
        ax.text(0.5, 0.5, f"no {path.name}\n(a scorer trained before it was written:\nsnakemake --forcerun "
                "train_scorer)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        _save(fig, out)
        return
    table = read_parquet(path, columns=["label", "prediction"])
    labels, predictions = (table.column(c).to_numpy() for c in ("label", "prediction"))
    fidelity = fidelity or {}
    k = fidelity.get("k")
    title = f"Scorer on {len(labels)} held-out proxy samples"
    if fidelity.get("spearman") is not None:
        title += f"\nSpearman ρ = {fidelity['spearman']:.3f}"
    if k:
        title += (f"; top-r overlap {fidelity['overlap']}/{k} = {fidelity['fraction']:.2f} "
                  f"(chance {fidelity['chance']:.2f}, r = {fidelity['ratio']:.3g})")
        in_labels, in_predictions = (np.zeros(len(labels), bool) for _ in range(2))
        in_labels[top_indices(labels, k)] = True
        in_predictions[top_indices(predictions, k)] = True
        groups = [(in_labels & in_predictions, "tab:green", "in both top-r (kept, as exact LQS would)"),
                  (in_labels & ~in_predictions, "tab:red", "labels' top-r only (exact LQS keeps, scorer drops)"),
                  (~in_labels & in_predictions, "tab:orange", "scorer's top-r only (kept, exact LQS drops)"),
                  (~in_labels & ~in_predictions, "tab:gray", "neither")]
        for mask, color, label in groups:
            ax.scatter(labels[mask], predictions[mask], s=12, color=color, alpha=0.7,
                       label=f"{label} ({int(mask.sum())})")
        label_cut, prediction_cut = top_cut(labels, k), top_cut(predictions, k)
        if label_cut is not None:
            ax.axvline(label_cut, color="tab:red", linestyle="--", linewidth=1)
            ax.axhline(prediction_cut, color="tab:orange", linestyle="--", linewidth=1)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)  # below: no point hidden
    else:
        ax.scatter(labels, predictions, s=12, color="tab:blue", alpha=0.7)
        if fidelity.get("note"):
            title += "\n(no top-r overlap: see scorer_fidelity.note)"
    ax.set(xlabel="exact label (normalised LQS score)", ylabel="scorer prediction", title=title)
    ax.title.set_fontsize(9)
    _save(fig, out)


def scores_by_source(index: str) -> dict[str, list[float]]:
    """Each scored document's score, by its `source` field ("all" without one), from gather_scores'
    index of the scored output (batch_scoring.INDEX_SCHEMA): the output's text is not read."""
    by_source: dict[str, list[float]] = defaultdict(list)
    for batch in parquet_batches(index, ["score", "source"]):
        for score, source in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            by_source[source if isinstance(source, str) else "all"].append(score)
    return by_source


def plot_scores(index: str, out: Path, bins: int = 50) -> None:
    """Histograms of the corpus scores, overall and per source (gather_scores' index)."""
    by_source = scores_by_source(index)
    everything = np.concatenate([np.asarray(v) for v in by_source.values()] or [np.zeros(0)])
    edges = np.histogram_bin_edges(everything, bins=bins) if len(everything) else np.linspace(0, 1, bins + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].hist(everything, bins=edges, color="tab:gray")
    axes[0].set(xlabel="score", ylabel="documents", title=f"All documents ({len(everything)})")
    for source, values in sorted(by_source.items()):
        axes[1].hist(values, bins=edges, histtype="step", linewidth=1.5, density=True,
                     label=f"{source} (mean {np.mean(values):.2f})")
    axes[1].set(xlabel="score", ylabel="density", title="By source")
    if by_source:  # no documents scored: nothing to label
        axes[1].legend(fontsize=8)
    _save(fig, out)


@dataclass
class StageStats:
    """One rule's stats lines, summed over its jobs: its own seconds (from the stage function's
    call, lqs.cli) and its counters; `unit` is the counter its throughput is given in."""

    jobs: int = 0
    seconds: float = 0.0
    unit: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def throughput(self) -> dict[str, float]:
        """Each counter per second of the stage's own time (per process: the jobs' seconds add up)."""
        return {k: v / self.seconds for k, v in self.counts.items()} if self.seconds > 0 else {}


def in_pipeline_order(names) -> list[str]:
    """Rules in pipeline order (lqs.stage.PIPELINE); others follow, by name."""
    known = {name: i for i, name in enumerate(PIPELINE)}
    return sorted(names, key=lambda n: (known.get(n, len(known)), n))


def read_stage_stats(logs_dir: str | Path | None) -> dict[str, StageStats]:
    """The stats lines of <logs_dir>/<rule>.log and <logs_dir>/<rule>/<job>.log, per rule, in
    pipeline order. Logs without one (a job that failed, a run older than the stats lines, the
    plots' own) are left out."""
    stats: dict[str, StageStats] = {}
    root = Path(logs_dir) if logs_dir else None
    for path in sorted(root.rglob("*.log")) if root and root.is_dir() else []:
        rule = path.stem if path.parent == root else path.relative_to(root).parts[0]
        if rule == "plots":
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                match = _STATS_LINE.search(line)
                if not match:
                    continue
                try:
                    entry = json.loads(match.group(1))
                    seconds = float(entry["seconds"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short: the job was killed while writing it
                rule_stats = stats.setdefault(rule, StageStats(unit=entry.get("unit")))
                rule_stats.jobs += 1
                rule_stats.seconds += seconds
                for unit, count in (entry.get("counts") or {}).items():
                    rule_stats.counts[unit] = rule_stats.counts.get(unit, 0) + count
    return {name: stats[name] for name in in_pipeline_order(stats)}


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def plot_stages(logs_dir: str | None, benchmarks_dir: str | None, out: Path) -> dict[str, StageStats]:
    """Left: each stage's own seconds over the wall seconds of its jobs (process start and imports
    included); right: its throughput in its own unit, the other counters' rates written beside.
    Returns the stats plotted."""
    stats = read_stage_stats(logs_dir)
    wall = benchmark_seconds(benchmarks_dir)
    names = in_pipeline_order(set(stats) | set(wall))
    rows = np.arange(len(names))
    fig, (time_ax, rate_ax) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.32 * max(len(names), 4)))
    time_ax.barh(rows, [wall.get(n, 0.0) for n in names], color="tab:blue", alpha=0.3,
                 label="jobs' wall time (benchmark files)")
    time_ax.barh(rows, [stats[n].seconds if n in stats else 0.0 for n in names], height=0.45, color="tab:blue",
                 label="stage's own time (stats line)")
    time_ax.set_yticks(rows, names)
    time_ax.set(xlabel="seconds, summed over the rule's jobs", title="Time per stage")
    time_ax.legend(fontsize=8)

    rates = {n: stats[n].throughput() for n in names if n in stats}
    rated = [n for n in names if n in stats and rates[n].get(stats[n].unit)]
    rate_ax.set_yticks(rows, [f"{n} ({stats[n].unit}/s)" if n in rated else n for n in names])
    if rated:
        values = [rates[n][stats[n].unit] for n in rated]
        rate_ax.barh([names.index(n) for n in rated], values, color="tab:orange")
        rate_ax.set_xscale("log")
        rate_ax.set_xlim(min(values) / 3, max(values) * 3e3)  # room for the text
        for n, value in zip(rated, values):
            # a counter that stayed at 0 (texts tokenized where windows came from ids) says nothing
            unit_first = sorted(((k, v) for k, v in rates[n].items() if v or k == stats[n].unit),
                                key=lambda kv: kv[0] != stats[n].unit)
            rate_ax.annotate(", ".join(f"{_rate(v)} {k}/s" for k, v in unit_first), (value, names.index(n)),
                             xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    else:
        rate_ax.text(0.5, 0.5, "no stage stats in the logs\n(a run from before they were logged)",
                     ha="center", va="center", transform=rate_ax.transAxes)
    rate_ax.set(xlabel="per second of the stage's own time (per job)", title="Throughput per stage")
    for ax in (time_ax, rate_ax):
        ax.set_ylim(max(len(names), 1) - 0.5, -0.5)  # the pipeline's first stage on top
    _save(fig, out)
    return stats


def plot_efficacy(curves: pd.DataFrame, summary: dict, out: Path) -> None:
    """Left and middle: each arm's target and corpus loss at each evaluation, the mean over seeds
    with a band of ± one standard deviation over seeds, the arms in the summary's order
    (lqs.efficacy.ARMS). Right: the paired target-loss differences (vs conventional, then the
    decomposition) as bars with their 95% intervals (Student's t) as error bars."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for arm in summary["arms"]:
        runs = curves[curves["arm"] == arm]
        at = runs.assign(point=runs.groupby("seed").cumcount()).groupby("point")
        tokens = at["tokens_seen"].mean()
        for ax, key in zip(axes, ("target_loss", "corpus_loss")):
            final = summary["arms"][arm][key]
            label = f"{arm}: {final['mean']:.3f}" + (f" ± {final['std']:.3f}" if final["std"] is not None else "")
            mean, std = at[key].mean(), at[key].std(ddof=1).fillna(0.0)
            line, = ax.plot(tokens, mean, marker=".", label=label)
            ax.fill_between(tokens, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    seeds = summary["seeds"]
    plural = "s" * (seeds > 1)
    axes[0].set(xlabel="training tokens", ylabel="mean sample loss", title="Held-out target set")
    axes[1].set(xlabel="training tokens", title="Held-out corpus documents")
    for ax in axes[:2]:
        ax.legend(fontsize=8, title=f"final loss, mean ± std over {seeds} seed{plural}", title_fontsize=8)
    pairs = comparisons(summary)
    ax = axes[2]
    if pairs:
        means = np.array([d["target_loss"]["mean"] for _, d in pairs])
        ci = [d["target_loss"]["ci95"] for _, d in pairs]
        errors = np.array([[m - c[0], c[1] - m] if c is not None else [0.0, 0.0] for m, c in zip(means, ci)]).T
        colours = ["tab:gray" if label.endswith("conventional") else "tab:blue" for label, _ in pairs]
        y = np.arange(len(pairs))[::-1]
        ax.barh(y, means, xerr=errors, color=colours, alpha=0.7, capsize=3)
        ax.set_yticks(y, [label for label, _ in pairs], fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="target loss difference (negative: the first arm lower)",
           title=f"Paired differences, 95% interval (t, {seeds} seed{plural})")
    _save(fig, out)
