"""The report builds with every figure; the stage stats and the figures' marks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import snakemake

from lqs import report
from lqs.cli import SCORE_COUNTERS, counters
from lqs.runtime import stats_message
from lqs.stage import PIPELINE, load

FIGURES = ["trajectory.png", "labels.png", "scorer.png", "fidelity.png", "scores.png", "stages.png"]
CAPTIONS = ["the costate norm", "Label distribution over the proxy set", "validation Spearman correlation",
            "Scorer fidelity where the selection cuts", "Corpus scores", "Cost per stage"]


def _copy(completed: Path, dest: Path) -> Path:
    shutil.copytree(completed, dest, symlinks=True)
    return dest


@pytest.mark.workflow
def test_report_has_every_figure_with_its_caption(completed_workflow, tmp_path):
    workdir = _copy(completed_workflow, tmp_path / "wf")
    snakemake(workdir, "plots")
    for name in FIGURES:
        png = workdir / "results" / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    snakemake(workdir, "plots", "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    for name in FIGURES:
        assert name in html, name
    for caption in CAPTIONS:
        assert caption in html, caption


# Stage stats (lqs.cli's last log line of every stage) and the figures' marks.

def _stats_line(stage: str, seconds: float, counts: dict) -> str:
    """A line as the stage's logging writes it (lqs.runtime.setup_logging's format)."""
    return f"2026-01-01 00:00:00,000 INFO lqs: {stats_message(stage, seconds, counts)}\n"


def _write_logs(logs: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (logs / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / name).write_text(text)
    return logs


def test_stage_stats_are_summed_per_rule_in_pipeline_order(tmp_path):
    logs = _write_logs(tmp_path / "logs", {
        "select_order.log": _stats_line("select-order", 0.5, {"documents": 120, "tokens": 4000}),
        "zz_custom.log": _stats_line("custom", 1.0, {}),
        "score_shard/0.log": "score shard 0: 0doc\rscore shard 0: 60doc\r"  # tqdm's bar, no newline
                             + _stats_line("score-shard", 2.0, {"documents": 60, "tokens": 900}),
        "score_shard/1.log": "some other line\n" + _stats_line("score-shard", 4.0, {"documents": 60, "tokens": 1500}),
        "grad_stats/step-0-part-0.log": _stats_line("grad-stats", 3.0, {"samples": 24, "tokens": 700}),
        "tokenize_shard/0.log": _stats_line("tokenize-shard", 0.25, {"documents": 60, "tokens": 8000, "windows": 300}),
        "fetch_proxy.log": "2026-01-01 00:00:00,000 INFO lqs: fetch-model done in 3.0 s\n",  # an older run's
        "plots.log": _stats_line("plots", 9.0, {}),  # the figures' own, from an earlier run
        "gather_scores.log": _stats_line("gather-scores", 0.1, {"documents": 120})[:-20],  # cut short: killed
    })
    stats = report.read_stage_stats(logs)
    assert list(stats) == ["tokenize_shard", "grad_stats", "score_shard", "select_order", "zz_custom"]
    score = stats["score_shard"]
    assert (score.jobs, score.seconds, score.unit, score.counts) == (2, 6.0, "documents",
                                                                      {"documents": 120, "tokens": 2400})
    assert score.throughput() == {"documents": 20.0, "tokens": 400.0}
    assert stats["tokenize_shard"].throughput() == {"documents": 240.0, "tokens": 32000.0, "windows": 1200.0}
    assert stats["grad_stats"].unit == "samples" and stats["grad_stats"].throughput()["samples"] == 8.0
    assert stats["zz_custom"].unit is None and stats["zz_custom"].throughput() == {}


def test_cli_counters_name_each_stages_unit():
    def declared(rule: str) -> dict:
        return load(rule).counters  # the stage's declaration (lqs.stage.Stage)

    assert counters(declared("score_shard"), {"scored": 60, "truncated": 2, "tokens": 900}) == {
        "documents": 60, "tokens": 900}
    assert counters(declared("sample_proxy"), 48) == {"samples": 48}  # a stage that returns its one count
    assert counters(declared("train_scorer"), {"best_epoch": 1, "samples_trained": 72}) == {"samples": 72}
    assert counters(declared("fetch_proxy"), None) == {}
    assert list(counters(declared("tokenize_shard"), {"windows": 3, "tokens": 9, "documents": 1, "rejected": 0})) == [
        "documents", "tokens", "windows"]  # the first is the throughput's unit
    # `lqs score`, the user's command and not a stage, has its own (lqs.cli.SCORE_COUNTERS)
    assert counters(SCORE_COUNTERS, {"documents_scored": 5, "documents_read": 6, "tokens": 70}) == {
        "documents": 5, "tokens": 70}


def _captured(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    return figures


def test_stages_figure_plots_stats_in_order_and_an_older_run_without_them(tmp_path, monkeypatch):
    benchmarks = tmp_path / "benchmarks"
    for rule, seconds in [("score_shard/0", 9.5), ("tokenize_shard/0", 7.0), ("gather_scores/all", 0.5)]:
        (benchmarks / rule).parent.mkdir(parents=True, exist_ok=True)
        (benchmarks / f"{rule}.tsv").write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:09\t100\n")
    logs = _write_logs(tmp_path / "logs", {
        "score_shard/0.log": _stats_line("score-shard", 2.0, {"documents": 60, "tokens": 900}),
        "tokenize_shard/0.log": _stats_line("tokenize-shard", 0.5, {"documents": 60, "tokens": 8000,
                                                                     "texts tokenized": 0}),
    })
    figures = _captured(monkeypatch)
    report.plot_stages(str(logs), str(benchmarks), tmp_path / "stages.png")
    time_ax, rate_ax = figures[-1].axes
    assert [t.get_text() for t in time_ax.get_yticklabels()] == ["tokenize_shard", "score_shard", "gather_scores"]
    own = sorted(p.get_width() for p in time_ax.patches if p.get_height() < 0.5)
    wall = sorted(p.get_width() for p in time_ax.patches if p.get_height() >= 0.5)
    assert own == [0, 0.5, 2.0] and wall == [0.5, 7.0, 9.5]
    assert [t.get_text() for t in rate_ax.get_yticklabels()] == [
        "tokenize_shard (documents/s)", "score_shard (documents/s)", "gather_scores"]
    assert sorted(p.get_width() for p in rate_ax.patches) == [30.0, 120.0]
    assert any("450 tokens/s" in t.get_text() for t in rate_ax.texts)
    assert not any("texts tokenized" in t.get_text() for t in rate_ax.texts)  # a counter at 0 is left out

    # A run from before the stats lines: wall time only, and the figure is still drawn.
    older = _write_logs(tmp_path / "older", {"score_shard/0.log": "INFO lqs: score-shard done in 2.0 s\n"})
    monkeypatch.undo()
    assert report.plot_stages(str(older), str(benchmarks), tmp_path / "older.png") == {}
    assert (tmp_path / "older.png").read_bytes()[:4] == b"\x89PNG"
    assert report.plot_stages(None, None, tmp_path / "nothing.png") == {}


def test_trajectory_marks_the_annotated_steps_and_scorer_the_kept_epoch(tmp_path, monkeypatch):
    log = tmp_path / "log.parquet"
    pq.write_table(pa.table({"step": [0, 1, 2, 3, 4], "train_loss": [5.0, 4.9, 4.8, 4.7, None],
                             "target_loss": [5.1, 5.0, 4.9, 4.8, 4.7],
                             "lambda_norm": [None, 3.0, 2.0, 1.5, 1.0]}), log)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"best_epoch": 1, "history": [
        {"epoch": e, "train_loss": 1.0 - e / 10, "valid_mse": 1.1, "valid_spearman": rho}
        for e, rho in enumerate([0.2, 0.5, 0.4])]}))
    figures = _captured(monkeypatch)
    report.plot_trajectory(str(log), tmp_path / "t.png", [0, 2])
    report.plot_scorer(str(metrics), tmp_path / "s.png")
    trajectory, scorer = figures

    def vertical_lines(ax) -> list:
        return [line.get_xdata()[0] for line in ax.lines
                if len(line.get_xdata()) == 2 and len(set(line.get_xdata())) == 1]

    for ax in trajectory.axes:
        assert vertical_lines(ax) == [0, 2]
        assert "annotated step t" in [t.get_text() for t in ax.get_legend().get_texts()]
    for ax in scorer.axes:
        assert vertical_lines(ax) == [1]
        assert any("kept: epoch 1" in t.get_text() for t in ax.get_legend().get_texts())
    star = [line for line in scorer.axes[1].lines if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in star] == [([1], [0.5])]

    # An older metrics.json without best_epoch, and no annotated steps given: no marks.
    metrics.write_text(json.dumps({"history": json.loads(metrics.read_text())["history"]}))
    report.plot_trajectory(str(log), tmp_path / "t.png")
    report.plot_scorer(str(metrics), tmp_path / "s.png")
    assert all(vertical_lines(ax) == [] for fig in figures[2:] for ax in fig.axes)


@pytest.mark.workflow
def test_every_stage_of_a_run_logs_its_own_time_and_counters(completed_workflow):
    stats = report.read_stage_stats(completed_workflow / "results" / "logs")
    wall = report.benchmark_seconds(completed_workflow / "results" / "benchmarks")
    assert list(stats) == [n for n in PIPELINE if n in wall]  # every job's rule, in pipeline order
    for rule, rule_stats in stats.items():
        assert rule_stats.jobs == len(list((completed_workflow / "results" / "benchmarks" / rule).glob("*.tsv")))
        # Own time: without the process start and imports that the job's wall time has.
        assert 0 < rule_stats.seconds < wall[rule], (rule, rule_stats.seconds, wall[rule])

    summary = json.loads((completed_workflow / "results" / "summary.json").read_text())
    metrics = json.loads((completed_workflow / "results" / "scorer" / "metrics.json").read_text())
    config = yaml.safe_load((completed_workflow / "config" / "config.yaml").read_text())
    annotated = len(range(0, config["annotation"]["steps"], config["annotation"]["interval"]))
    tokens = sum(len(ids) for shard in (completed_workflow / "results" / "corpus").glob("shard-*.parquet")
                 for ids in pq.read_table(shard, columns=["input_ids"])["input_ids"].to_pylist())
    expected = {
        "pretrain_proxy": ("steps", {"steps": config["models"]["pretrain"]["steps"]}),
        "tokenize_shard": ("documents", {"documents": summary["documents_read"], "tokens": tokens}),
        "prepare_target": ("samples", {}),
        "sample_proxy": ("samples", {"samples": config["proxy"]["size"]}),
        "trajectory": ("steps", {"steps": config["annotation"]["steps"],
                                 "samples": config["annotation"]["steps"] * config["annotation"]["batch_size"]}),
        "grad_stats": ("samples", {"samples": config["proxy"]["size"] * annotated}),
        "lqs_labels": ("samples", {"samples": config["proxy"]["size"]}),
        "train_scorer": ("samples", {"samples": config["scorer"]["epochs"] * metrics["train_samples"]}),
        "score_shard": ("documents", {"documents": summary["documents_scored"], "tokens": None}),
        "gather_scores": ("documents", {"documents": summary["documents_read"]}),
        "select_order": ("documents", {"documents": summary["documents_scored"], "tokens": tokens}),
    }
    for rule, (unit, counts) in expected.items():
        assert stats[rule].unit == unit, rule
        assert stats[rule].counts[unit] > 0, rule
        for name, count in counts.items():
            assert name in stats[rule].counts, (rule, name)
            if count is not None:
                assert stats[rule].counts[name] == count, (rule, name, stats[rule].counts)
