"""Stage `plots`: figures of a finished run for `snakemake --report` (docs/stages.md#plots).

The figures are lqs.report's: trajectory.png, labels.png, scorer.png, fidelity.png, scores.png,
stages.png.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lqs.fidelity import VALID_PREDICTIONS
from lqs.report import plot_fidelity, plot_labels, plot_scorer, plot_scores, plot_stages, plot_trajectory
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    annotated_steps: Sequence[int]  # annotation.steps, interval: the steps annotated (rules/common.smk ANNOTATED_STEPS)


def plots(out_dir: str, benchmarks_dir: str, scores_index: str, settings: Settings,
          trajectory_log: str | None = None, labels: str | None = None, scorer_metrics: str | None = None,
          logs_dir: str | None = None, scorer_dir: str | None = None, selection_summary: str | None = None) -> None:
    """`scorer_dir` (a trained scorer) and `selection_summary` (select_order's): fidelity.png, the
    scorer's validation predictions against their labels, cut where the selection's fidelity
    block says."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if trajectory_log:
        plot_trajectory(trajectory_log, out / "trajectory.png", settings.annotated_steps)
    if labels:
        plot_labels(labels, out / "labels.png")
    if scorer_metrics:
        plot_scorer(scorer_metrics, out / "scorer.png")
    if scorer_dir:
        fidelity = json.loads(Path(selection_summary).read_text()).get("scorer_fidelity") if selection_summary else None
        plot_fidelity(Path(scorer_dir) / VALID_PREDICTIONS, fidelity, out / "fidelity.png")
    plot_scores(scores_index, out / "scores.png")
    plot_stages(logs_dir, benchmarks_dir, out / "stages.png")


STAGE = Stage(
    help="figures of a finished run for snakemake --report",
    run=plots,
    args=(Arg("out_dir"), Arg("--benchmarks-dir"), Arg("--logs-dir", required=False), Arg("--scores-index"),
          Arg("--trajectory-log", required=False), Arg("--labels", required=False),
          Arg("--scorer-metrics", required=False), Arg("--scorer-dir", required=False),
          Arg("--selection-summary", required=False)),
    settings=Settings,
)
