"""What the workflow refuses or says at DAG build, before any job (issue 29): a configured path with
a newline or NUL, an output name too long for its temporary file, an output under .snakemake/,
`--config 'corpus={"path": null}'`; efficacy.eval_source that is a corpus file is a warning naming
both keys; and a file edited inside a local model directory reruns its fetch (defect 6)."""

from __future__ import annotations

import errno
import os

import pytest
import yaml
from helpers import ROOT, edit_config, plan, set_key, snakemake, tiny_scorer

from lqs import config as lqs_config
from lqs import io
from lqs.paths import directory_listing

SCHEMA = yaml.safe_load((ROOT / "lqs" / "schema.yaml").read_text())


def _config(**sections) -> dict:
    config = {"corpus": {"path": ["data/a.jsonl"]}, "target": {"source": "data/t.jsonl"},
              "efficacy": {"eval_source": None}, "scorer": {"checkpoint": None}, "models": {},
              "output": {"path": None, "rejects_path": "rejects.jsonl"}, "selection": {"path": None}}
    for section, values in sections.items():
        config[section] = {**config[section], **values}
    return config


def test_newlines_and_nuls_in_configured_paths_are_refused():
    config = _config(corpus={"path": ["data/a.jsonl", "data/b\n.jsonl"]}, output={"path": "out\0.jsonl"},
                     models={"proxy": {"path": "proxy\rdir"}})
    assert lqs_config.path_character_errors(config) == [
        "corpus.path: 'data/b\\n.jsonl' holds a newline, which no path lqs reads or writes may hold; rename it",
        "models.proxy.path: 'proxy\\rdir' holds a carriage return, which no path lqs reads or writes may hold; "
        "rename it",
        "output.path: 'out\\x00.jsonl' holds a NUL, which no path lqs reads or writes may hold; rename it"]
    assert lqs_config.path_character_errors(_config()) == []


def test_the_longest_name_allowed_is_the_longest_whose_temporary_fits(tmp_path):
    longest = "x" * (io.NAME_MAX - io.TEMPORARY_NAME_EXTRA - len(".jsonl")) + ".jsonl"
    assert lqs_config.output_name_errors({"output.path": str(tmp_path / longest)}) == []
    with io.atomic_open(tmp_path / longest) as f:  # its temporary fits
        f.write("ok\n")
    one_more = "y" + longest
    assert len(one_more.encode()) == 242
    assert lqs_config.output_name_errors({"output.rejects_path": f"out/{one_more}"}) == [
        f"output.rejects_path: 'out/{one_more}': its name is 242 bytes; an output's name can have at most 241 "
        "(its temporary file, .<name>.<random>.tmp, must fit the 255-byte limit); shorten it"]
    with pytest.raises(OSError) as raised:  # what the atomic write would meet, after the work
        with io.atomic_open(tmp_path / one_more):
            pass
    assert raised.value.errno == errno.ENAMETOOLONG
    assert lqs_config.output_name_errors({"selection.path": "é" * 121}) != []  # bytes, not characters


def test_an_output_under_dot_snakemake_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".snakemake").mkdir()
    errors = lqs_config.output_name_errors({"output.path": ".snakemake/scored.jsonl", "selection.path": "sel.jsonl"})
    assert errors == ["output.path: '.snakemake/scored.jsonl' lies inside .snakemake/, Snakemake's own directory, "
                      "which it cleans up and rewrites; choose another path"]


def test_null_from_the_command_line_is_null_and_refused():
    config = {"corpus": {"path": "data/corpus.jsonl"}}
    lqs_config.coerce_cli_values(config, {"corpus": {"path": "null"}}, SCHEMA)
    assert config["corpus"]["path"] is None
    errors = lqs_config.schema_errors(config, SCHEMA)
    assert any(e.startswith("corpus.path: null is not valid") for e in errors), errors


def test_an_eval_source_that_is_a_corpus_file_is_a_warning_naming_both_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "data" / "a.jsonl")
    config = _config(efficacy={"eval_source": "link.jsonl"})
    assert lqs_config.eval_source_warnings(config, ["data/a.jsonl"]) == [
        "efficacy.eval_source 'link.jsonl' is also corpus.path's file 'data/a.jsonl': the efficacy arms may train on "
        "the documents they are evaluated on, so its evaluation loss is not held out"]
    assert lqs_config.eval_source_warnings(_config(efficacy={"eval_source": "data/a.jsonl"}), ["data/b.jsonl"]) == []


def test_the_listing_of_a_model_directory_changes_with_any_file_in_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"1234")
    before = directory_listing(str(tmp_path))
    assert [entry[:2] for entry in before] == [["config.json", 2], ["sub/w.safetensors", 4]]
    stat = (tmp_path / "sub" / "w.safetensors").stat()
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"5678")  # same size, new time stamp
    os.utime(tmp_path / "sub", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the directory's own time kept
    assert directory_listing(str(tmp_path)) != before


# ---------------------------------------------------------------- the same, from Snakemake


def _refused(workdir, *args) -> str:
    result = snakemake(workdir, "-n", *args, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "invalid configuration:" in text and "Traceback" not in text, text
    return text


@pytest.mark.workflow
def test_the_workflow_refuses_these_paths_at_dag_build(tiny_workflow):
    edit_config(tiny_workflow, set_key("output", "rejects_path", "rejects\n.jsonl"))
    assert "output.rejects_path: 'rejects\\n.jsonl' holds a newline" in _refused(tiny_workflow)
    edit_config(tiny_workflow, set_key("output", "rejects_path", "r" * 249 + ".jsonl"))
    assert "output.rejects_path: 'rrr" in _refused(tiny_workflow)
    edit_config(tiny_workflow, set_key("output", "rejects_path", ".snakemake/rejects.jsonl"))
    assert "output.rejects_path: '.snakemake/rejects.jsonl' lies inside .snakemake/" in _refused(tiny_workflow)
    edit_config(tiny_workflow, set_key("output", "rejects_path", "rejects.jsonl"))
    assert "corpus.path: null is not valid" in _refused(tiny_workflow, "--config", 'corpus={"path": null}')
    result = snakemake(tiny_workflow, "-n", "--config", 'efficacy={"eval_source": "data/corpus.jsonl"}')
    assert "efficacy.eval_source 'data/corpus.jsonl' is also corpus.path's file 'data/corpus.jsonl'" in (
        result.stdout + result.stderr)


@pytest.mark.workflow
def test_editing_a_file_in_a_local_checkpoint_reruns_its_fetch(tiny_workflow):
    checkpoint = tiny_scorer(tiny_workflow / "mine")
    edit_config(tiny_workflow, set_key("scorer", "checkpoint", "mine/scorer"))
    snakemake(tiny_workflow, "results/scorer")
    assert plan(tiny_workflow, "results/scorer") == []
    tokenizer_config = checkpoint / "tokenizer_config.json"
    stat = checkpoint.stat()
    tokenizer_config.write_text(tokenizer_config.read_text() + " ")
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what Snakemake looked at: unchanged
    jobs = plan(tiny_workflow, "results/scorer")
    assert [job["rule"] for job in jobs] == ["fetch_scorer"]
    assert jobs[0]["reason"].startswith("Params have changed since last execution") and "tokenizer_config" in (
        jobs[0]["reason"])
