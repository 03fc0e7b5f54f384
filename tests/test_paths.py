"""What the workflow writes, and what it never touches (issue 20): no output is, holds or lies
inside an input or another output; the per_shard clean-up deletes only parts the workflow wrote;
--config values arrive parsed; an output's extension never contradicts its format; a run whose
Snakemake process was killed is finished by a plain rerun; absurd shard counts stop at DAG build."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import (
    ROOT,
    copy_workflow,
    edit_config,
    parse_plan,
    rule_counts,
    set_key,
    snakemake,
    tiny_corpus,
    write_jsonl,
    write_plan,
)

from lqs import config as lqs_config
from lqs import corpus, splits
from lqs.paths import path_conflicts
from lqs.stages import gather_scores as gather

SCHEMA = yaml.safe_load((ROOT / "lqs" / "schema.yaml").read_text())


def refused(workdir: Path, *args: str) -> str:
    """The configuration errors of a refused dry run (it must stop before planning any job)."""
    result = snakemake(workdir, "-n", *args, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "invalid configuration:" in text, text
    assert "Job stats" not in text and "Traceback" not in text, text
    return text


def defaults(config: dict) -> dict:
    from snakemake.utils import validate

    validate(config, str(ROOT / "lqs" / "schema.yaml"))
    return config


# ----------------------------------------------------------------------------------------------
# 1, 6: outputs against inputs and against each other


@pytest.mark.workflow
def test_output_path_equal_to_the_corpus_file_is_refused(tiny_workflow):
    corpus = (tiny_workflow / "data" / "corpus.jsonl").read_bytes()
    edit_config(tiny_workflow, set_key("output", {"path": "data/corpus.jsonl"}))
    text = refused(tiny_workflow)
    assert "output.path: 'data/corpus.jsonl' is the same path as corpus.path ('data/corpus.jsonl')" in text
    assert (tiny_workflow / "data" / "corpus.jsonl").read_bytes() == corpus


@pytest.mark.workflow
@pytest.mark.parametrize("settings, line", [
    ({"output": {"rejects_path": "scored.jsonl"}},
     "output.rejects_path: 'scored.jsonl' is the same path as output.path ('scored.jsonl')"),
    ({"selection": {"path": "scored.jsonl"}},
     "selection.path: 'scored.jsonl' is the same path as output.path ('scored.jsonl')"),
    ({"corpus": {"path": "data"}, "output": {"path": "data/scored.jsonl"}},
     "output.path: 'data/scored.jsonl' lies inside corpus.path ('data')"),
])
def test_outputs_that_meet_an_input_or_each_other_are_refused(tiny_workflow, settings, line):
    def edit(config):
        for section, values in settings.items():
            config.setdefault(section, {}).update(values)

    edit_config(tiny_workflow, edit)
    assert line in refused(tiny_workflow)


@pytest.mark.workflow
def test_per_shard_output_in_the_corpus_directory_is_refused(tmp_path, tiny_workflow):
    """The issue's per_shard case: a Spark/HF-named corpus part in the directory output.path names."""
    part = tiny_workflow / "data" / "part-00000-c000.jsonl"
    (tiny_workflow / "data" / "corpus.jsonl").rename(part)
    edit_config(tiny_workflow, set_key("corpus", "path", "data"))
    edit_config(tiny_workflow, set_key("output", {"layout": "per_shard", "path": "data"}))
    corpus = part.read_bytes()
    assert "output.path: 'data' is the same path as corpus.path ('data')" in refused(tiny_workflow)
    assert part.read_bytes() == corpus


