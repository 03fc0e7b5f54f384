"""The report builds with every figure, and an unfinished scoring run redoes only its shards."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import snakemake

FIGURES = ["trajectory.png", "labels.png", "scorer.png", "scores.png", "stages.png"]
CAPTIONS = ["the costate norm", "Label distribution over the proxy set", "validation Spearman correlation",
            "Corpus scores", "Cost per stage"]


def _copy(completed: Path, dest: Path) -> Path:
    shutil.copytree(completed, dest, symlinks=True)
    return dest


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


def _planned(workdir: Path) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--rerun-incomplete"], cwd=workdir,
                         capture_output=True, text=True, check=True)
    out = run.stdout + run.stderr
    stats = out.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:] if "Job stats:" in out else []
    return {name: int(count) for name, count in (line.split() for line in stats) if name != "total"}


def test_unfinished_scoring_redoes_only_unfinished_shards(completed_workflow, tmp_path):
    workdir = _copy(completed_workflow, tmp_path / "wf")
    assert _planned(workdir) == {}
    # Killed while scoring shard 1: its output never appeared (outputs appear only when complete),
    # and gather never ran; shard 0 had finished.
    for done_later in ("results/scores/shard-1.parquet", "scored.jsonl", "rejects.jsonl", "results/summary.json"):
        (workdir / done_later).unlink()
    assert _planned(workdir) == {"score_shard": 1, "gather_scores": 1, "select_order": 1, "all": 1}
    snakemake(workdir)
    assert (workdir / "scored.jsonl").read_bytes() == (completed_workflow / "scored.jsonl").read_bytes()
