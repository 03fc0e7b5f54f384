"""Reruns that touch only what changed: a corpus of many files with `corpus.shard_size` (about ten
shards; benchmarks/scale.py measures 200 files at 20), scored with a pretrained scorer to
completion once; then one file added, removed or edited plans at most two jobs of each per-shard
rule (docs/stages.md#shards), and renaming the score field plans only the stages that write
outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import (
    copy_workflow,
    edit_config,
    make_workflow,
    parse_plan,
    plan,
    read_jsonl,
    rule_counts,
    set_key,
    snakemake,
    tiny_config,
    tiny_corpus,
    tiny_scorer,
    write_jsonl,
)

from lqs import splits

pytestmark = pytest.mark.workflow

FILES = 80
PER_SHARD_RULES = ("tokenize_shard", "tokenize_scorer_shard", "score_shard")


def _corpus_files(directory: Path) -> list[Path]:
    """FILES small JSONL files of one to three tiny-corpus documents each, named in sorted order."""
    documents, rng = tiny_corpus(120), random.Random(0)
    return [write_jsonl(directory / f"part-{i:04d}.jsonl", rng.sample(documents, rng.randint(1, 3)))
            for i in range(0, 2 * FILES, 2)]  # even numbers: room for a file between any two


@pytest.fixture(scope="module")
def scored_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("incremental")
    (root / "wf").mkdir()
    files = _corpus_files(root / "wf" / "data")
    config = tiny_config("data", "target.jsonl")  # no target is read: the scorer is given
    total = sum(f.stat().st_size for f in files)
    config["corpus"] |= {"shard_size": total // 10}  # about ten shards
    config["scorer"] = {"checkpoint": str(tiny_scorer(root / "model"))}
    make_workflow(root / "wf", config)
    snakemake(root / "wf", "scored.jsonl")
    return root / "wf"


def _documents(workdir: Path) -> int:
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    return summary["documents_read"]


def _per_shard_jobs(jobs: list[dict]) -> dict[str, int]:
    counts = rule_counts(jobs)
    return {rule: counts.get(rule, 0) for rule in PER_SHARD_RULES}


def test_the_corpus_has_about_twenty_shards(scored_corpus):
    """The fixture's premise: many shards, each read by its own jobs."""
    shards = list((scored_corpus / "results" / "corpus").glob("shard-*.parquet"))
    assert 5 <= len(shards) <= 20, len(shards)
    scored = read_jsonl(scored_corpus / "scored.jsonl")
    assert len(scored) == _documents(scored_corpus) > FILES  # every document of every file, once


@pytest.mark.parametrize("change", ["add", "remove", "edit"])
def test_one_file_changed_replans_at_most_two_shards(scored_corpus, tmp_path, change):
    workdir = copy_workflow(scored_corpus, tmp_path)
    data = workdir / "data"
    middle = data / f"part-{FILES:04d}.jsonl"  # files are numbered 0, 2, ..., 2 FILES - 2
    if change == "add":  # between two files, in the middle of the sorted listing
        write_jsonl(data / f"part-{FILES + 1:04d}.jsonl", tiny_corpus(3, seed=7))
    elif change == "remove":
        middle.unlink()
    else:
        path = middle
        path.write_text(path.read_text() + json.dumps({"id": "new", "text": "One more document."}) + "\n")
    result = snakemake(workdir, "-n", "scored.jsonl")
    jobs, _ = parse_plan(result.stdout + result.stderr)
    per_shard = _per_shard_jobs(jobs)
    assert all(1 <= n <= 2 for n in per_shard.values()), per_shard
    assert rule_counts(jobs).get("gather_scores") == 1
    shards = {j["wildcards"]["shard"] for j in jobs if j["rule"] == "tokenize_shard"}
    assert {j["wildcards"]["shard"] for j in jobs if j["rule"] == "score_shard"} == shards


def test_renaming_the_score_field_replans_only_the_outputs(scored_corpus, tmp_path):
    workdir = copy_workflow(scored_corpus, tmp_path)
    edit_config(workdir, set_key("output", "score_field", "lqs_score"))
    jobs = plan(workdir, "scored.jsonl", "selected.jsonl")
    assert rule_counts(jobs) == {"gather_scores": 1, "select_order": 1}
    gather = next(j for j in jobs if j["rule"] == "gather_scores")
    assert gather["reason"].startswith("Params have changed"), gather


def test_the_plan_names_shards_by_their_first_split(scored_corpus):
    """Shard keys are hashes of their first split, not positions: the wildcard of a shard does not
    change when a file is added before it."""
    plan_files = list((scored_corpus / "results" / "corpus" / "plans").glob("*.json"))
    assert len(plan_files) == 1
    corpus_plan = splits.read_plan(str(plan_files[0]))
    keys = [shard.key for shard in corpus_plan.shards]
    assert len(set(keys)) == len(keys)
    assert all(len(key) == 10 and int(key, 16) >= 0 for key in keys)
