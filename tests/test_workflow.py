"""Workflow-level tests: the Snakemake DAG end to end, bad input, lint, config validation and
incremental re-planning after config or input edits (docs/configuration.md#what-reruns-after-an-edit:
each rule's params carry exactly the configuration its stage depends on).

The expensive run is shared: `completed_workflow` (conftest) is run once per session, and every
test that changes anything works on a copy (shutil.copytree with symlinks=True, so the copy
keeps the .snakemake metadata — params, code, input checksums — and the file mtimes).
"""

from __future__ import annotations

import collections
import itertools
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    GOOD,
    ROOT,
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
from safetensors import safe_open

from lqs.corpus import iter_records

pytestmark = pytest.mark.workflow  # every test here runs Snakemake or reads completed_workflow

# tiny_config: annotation steps 4, interval 4, batch 4; proxy 48 windows in 1 part; 1 shard. A test about
# several shards sets SEVERAL_SHARDS (several steps and parts: the stages' tests, test_annotation.py).
ANNOTATED_STEPS = [0]
NUM_PARTS = 1
NUM_SHARDS = 1
SEVERAL_SHARDS = 2
MAIN_RULES = {"tokenize_shard", "sample_proxy", "trajectory", "grad_stats", "lqs_labels",
              "train_scorer", "tokenize_scorer_shard", "score_shard"}
def bad_corpus() -> tuple[list[str], dict[int, str]]:
    """The tiny corpus with four bad records; returns the JSONL lines and {line number: reason}."""
    lines = [json.dumps(d) for d in tiny_corpus()]
    bad = {
        4: ('{"id": "bad-json", "text": "unterminated', "invalid JSON"),
        11: ('["not", "an", "object"]', "not a JSON object"),
        26: ('{"id": "no-text", "source": "good"}', "missing text field"),
        41: ('{"id": "empty-text", "text": "   ", "source": "good"}', "empty text"),
    }
    for lineno in sorted(bad):
        lines.insert(lineno - 1, bad[lineno][0])
    for lineno, (raw, _) in bad.items():
        assert lines[lineno - 1] == raw
    return lines, {lineno: reason for lineno, (_, reason) in bad.items()}


# ----------------------------------------------------------------------------------------------
# 1. end to end


