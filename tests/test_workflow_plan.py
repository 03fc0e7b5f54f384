"""The workflow's plan (lqs.workflow_plan) built from a configuration and a corpus listing, as
rules/common.smk builds it, without starting Snakemake: the shards and their digests, the
output's files, which rules write the models, and what each digest depends on."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
from helpers import ROOT, set_key, tiny_config, tiny_corpus, write_jsonl

from lqs import config as lqs_config
from lqs import splits
from lqs.output import part_name
from lqs.workflow_plan import build_workflow_plan, demo_files


def resolved(config: dict) -> dict:
    """The configuration as rules/common.smk has it after validation: the schema's defaults filled in."""
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(ROOT / "lqs" / "schema.yaml"))
    assert not lqs_config.consistency_errors(config)
    return config


@pytest.fixture
def corpus_dir(tmp_path, monkeypatch):
    """Three JSONL files of 40 documents each in tmp_path/data, and tmp_path the working directory."""
    monkeypatch.chdir(tmp_path)
    docs = tiny_corpus(120)
    for i in range(3):
        write_jsonl(tmp_path / "data" / f"part-{i}.jsonl", docs[40 * i:40 * (i + 1)])
    write_jsonl(tmp_path / "data" / "target.jsonl", docs[:5])
    return tmp_path / "data"


def build(*edits, corpus: str | list[str] = "data/part-*.jsonl"):
    config = tiny_config(corpus, "data/target.jsonl")
    for edit in edits:
        edit(config)
    config = resolved(config)
    listing = lqs_config.corpus_sources(config["corpus"]["path"])
    outputs, errors = lqs_config.resolve_outputs(config, [f.path for f in listing.files])
    assert not errors
    return build_workflow_plan(config, listing, outputs)


FILES = [f"data/part-{i}.jsonl" for i in range(3)]


def test_num_shards_cuts_the_corpus_into_that_many_shards(corpus_dir):
    plan = build(set_key("corpus", "num_shards", 3))
    assert plan.shards == ("0", "1", "2")
    read = [f.path for shard in plan.shards for f in plan.job_files(shard)]
    assert set(read) == set(FILES) and len(read) >= 3  # a file cut at a boundary is read by both shards
    assert [f.path for f in plan.job_files(None)] == FILES
    assert plan.shard_splits_sha256 == {s.key: splits.splits_sha256(s.splits) for s in plan.corpus_plan.shards}
    assert len(set(plan.shard_splits_sha256.values())) == 3
    assert plan.splits_sha256(None) == splits.splits_sha256(x for s in plan.corpus_plan.shards for x in s.splits)
    assert plan.splits_sha256("1") == plan.shard_splits_sha256["1"]
    assert plan.corpus_versions(None) == {}  # local files: no versions
    assert plan.corpus_plan.path(plan.plans_dir).startswith("results/corpus/plans/")


def test_per_file_gives_each_file_its_own_shard(corpus_dir):
    plan = build(set_key("corpus", "num_shards", "per_file"))
    assert len(plan.shards) == 3 and all(len(s) == 10 for s in plan.shards)  # named by a hash of the file
    assert sorted(f.path for shard in plan.shards for f in plan.job_files(shard)) == FILES
    assert all(len(plan.job_files(shard)) == 1 for shard in plan.shards)


def test_adding_a_file_per_file_adds_its_shard_and_changes_no_other(corpus_dir):
    before = build(set_key("corpus", "num_shards", "per_file"))
    write_jsonl(corpus_dir / "part-0a.jsonl", tiny_corpus(3))
    after = build(set_key("corpus", "num_shards", "per_file"))
    [added] = set(after.shards) - set(before.shards)
    assert [f.path for f in after.job_files(added)] == ["data/part-0a.jsonl"]
    assert {s: after.splits_sha256(s) for s in before.shards} == before.shard_splits_sha256
    assert after.splits_sha256(None) != before.splits_sha256(None)
    assert after.corpus_state != before.corpus_state


def test_editing_a_file_changes_the_corpus_state(corpus_dir):
    """An edit of a whole-file split leaves its digest: the file is tokenize_shard's input, and the
    jobs reading the whole corpus carry the corpus state, which changes."""
    before = build()
    with open(corpus_dir / "part-1.jsonl", "a") as f:
        f.write('{"text": "one more document"}\n')
    assert build().corpus_state != before.corpus_state