def test_path_conflicts_resolve_symlinks_and_globs_and_skip_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    (tmp_path / "link").symlink_to("data")
    assert path_conflicts({"INPUT": ["link/a.jsonl"]}, {"--out": "data/a.jsonl"}) == [
        ("--out: 'data/a.jsonl' is the same path as INPUT ('link/a.jsonl'): the run would overwrite its input or"
        " read its own output back as input; choose another path")]
    glob_input = {"corpus.path": ["data/*.jsonl"]}
    assert path_conflicts(glob_input, {"o": "data/scored.jsonl"})  # the next run would read it
    assert path_conflicts(glob_input, {"o": "data/scored.parquet", "p": "data/sub/x.jsonl", "q": "out"}) == []
    assert path_conflicts(glob_input, {"o": "."})[0].startswith("o: '.' contains the files of corpus.path")
    assert path_conflicts({"corpus.path": ["data/**/*.jsonl"]}, {"o": "data/sub/deep/x.jsonl"})
    assert path_conflicts({"corpus.path": ["data/*/*.jsonl"]}, {"per_shard": "data/sub"})  # its parts would match
    assert path_conflicts({"corpus.path": ["s3://bucket/data", "hf://datasets/o/n/*.jsonl"]}, {"o": "data"}) == []
    assert path_conflicts({}, {"a": "out", "b": "out/rejects.jsonl", "c": None}) == [
        "b: 'out/rejects.jsonl' lies inside a ('out'): one output would replace the other; choose another path"]