def test_scored_jsonl_one_line_per_document_in_order_fields_unchanged(completed_workflow):
    corpus = tiny_corpus()
    lines = (completed_workflow / "scored.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(corpus) == 120
    scored = [json.loads(line) for line in lines]
    assert [r["id"] for r in scored] == [d["id"] for d in corpus]
    for record, original in zip(scored, corpus):
        score = record.pop("score")
        assert record == original
        assert list(record) == list(original)  # field order kept, score appended
        assert isinstance(score, float) and math.isfinite(score)
    assert (completed_workflow / "rejects.jsonl").read_text() == ""


def test_summary(completed_workflow):
    summary = json.loads((completed_workflow / "results" / "summary.json").read_text())
    assert summary["documents_read"] == 120
    assert summary["documents_scored"] == 120
    assert summary["documents_rejected"] == 0

    by_source = collections.defaultdict(list)
    for record in read_jsonl(completed_workflow / "scored.jsonl"):
        by_source[record["source"]].append(record["score"])
    assert set(summary["mean_score_by_source"]) == set(by_source) == {"good", "noise", "repeat"}
    for source, scores in by_source.items():
        assert summary["mean_score_by_source"][source] == pytest.approx(sum(scores) / len(scores))

    spearman = summary["scorer_valid_spearman"]
    assert isinstance(spearman, float) and -1.0 <= spearman <= 1.0

    proxy = Path(summary["proxy_model"])
    proxy = proxy if proxy.is_absolute() else completed_workflow / proxy
    assert proxy.is_dir()
    assert json.loads((proxy / "config.json").read_text())["model_type"] == "mistral"
    with safe_open(str(proxy / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}
    assert (proxy / "tokenizer_config.json").is_file()
    assert (proxy / "tokenizer.json").is_file()

    annotation = summary["annotation"]
    assert {k: annotation[k] for k in ("lr", "steps", "interval", "score")} == \
        {"lr": 0.05, "steps": 4, "interval": 4, "score": "lqs"}

    stage_seconds = summary["stage_seconds"]
    assert MAIN_RULES <= set(stage_seconds)
    assert all(isinstance(v, (int, float)) and v >= 0 for v in stage_seconds.values())


def test_scorer_api_gives_the_workflows_scores(completed_workflow):
    """lqs.scorer's Python API on the workflow's scorer and corpus: the scores of scored.jsonl."""
    import lqs.scorer

    scorer = lqs.scorer.load(completed_workflow / "results" / "scorer", device="cpu")
    scored = read_jsonl(completed_workflow / "scored.jsonl")
    texts = [d["text"] for d in tiny_corpus()]
    got = scorer.score(texts)
    assert len(set(got)) > 80  # different documents, different scores: the comparison means something
    expected = [r["score"] for r in scored]
    # the workflow batches per shard, the API all texts at once: rounding differs (measured 7e-9)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-7)


def _is_int_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) and pa.types.is_integer(t.value_type)


def test_intermediate_files(completed_workflow):
    results = completed_workflow / "results"
    corpus_windows = {}
    # each window and each score carries its record's fingerprint (corpus.Record.fingerprint)
    fingerprints = {r.doc_id: r.fingerprint for r in iter_records([str(completed_workflow / "data/corpus.jsonl")])}
    for shard in range(NUM_SHARDS):
        table = pq.read_table(results / "corpus" / f"shard-{shard}.parquet")
        assert table.column_names == ["doc_id", "window", "input_ids", "fingerprint", "ends", "source"]
        for d, w, ids, f in zip(*(table.column(c).to_pylist() for c in table.column_names[:4])):
            corpus_windows[(d, w)] = ids
            assert f == fingerprints[d]
        # the scorer (arch) takes the proxy tokenizer: its windows were cut from these ids, no text tokenized
        log = (results / "logs" / "tokenize_scorer_shard" / f"{shard}.log").read_text()
        stats = json.loads(log.split("stage stats: ")[-1])
        assert stats["counts"]["texts tokenized"] == 0 < stats["counts"]["documents"]
        scores = pq.read_table(results / "scores" / f"shard-{shard}.parquet")
        assert scores.column_names == ["doc_id", "score", "truncated", "n_tokens", "n_windows", "fingerprint",
                                       "source"]
        assert scores["fingerprint"].to_pylist() == [fingerprints[d] for d in scores["doc_id"].to_pylist()]

    samples = pq.read_table(results / "proxy" / "samples.parquet")
    schema = samples.schema
    assert schema.field("sample_id").type == pa.int64()
    assert pa.types.is_integer(schema.field("doc_id").type)
    assert pa.types.is_integer(schema.field("window").type)
    assert _is_int_list(schema.field("input_ids").type)
    assert samples.num_rows == 48
    sample_ids = samples.column("sample_id").to_pylist()
    assert len(set(sample_ids)) == len(sample_ids)
    for d, w, ids in zip(*(samples.column(c).to_pylist() for c in ("doc_id", "window", "input_ids"))):
        assert corpus_windows[(d, w)] == ids  # a proxy sample is a corpus window

    batches = pq.read_table(results / "annotation" / "trajectory" / "batches.parquet")
    assert pa.types.is_integer(batches.schema.field("step").type)
    assert pa.types.is_integer(batches.schema.field("position").type)
    assert _is_int_list(batches.schema.field("input_ids").type)
    steps, batch_size = 4, 4
    assert batches.num_rows == steps * batch_size
    order = list(zip(batches.column("step").to_pylist(), batches.column("position").to_pylist()))
    assert order == [(s, p) for s in range(steps) for p in range(batch_size)]
    assert all(len(ids) > 0 for ids in batches.column("input_ids").to_pylist())

    target = pq.read_table(results / "target" / "tokens.parquet")
    assert _is_int_list(target.schema.field("input_ids").type)
    assert target.num_rows > 0 and all(target.column("input_ids").to_pylist())

    labels = pq.read_table(results / "annotation" / "labels.parquet").to_pydict()
    assert {"sample_id", "raw", "score", "split"} <= set(labels)
    assert sorted(labels["sample_id"]) == sorted(sample_ids)
    assert all(math.isfinite(v) for v in labels["raw"] + labels["score"])
    assert collections.Counter(labels["split"]) == {"train": 36, "valid": 12}  # valid_size 0.25

    trajectory = results / "annotation" / "trajectory"
    assert sorted(p.name for p in trajectory.glob("step-*.safetensors")) == \
        [f"step-{t}.safetensors" for t in ANNOTATED_STEPS]


# ----------------------------------------------------------------------------------------------
# 3. lint, 4. config validation


def test_lint_is_clean():
    result = snakemake(ROOT, "--lint", cores=None, timeout=120)
    output = result.stdout + result.stderr
    assert "Congratulations" in output, output


@pytest.mark.parametrize("edit, message", [
    (set_key("annotation", "lr", "fast"), 'annotation.lr: "fast" is not valid: expected number'),
    (set_key("corpus", "num_shards", "many"),
     'corpus.num_shards: "many" is not valid: expected an integer >= 1 or per_file'),
    (set_key("scorer", "epochs", 1.5), "scorer.epochs: 1.5 is not valid: expected integer"),
    (set_key("annotation", "learning_rate", 0.1),
     "annotation: Additional properties are not allowed ('learning_rate' was unexpected)"),
    (set_key("bogus_section", 1),
     "(top level): Additional properties are not allowed ('bogus_section' was unexpected)"),
], ids=["wrong-type-lr", "wrong-type-num-shards", "wrong-type-epochs", "unknown-key", "unknown-section"])
def test_config_validation_names_the_key_in_one_line(tmp_path, edit, message):
    config = tiny_config("data/corpus.jsonl", "data/target.jsonl")
    edit(config)
    write_jsonl(tmp_path / "data" / "corpus.jsonl", tiny_corpus(6))
    make_workflow(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"invalid configuration:\n  {message}\n" in output, output
    assert "$schema" not in output and "description" not in output, output  # never the schema


# ----------------------------------------------------------------------------------------------
# 5. planning: exactly the affected stages rerun


def test_copied_completed_workflow_plans_nothing(completed_workflow, tmp_path):
    workdir = copy_workflow(completed_workflow, tmp_path)
    assert plan(workdir) == []


ALL_STATS = {"grad_stats": len(ANNOTATED_STEPS) * NUM_PARTS}
SCORING = {"score_shard": NUM_SHARDS, "gather_scores": 1, "select_order": 1, "all": 1}


@pytest.mark.parametrize("edit, expected, changed", [
    (set_key("annotation", "lr", 0.1),
     {"trajectory": 1, **ALL_STATS, "lqs_labels": 1, "train_scorer": 1, **SCORING}, "trajectory"),
    (set_key("annotation", "score", "pds"),
     {"lqs_labels": 1, "train_scorer": 1, **SCORING}, "lqs_labels"),
    (set_key("annotation", "stats_dtype", "bf16"),
     {**ALL_STATS, "lqs_labels": 1, "train_scorer": 1, **SCORING}, "grad_stats"),
    (set_key("scorer", "lr", 0.002), {"train_scorer": 1, **SCORING}, "train_scorer"),
    (set_key("inference", "max_tokens", 1024), SCORING, "score_shard"),
    (set_key("inference", "dtype", "bf16"), SCORING, "score_shard"),
    # the scorer's windows change: they are made again on the CPU, then scored
    (set_key("inference", "max_windows_per_doc", 2), {"tokenize_scorer_shard": NUM_SHARDS, **SCORING},
     "tokenize_scorer_shard"),
    # the writer of the output (gather_scores; write_part with layout per_shard) rejects a record
    # that already has the field, so a new name rescores nothing
    (set_key("output", "score_field", "lqs_score"), {"gather_scores": 1, "select_order": 1, "all": 1},
     "gather_scores"),
    (set_key("demo", "seed", 1), {}, None),  # demo_data is not in this DAG
], ids=["annotation.lr", "annotation.score", "annotation.stats_dtype", "scorer.lr",
        "inference.max_tokens", "inference.dtype", "inference.max_windows_per_doc", "output.score_field",
        "demo.seed"])
def test_config_edit_plans_exactly_the_affected_stages(completed_workflow, tmp_path, edit, expected,
                                                       changed):
    workdir = copy_workflow(completed_workflow, tmp_path)
    edit_config(workdir, edit)
    jobs = plan(workdir)
    assert rule_counts(jobs) == expected
    if changed is not None:
        for job in jobs:
            if job["rule"] == changed:
                assert job["reason"].startswith("Params have changed"), job
    stats = [(int(j["wildcards"]["t"]), int(j["wildcards"]["p"])) for j in jobs if j["rule"] == "grad_stats"]
    if stats:
        assert sorted(stats) == [(t, p) for t in ANNOTATED_STEPS for p in range(NUM_PARTS)]
    shards = [int(j["wildcards"]["shard"]) for j in jobs if j["rule"] == "score_shard"]
    if shards:
        assert sorted(shards) == list(range(NUM_SHARDS))


# ----------------------------------------------------------------------------------------------
# 2. bad input


def test_bad_records_skip_go_to_rejects_with_reasons(per_file_workflow):
    """on_bad_record: skip, in per_file_workflow's run: its two files hold bad_corpus() (split
    after line SPLIT: three bad records in the first file, one in the second)."""
    lines, bad = bad_corpus()
    where = {n: ("data/corpus-a.jsonl", n) if n <= SPLIT else ("data/corpus-b.jsonl", n - SPLIT) for n in bad}
    rejects = read_jsonl(per_file_workflow / "rejects.jsonl")
    assert [(r["file"], r["line"]) for r in rejects] == [where[n] for n in sorted(bad)]
    for entry, n in zip(rejects, sorted(bad)):
        assert bad[n] in entry["reason"], entry
        assert entry["record"] == lines[n - 1]

    summary = json.loads((per_file_workflow / "results" / "summary.json").read_text())
    assert summary["documents_read"] == len(lines) == 124
    assert summary["documents_rejected"] == len(bad) == 4
    assert summary["documents_scored"] == 120
    assert summary["documents_read"] == summary["documents_scored"] + summary["documents_rejected"]

    scored = read_jsonl(per_file_workflow / "scored.jsonl")
    corpus = tiny_corpus()
    assert [r["id"] for r in scored] == [d["id"] for d in corpus]
    assert [{k: v for k, v in r.items() if k != "score"} for r in scored] == corpus


def test_bad_records_error_names_file_and_line(tiny_workflow):
    lines, bad = bad_corpus()
    write_jsonl(tiny_workflow / "data" / "corpus.jsonl", lines)
    edit_config(tiny_workflow, set_key("corpus", "on_bad_record", "error"))
    edit_config(tiny_workflow, set_key("corpus", "num_shards", SEVERAL_SHARDS))
    shards = [f"results/corpus/shard-{s}.parquet" for s in range(SEVERAL_SHARDS)]
    result = snakemake(tiny_workflow, "--keep-going", *shards, check=False)
    assert result.returncode != 0, result.stdout + result.stderr

    first_bad = min(bad)
    logs = {s: (tiny_workflow / "results" / "logs" / "tokenize_shard" / f"{s}.log").read_text()
            for s in range(SEVERAL_SHARDS)}
    assert f"data/corpus.jsonl:{first_bad}" in "".join(logs.values())
    # shard s holds the lines that start in its s-th of the file's bytes (the file as one split each)
    starts = list(itertools.accumulate(len(line.encode()) + 1 for line in lines))
    size = (tiny_workflow / "data" / "corpus.jsonl").stat().st_size
    for shard, log in logs.items():
        own = [n for n in bad if round(shard * size / SEVERAL_SHARDS) <= ([0] + starts)[n - 1]
               < round((shard + 1) * size / SEVERAL_SHARDS)]
        if not own:  # no bad line starts in this shard's bytes: it is tokenized
            assert (tiny_workflow / shards[shard]).exists(), log
            continue
        assert f"data/corpus.jsonl:{min(own)}" in log, log
        assert bad[min(own)] in log, log
        assert not (tiny_workflow / shards[shard]).exists()


# ----------------------------------------------------------------------------------------------
# 6. a pretrained scorer (scorer.checkpoint): no proxy, no annotation, no scorer training


CHECKPOINT_PLAN = {"fetch_scorer": 1, "fetch_tokenizer": 1, "tokenize_shard": SEVERAL_SHARDS,
                   "tokenize_scorer_shard": SEVERAL_SHARDS, "score_shard": SEVERAL_SHARDS, "gather_scores": 1,
                   "select_order": 1, "all": 1}
UNUSED_WITH_CHECKPOINT = {"train_tokenizer", "fetch_proxy", "pretrain_proxy", "fetch_scorer_base", "train_scorer"}


def planned(workdir: Path, *args: str) -> dict[str, int]:
    """The jobs per rule that `snakemake -n` plans for a workflow not yet run."""
    result = snakemake(workdir, "-n", *args)
    jobs, stats = parse_plan(result.stdout + "\n" + result.stderr)
    assert collections.Counter(j["rule"] for j in jobs) == stats
    return dict(stats)


@pytest.fixture(scope="module")
def scorer_checkpoint(tmp_path_factory) -> Path:
    return tiny_scorer(tmp_path_factory.mktemp("checkpoint"))


def test_scorer_checkpoint_needs_no_models_section(tmp_path, scorer_checkpoint):
    """A config of only a corpus and a checkpoint (no models, no target) plans the scoring; the
    efficacy target, which needs an architecture, says so at DAG build."""
    write_jsonl(tmp_path / "data" / "corpus.jsonl", tiny_corpus(24))
    make_workflow(tmp_path, {"corpus": {"path": "data/corpus.jsonl", "num_shards": SEVERAL_SHARDS},
                             "scorer": {"checkpoint": str(scorer_checkpoint)}})
    plan = planned(tmp_path)
    assert plan == CHECKPOINT_PLAN
    # every rule is defined (rules/models.smk); those the checkpoint replaces are not in the DAG
    assert not set(plan) & UNUSED_WITH_CHECKPOINT

    result = snakemake(tmp_path, "-n", "efficacy", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output, output
    assert "efficacy.model is null, which means the proxy's architecture, but with scorer.checkpoint " \
           "there is no proxy; set efficacy.model" in output, output
    arch = {"model_type": "mistral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1}
    edit_config(tmp_path, set_key("efficacy", "model", arch))
    efficacy_plan = planned(tmp_path, "efficacy")
    assert efficacy_plan["efficacy_train"] == 15 and efficacy_plan["efficacy_classifier"] == 1  # 5 arms x 3 seeds

    # without the checkpoint, the models are required: one line naming the key
    edit_config(tmp_path, set_key("scorer", "checkpoint", None))
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "invalid configuration:\n  models: required unless scorer.checkpoint is set" in result.stdout + result.stderr


# ----------------------------------------------------------------------------------------------
# 5 (continued). per-file shards: editing one corpus file retokenizes that shard only


SPLIT = 32  # per_file_workflow's files: bad_corpus()'s first 32 lines, and the rest


@pytest.fixture(scope="module")
def per_file_workflow(tmp_path_factory, completed_workflow) -> Path:
    """A completed tiny workflow with num_shards: per_file over two corpus files that hold the tiny
    corpus and four bad records (bad_corpus(), on_bad_record: skip), scored by the completed run's
    scorer (scorer.checkpoint: no annotation, a third of the time). Its tokenizer is the
    checkpoint's: a tokenizer trained on the corpus depends on every corpus file, so editing any
    file would rightly retokenize every shard."""
    workdir = tmp_path_factory.mktemp("per_file")
    lines, _ = bad_corpus()
    write_jsonl(workdir / "data" / "corpus-a.jsonl", lines[:SPLIT])
    write_jsonl(workdir / "data" / "corpus-b.jsonl", lines[SPLIT:])
    write_jsonl(workdir / "data" / "target.jsonl",
                [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
    config = tiny_config(["data/corpus-a.jsonl", "data/corpus-b.jsonl"], "data/target.jsonl")
    config["corpus"] |= {"num_shards": "per_file", "on_bad_record": "skip"}
    config["scorer"]["checkpoint"] = str(completed_workflow / "results" / "scorer")
    make_workflow(workdir, config)
    snakemake(workdir)
    return workdir


def test_per_file_workflow_scores_every_document_in_order(per_file_workflow):
    scored = read_jsonl(per_file_workflow / "scored.jsonl")
    corpus = tiny_corpus()
    assert [r["id"] for r in scored] == [d["id"] for d in corpus]
    assert [{k: v for k, v in r.items() if k != "score"} for r in scored] == corpus
    summary = json.loads((per_file_workflow / "results" / "summary.json").read_text())
    assert (summary["documents_read"], summary["documents_scored"]) == (124, 120)  # and 4 bad records


def test_editing_one_corpus_file_retokenizes_only_its_shard(per_file_workflow, tmp_path):
    workdir = copy_workflow(per_file_workflow, tmp_path)
    assert plan(workdir) == []

    path = workdir / "data" / "corpus-b.jsonl"
    records = read_jsonl(path)
    records[5]["text"] = "An edited document about reading files line by line."
    write_jsonl(path, records)

    jobs = plan(workdir)
    # shard 1 changed: it is retokenized and rescored (by the same scorer); shard 0 stands
    assert rule_counts(jobs) == {"tokenize_shard": 1, "tokenize_scorer_shard": 1, "score_shard": 1,
                                 "gather_scores": 1, "select_order": 1, "all": 1}
    [key] = {j["wildcards"]["shard"] for j in jobs if "shard" in j["wildcards"]}  # the shard of corpus-b.jsonl
    assert [j["rule"] for j in jobs if j["wildcards"].get("shard") == key] == \
        ["tokenize_shard", "tokenize_scorer_shard", "score_shard"]
    tokenize = [j for j in jobs if j["rule"] == "tokenize_shard"]
    assert tokenize[0]["reason"] == "Updated input files: data/corpus-b.jsonl"
    assert not any("data/corpus-a.jsonl" in j["reason"] for j in jobs)

    # Where the workflow trains its scorer, the proxy LM is pretrained on all shards and the
    # proxy set and the training batches are drawn from all shards: an edited file reruns the
    # annotation and the scorer too, and every shard is rescored with the new scorer.
    edit_config(workdir, set_key("scorer", "checkpoint", None))
    dry_run = snakemake(workdir, "-n").stdout
    for rule in ("pretrain_proxy", "sample_proxy", "trajectory"):
        [job] = [block for block in dry_run.split("\n\n") if f"rule {rule}:" in block]
        shard_files = [str(p.relative_to(workdir)) for p in (workdir / "results" / "corpus").glob("shard-*.parquet")]
        assert len(shard_files) == 2 and all(f in job for f in shard_files), job


def test_unfinished_scoring_redoes_only_unfinished_shards(per_file_workflow, tmp_path):
    workdir = copy_workflow(per_file_workflow, tmp_path)
    assert planned(workdir, "--rerun-incomplete") == {}
    # Killed while scoring shard 1: its output never appeared (outputs appear only when complete),
    # and gather never ran; shard 0 had finished.
    later = sorted((workdir / "results" / "scores").glob("shard-*.parquet"))[1].relative_to(workdir)
    for done_later in (later, "scored.jsonl", "rejects.jsonl", "results/summary.json"):
        (workdir / done_later).unlink()
    assert planned(workdir, "--rerun-incomplete") == {"score_shard": 1, "gather_scores": 1, "select_order": 1,
                                                      "all": 1}
    snakemake(workdir)
    assert (workdir / "scored.jsonl").read_bytes() == (per_file_workflow / "scored.jsonl").read_bytes()


def test_failed_rerun_of_gather_keeps_the_previous_results(completed_workflow, tmp_path):
    """Snakemake deletes a job's outputs before running it; gather_scores' are kept until their
    replacements are complete (update()), and restored when the rerun fails."""
    workdir = copy_workflow(completed_workflow, tmp_path)
    outputs = [workdir / "scored.jsonl", workdir / "rejects.jsonl", workdir / "results" / "summary.json"]
    before = [p.read_bytes() for p in outputs]
    shard = workdir / "results" / "scores" / "shard-0.parquet"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated: gather reruns (newer input) and fails
    result = snakemake(workdir, "scored.jsonl", check=False)
    assert result.returncode != 0
    assert "Restored previous version of scored.jsonl" in result.stdout + result.stderr
    assert [p.read_bytes() for p in outputs] == before