def test_shard_size_plans_shards_of_about_that_size(corpus_dir):
    total = sum(os.path.getsize(p) for p in FILES)
    plan = build(set_key("corpus", "shard_size", total // 6))
    assert 2 <= len(plan.shards) <= 12
    assert sum(s.size for s in plan.corpus_plan.shards) == total


def test_per_shard_output_has_a_part_per_shard(corpus_dir):
    single = build(set_key("corpus", "num_shards", 2))
    assert not single.per_shard_output and single.scored_files == ("scored.jsonl",)
    assert single.output["format"] == "jsonl" and single.output_schema == ()
    assert single.targets == ("scored.jsonl", "results/summary.json", "selected.jsonl")

    per_shard = build(set_key("corpus", "num_shards", 2), set_key("output", "layout", "per_shard"))
    assert per_shard.per_shard_output and per_shard.output["path"] == "scored"
    assert per_shard.scored_files == tuple(f"scored/{part_name(s, 'jsonl')}" for s in per_shard.shards)
    assert per_shard.targets == (*per_shard.scored_files, "results/summary.json", "selected.jsonl")


def test_a_parquet_output_has_its_schema_in_either_layout(corpus_dir):
    schema = ("results/corpus/output_schema.parquet",)
    parquet = set_key("output", "format", "parquet")
    assert build(parquet).output_schema == schema
    per_shard = build(parquet, set_key("output", "layout", "per_shard"))
    assert per_shard.output_schema == schema
    assert per_shard.selection["path"] == "selected.parquet"  # the selection takes the output's format


def test_a_trained_scorer_pretrains_the_proxy_and_trains_the_tokenizer(corpus_dir):
    plan = build()
    assert plan.scorer_checkpoint is None and plan.checkpoint_source is None
    assert plan.pretrain_proxy and plan.train_tokenizer
    assert "arch" in plan.proxy and "arch" in plan.scorer_base
    assert plan.tokenizer_source == plan.tokenizer_fetch_source == plan.proxy  # models.tokenizer names none
    assert plan.scorer_tokenizer == "results/models/scorer_base"


def test_a_tokenizer_or_proxy_from_the_hub_is_fetched(corpus_dir):
    tokenizer = build(set_key("models", "tokenizer", {"repo": "org/tok"}))
    assert tokenizer.pretrain_proxy and not tokenizer.train_tokenizer
    assert tokenizer.tokenizer_source == tokenizer.tokenizer_fetch_source == {"repo": "org/tok"}
    proxy = build(set_key("models", "proxy", {"repo": "org/proxy"}))
    assert not proxy.pretrain_proxy and not proxy.train_tokenizer
    assert proxy.tokenizer_source == {"repo": "org/proxy"}


def test_a_pretrained_scorer_has_no_proxy_and_keeps_its_own_tokenizer(corpus_dir):
    hub = build(set_key("scorer", "checkpoint", "org/scorer"), set_key("scorer", "checkpoint_revision", "v2"))
    assert hub.checkpoint_source == {"repo": "org/scorer", "revision": "v2"}
    assert hub.proxy is hub.scorer_base is hub.tokenizer_source is None
    assert not hub.pretrain_proxy and not hub.train_tokenizer
    assert hub.tokenizer_fetch_source == {"path": "results/scorer"} and hub.scorer_tokenizer == "results/scorer"
    (corpus_dir / "scorer").mkdir()
    local = build(set_key("scorer", "checkpoint", "data/scorer"))
    assert local.checkpoint_source == {"path": "data/scorer"}


def test_sources_are_from_the_hub_unless_local_or_written_here(corpus_dir):
    plan = build()
    assert not plan.target_from_hub and not plan.eval_from_hub
    assert build(set_key("target", "source", "org/target")).target_from_hub
    assert not build(set_key("target", "source", demo_files("results")[1])).target_from_hub  # the demo writes it
    assert build(set_key("efficacy", "eval_source", "org/eval")).eval_from_hub
    assert not build(set_key("efficacy", "eval_source", "data/target.jsonl")).eval_from_hub


def test_the_demo_files_are_left_out_of_the_corpus_state(corpus_dir):
    demo = build(corpus=["data/part-0.jsonl", demo_files("results")[0]])
    assert demo.corpus_state == splits.local_state(["data/part-0.jsonl"])


def test_annotation_steps_parts_arms_and_memory(corpus_dir):
    plan = build(set_key("annotation", "steps", 10), set_key("annotation", "interval", 3),
                 set_key("proxy", "num_parts", 2), set_key("efficacy", "arms", ["conventional", "lqs"]))
    assert plan.annotated_steps == (0, 3, 6, 9) and plan.proxy_parts == (0, 1)
    assert plan.efficacy_arms == ("conventional", "lqs")
    assert plan.proxy_mem_mb == 8000 + 2 * 4 * 32  # annotation.batch_size × corpus.max_length
    assert plan.scorer_mem_mb == 8000 + 2 * 8 * 32  # scorer.batch_size × scorer.max_length


@pytest.mark.parametrize(("edit", "changed"), [
    (set_key("corpus", "max_chars", 500), {"scores", "selection", "efficacy"}),
    (set_key("selection", "ratio", 0.5), {"selection", "efficacy"}),
    (set_key("efficacy", "lr", 0.01), {"efficacy"}),
    (set_key("selection", "path", "chosen.jsonl"), set()),
])
def test_each_digest_changes_exactly_when_its_configuration_does(corpus_dir, edit, changed):
    before, after = build().config_digests, build(edit).config_digests
    assert {name for name in before if before[name] != after[name]} == changed


def test_the_splits_digests_follow_the_shards_not_the_configuration(corpus_dir):
    base = build(set_key("corpus", "num_shards", 2))
    assert build(set_key("corpus", "num_shards", 2), set_key("corpus", "max_chars", 500)).shard_splits_sha256 \
        == base.shard_splits_sha256
    assert build(set_key("corpus", "num_shards", 3)).splits_sha256("0") != base.splits_sha256("0")


def test_the_plan_is_frozen(corpus_dir):
    plan = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.shards = ()