def test_the_demo_inputs_the_workflow_writes_are_no_conflict(tmp_path, monkeypatch):
    """The demo's corpus and target set lie under results/, which the workflow writes: they are
    its own outputs, not a user's data; a user's corpus there is refused."""
    monkeypatch.chdir(tmp_path)
    config = defaults(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    outputs, _ = lqs_config.resolve_outputs(config, [])
    own = ["results/demo/corpus.jsonl", "results/demo/target.jsonl"]
    assert lqs_config.path_errors(config, outputs, "results", own) == []
    config["corpus"]["path"] = "results/mine.jsonl"
    assert lqs_config.path_errors(config, outputs, "results", own) == [
        ("results/ (the workflow's own files): 'results' contains corpus.path ('results/mine.jsonl'): the run"
        " would overwrite its input or read its own output back as input; choose another path")]
    (tmp_path / "eval.jsonl").write_text("{}\n")
    config["corpus"]["path"], config["efficacy"]["eval_source"] = own[0], "eval.jsonl"
    config["selection"]["path"] = "eval.jsonl"
    outputs, _ = lqs_config.resolve_outputs(config, [])
    assert lqs_config.path_errors(config, outputs, "results", own)[0].startswith(
        "selection.path: 'eval.jsonl' is the same path as efficacy.eval_source ('eval.jsonl')")


# ----------------------------------------------------------------------------------------------
# 2: the per_shard clean-up deletes only parts the workflow wrote


def test_stale_part_clean_up_removes_only_unchanged_parts_the_manifest_lists(tmp_path, caplog):
    out, manifest = tmp_path / "out", tmp_path / "results" / "output_parts.json"
    out.mkdir()
    notes = out / "part-notes.txt"
    notes.write_text("the user's notes")
    spark = out / "part-00000-c000.jsonl"  # Spark/HF naming: a file the workflow never wrote
    spark.write_text('{"text": "a corpus part"}\n')
    for shard in range(4):
        (out / f"part-{shard}.jsonl").write_text(f"run 1, shard {shard}\n")
    first = [str(out / f"part-{shard}.jsonl") for shard in range(4)]
    assert gather.remove_stale_parts(str(out), first, manifest) == []
    assert json.loads(manifest.read_text())[str(out)].keys() == {f"part-{s}.jsonl" for s in range(4)}

    (out / "part-3.jsonl").write_text("edited by the user since")
    with caplog.at_level(logging.WARNING):
        removed = gather.remove_stale_parts(str(out), first[:2], manifest)  # a rerun with 2 shards
    assert removed == [str(out / "part-2.jsonl")]
    assert sorted(p.name for p in out.iterdir()) == ["part-0.jsonl", "part-00000-c000.jsonl", "part-1.jsonl",
                                                     "part-3.jsonl", "part-notes.txt"]
    assert notes.read_text() == "the user's notes" and spark.read_text() == '{"text": "a corpus part"}\n'
    assert f"{out / 'part-3.jsonl'}: left in place: an earlier run wrote this part, but it has changed" in caplog.text
    assert "part-00000-c000.jsonl, part-3.jsonl, part-notes.txt" in caplog.text
    assert json.loads(manifest.read_text())[str(out)].keys() == {"part-0.jsonl", "part-1.jsonl"}


# ----------------------------------------------------------------------------------------------
# 10: --config values arrive parsed


def test_cli_integers_and_null_arrive_as_such_for_every_key():
    cli = {"corpus": {"num_shards": "4", "path": "data/corpus.jsonl"}, "output": {"path": "null"},
           "target": {"revision": "2024", "source": "null"}, "models": {"proxy": {"arch": {"hidden_size": "64"}}}}
    config = json.loads(json.dumps(cli))
    lqs_config.coerce_cli_values(config, cli, SCHEMA)
    assert config["corpus"] == {"num_shards": 4, "path": "data/corpus.jsonl"}
    assert config["output"]["path"] is None
    # 2024 is no revision: it stays a string; null is null even where only strings are valid, so that
    # validation refuses it naming the key rather than reading a file or repo named "null"
    assert config["target"] == {"revision": "2024", "source": None}
    assert config["models"]["proxy"]["arch"]["hidden_size"] == 64  # a free-form mapping: anything is valid


@pytest.mark.workflow
def test_config_mappings_on_the_command_line_keep_numbers_and_null(tiny_workflow):
    result = snakemake(tiny_workflow, "-n", "-p", "--config", 'corpus={"num_shards": 4, "path": "data/corpus.jsonl"}',
                       'output={"path": null}')
    jobs, _ = parse_plan(result.stdout)
    assert rule_counts(jobs)["tokenize_shard"] == 4
    gather_command = next(line for line in result.stdout.splitlines() if "lqs gather-scores " in line)
    assert "--out scored.jsonl " in gather_command and "--out null" not in result.stdout


# ----------------------------------------------------------------------------------------------
# 11: the extension and the format agree


def test_output_format_follows_the_output_paths_extension(tmp_path):
    parquet_corpus = [str(tmp_path / "corpus.parquet")]
    config = defaults({"corpus": {"path": parquet_corpus}, "scorer": {"checkpoint": "s"},
                       "output": {"path": "pq_scored.jsonl"}})
    unchanged = copy.deepcopy(config)
    outputs, errors = lqs_config.resolve_outputs(config, parquet_corpus)
    assert errors == [] and config == unchanged  # the config stays as the user wrote it
    assert outputs.format == "jsonl" and outputs.selection_path == "selected.jsonl"

    config = defaults({"corpus": {"path": parquet_corpus}, "scorer": {"checkpoint": "s"},
                       "selection": {"path": "chosen.jsonl.gz"}})
    outputs, errors = lqs_config.resolve_outputs(config, parquet_corpus)
    assert errors == [] and outputs.format == "jsonl.gz" and outputs.path == "scored.jsonl.gz"

    config = defaults({"corpus": {"path": parquet_corpus}, "scorer": {"checkpoint": "s"},
                       "output": {"path": "pq_scored.jsonl", "format": "parquet"},
                       "selection": {"path": "chosen.parquet"}})
    assert lqs_config.resolve_outputs(config, parquet_corpus)[1] == [
        ("output.path: 'pq_scored.jsonl' names a jsonl file, but the output is parquet (output.format is parquet);"
        " make the extension and output.format agree")]

    config = defaults({"corpus": {"path": parquet_corpus}, "scorer": {"checkpoint": "s"},
                       "output": {"path": "pq_scored.jsonl"}, "selection": {"path": "chosen.parquet"}})
    assert lqs_config.resolve_outputs(config, parquet_corpus)[1] == [
        ("selection.path: 'chosen.parquet' names a parquet file, but the output is jsonl (output.format null takes"
        " it from output.path 'pq_scored.jsonl'); make the extension and output.format agree")]


@pytest.mark.workflow
def test_a_jsonl_output_path_on_a_parquet_corpus_is_planned_as_jsonl(tiny_workflow):
    docs = tiny_corpus()
    pq.write_table(pa.Table.from_pylist(docs), tiny_workflow / "data" / "corpus.parquet")
    edit_config(tiny_workflow, set_key("corpus", "path", "data/corpus.parquet"))
    edit_config(tiny_workflow, set_key("output", {"path": "pq_scored.jsonl"}))
    shell = snakemake(tiny_workflow, "-n", "-p").stdout
    gather_command = next(line for line in shell.splitlines() if "lqs gather-scores " in line)
    assert "--out pq_scored.jsonl" in gather_command and '"output_format": "jsonl"' in gather_command

    edit_config(tiny_workflow, set_key("output", "format", "parquet"))
    assert "output.path: 'pq_scored.jsonl' names a jsonl file, but the output is parquet" in refused(tiny_workflow)


# ----------------------------------------------------------------------------------------------
# rough edges: a killed Snakemake, absurd shard counts


@pytest.mark.workflow
def test_a_plain_rerun_finishes_a_run_whose_snakemake_was_killed(completed_workflow, tmp_path):
    wd = copy_workflow(completed_workflow, tmp_path)
    shutil.copytree(ROOT / "profiles", wd / "profiles")
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "-f", "results/summary.json"],
                           cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    incomplete = wd / ".snakemake" / "incomplete"
    deadline = time.monotonic() + 120
    while not (incomplete.is_dir() and any(incomplete.iterdir())):  # gather_scores has started
        assert run.poll() is None and time.monotonic() < deadline, "gather_scores never started"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)  # Snakemake and its job, as an out-of-memory kill or a crash would
    run.wait()

    locked = snakemake(wd, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stderr  # what the README says to do, and when
    snakemake(wd, "--unlock")
    rerun = snakemake(wd)
    assert "gather_scores" in rerun.stdout + rerun.stderr
    summary = json.loads((wd / "results" / "summary.json").read_text())
    assert summary["documents_read"] == 120
    assert "Nothing to be done" in snakemake(wd, "-n").stdout


@pytest.mark.workflow
def test_more_shards_than_the_corpus_can_fill_plan_fewer_with_a_warning(tiny_workflow):
    """corpus.num_shards far above what the files can be cut into (a Parquet file of three row
    groups, a gzip file): the DAG build plans a shard per row group and one for the gzip file,
    each non-empty, and says so; no error, and quickly (from metadata alone)."""
    # row groups of 50 documents of ~2 KB, uncompressed and without statistics: each over 20 times
    # the footer (splits.FOOTER_SHARE), so that each can be a shard
    docs = [d | {"text": d["text"] + " padding" * 250} for d in tiny_corpus(200)]
    pq.write_table(pa.Table.from_pylist(docs[:150]), tiny_workflow / "data" / "corpus.parquet", row_group_size=50,
                   write_statistics=False, compression="none")
    (tiny_workflow / "data" / "rest.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(d) + "\n" for d in docs[150:]).encode()))
    edit_config(tiny_workflow, set_key("corpus", "path", ["data/corpus.parquet", "data/rest.jsonl.gz"]))
    edit_config(tiny_workflow, set_key("corpus", "num_shards", 20000))
    start = time.monotonic()
    result = snakemake(tiny_workflow, "-n")
    text = result.stdout + result.stderr
    assert time.monotonic() - start < 60
    warnings = [line.strip() for line in text.splitlines() if "corpus.num_shards" in line]
    assert len(warnings) == 1 and "corpus.num_shards: 20000, but the corpus's 2 files can be cut into only 4 " \
        "non-empty shards" in warnings[0], text
    jobs, _ = parse_plan(text)
    assert rule_counts(jobs)["tokenize_shard"] == 4
    keys = sorted(int(j["wildcards"]["shard"]) for j in jobs if j["rule"] == "tokenize_shard")
    assert keys[-1] < 20000 and len(set(keys)) == 4  # named by the cut each starts at, gaps for those left empty
    assert "more than the corpus can have documents" not in text


def test_more_shards_than_the_files_can_be_cut_into_plan_fewer_non_empty_ones(tmp_path, caplog, monkeypatch):
    """The plan behind it: a Parquet file is cut between row groups only, a gzip file never, a JSONL
    file at any byte; the shards left with nothing are not planned (a warning naming the numbers),
    and the shards read every record once."""
    monkeypatch.setattr(splits, "FOOTER_SHARE", 0)  # tiny row groups: cut at any (the footer's rule: test_splits)
    docs = tiny_corpus(30)
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "a.parquet", row_group_size=10)
    short = write_jsonl(tmp_path / "b.jsonl", [{"text": ""}] * 5)
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    paths = [str(tmp_path / "a.parquet"), str(short), str(gz)]
    with caplog.at_level(logging.WARNING):
        _, plan = write_plan(tmp_path, paths, 36)
    keys = [int(s.key) for s in plan.shards]  # named by the cut each starts at: a shard with nothing leaves a gap
    assert keys == sorted(set(keys)) and keys[-1] < 36
    assert len(plan.shards) < 36 and all(shard.splits and shard.size > 0 for shard in plan.shards)
    assert f"corpus.num_shards: 36, but the corpus's 3 files can be cut into only {len(plan.shards)} " \
        "non-empty shards" in caplog.text
    pieces = [x for shard in plan.shards for x in shard.splits]
    assert [x for x in pieces if x.path == str(gz)] == [splits.Split(str(gz))]  # gzip: never cut
    assert 1 < len([x for x in pieces if x.path == paths[0]]) <= 3  # Parquet: between its 3 row groups
    indices = splits.corpus_file_indices([shard.files for shard in plan.shards])
    read = [int(splits.corpus_doc_ids([r.doc_id], i)[0]) for shard, i in zip(plan.shards, indices)
            for r in corpus.iter_records(shard.splits, require_records=False)]
    assert read == [r.doc_id for r in corpus.iter_records(paths)] and len(read) == 36


# ----------------------------------------------------------------------------------------------
# review: inputs reached through a symlink or a file:// URL, and model sources


def test_path_conflicts_follow_links_out_of_a_directory_or_glob_and_file_urls(tmp_path):
    store, data = tmp_path / "store", tmp_path / "data"
    store.mkdir(), data.mkdir()
    (store / "c.jsonl").write_text('{"text": "a"}\n')
    (data / "c.jsonl").symlink_to(store / "c.jsonl")
    (data / "own.jsonl").write_text('{"text": "b"}\n')
    target = {"output.path": str(store / "c.jsonl")}
    for entry in (str(data), f"{data}/*.jsonl", (store / "c.jsonl").as_uri()):
        [line] = path_conflicts({"corpus.path": [entry]}, target)
        assert line.startswith(f"output.path: '{store / 'c.jsonl'}'") and "corpus.path" in line, line
    assert path_conflicts({"corpus.path": [str(data)]}, {"output.path": str(store / "other.jsonl")}) == []
    assert path_conflicts({"corpus.path": ["s3://bucket/data/*.jsonl"]}, target) == []


@pytest.mark.workflow
def test_scorer_checkpoint_under_results_is_refused(tiny_workflow):
    edit_config(tiny_workflow, set_key("scorer", "checkpoint", "results/scorer"))
    (tiny_workflow / "results" / "scorer").mkdir(parents=True)
    text = refused(tiny_workflow)
    assert "scorer.checkpoint ('results/scorer')" in text
