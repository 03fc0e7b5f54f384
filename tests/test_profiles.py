"""profiles/default, the workflow profile Snakemake reads by itself (docs/configuration.md#profiles):
a run needs no --cores, a failing job's log reaches the terminal, and it leaves profiles/local and
profiles/slurm working (its keys replace theirs, key by key)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import GOOD, ROOT, make_workflow, snakemake, tiny_config, tiny_corpus, write_jsonl

pytestmark = pytest.mark.workflow


def _workflow(workdir: Path, corpus: list) -> Path:
    write_jsonl(workdir / "data" / "corpus.jsonl", corpus)
    write_jsonl(workdir / "data" / "target.jsonl",
                [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
    make_workflow(workdir, tiny_config("data/corpus.jsonl", "data/target.jsonl"))
    shutil.copytree(ROOT / "profiles", workdir / "profiles")
    return workdir


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake exactly as given: no --cores added."""
    return snakemake(workdir, *args, cores=None, check=False, timeout=300)


def _options(workdir: Path, *args: str) -> dict[str, str]:
    """The options Snakemake runs with, after reading the profiles: its own parser, run here."""
    from snakemake.cli import parse_args

    cwd = os.getcwd()
    os.chdir(workdir)  # the profiles are found from the working directory
    try:
        return {k: str(v) for k, v in vars(parse_args(list(args))[1]).items()}
    finally:
        os.chdir(cwd)


def test_a_run_needs_no_cores_and_shows_the_failing_jobs_log(tmp_path):
    corpus = tiny_corpus(12) + ['{"id": "broken", "text": ']  # line 13 is not JSON
    workdir = _workflow(tmp_path / "wf", corpus)
    target = "results/corpus/shard-0.parquet"  # after train_tokenizer, which skips bad records

    without = _snakemake(workdir, "--workflow-profile", "none", target)
    assert without.returncode != 0
    assert "cores have to be specified" in without.stderr

    run = _snakemake(workdir, target)
    terminal = run.stdout + run.stderr
    assert run.returncode != 0
    assert "workflow specific profile profiles/default" in terminal
    assert f"Provided cores: {os.cpu_count()}" in terminal  # cores: all
    log = (workdir / "results" / "logs" / "tokenize_shard" / "0.log").read_text().strip()
    assert "data/corpus.jsonl:13" in log, log  # the stage's one-line error
    assert log.splitlines()[-1] in terminal, terminal


def test_local_and_slurm_profiles_keep_their_settings(tmp_path):
    workdir = _workflow(tmp_path / "wf", tiny_corpus(12))
    cpus = str(os.cpu_count())

    alone = _options(workdir, "scored.jsonl")
    assert (alone["cores"], alone["show_failed_logs"], alone["executor"]) == (cpus, "True", "None")
    assert _options(workdir, "--cores", "1")["cores"] == "1"  # the command line wins

    local = _options(workdir, "--profile", "profiles/local")
    assert (local["cores"], local["show_failed_logs"], local["executor"]) == (cpus, "True", "None")
    assert "gpu" in local["resources"]  # one GPU job at a time, from profiles/local

    slurm = _options(workdir, "--profile", "profiles/slurm")
    assert (slurm["executor"], slurm["jobs"], slurm["retries"]) == ("slurm", "100", "1")
    assert "slurm_partition" in slurm["default_resources"] and "trajectory" in slurm["set_resources"]
    assert slurm["resources"] in ("None", "{}")  # no global GPU limit on a cluster

    plan = _snakemake(workdir, "-n", "--profile", "profiles/slurm", "scored.jsonl")
    assert plan.returncode == 0, plan.stderr
    out = plan.stdout + plan.stderr
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in out
    trajectory = out.split("rule trajectory:")[1].split("\n\n")[0]
    assert "slurm_partition=a100" in trajectory and "gpu=1" in trajectory, trajectory
    # the scorer's tokenizing on the CPU partition, its scoring on the GPU one
    tokenize = out.split("rule tokenize_scorer_shard:")[1].split("\n\n")[0]
    assert "slurm_partition=cpu" in tokenize and "gpu=" not in tokenize, tokenize
    score = out.split("rule score_shard:")[1].split("\n\n")[0]
    assert "slurm_partition=a100" in score and "gpu=1" in score, score
