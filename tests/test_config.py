"""Configuration as Snakemake users expect it (docs/configuration.md): --configfile merges into the demo
defaults, --config edits nested keys, validation errors are one line naming the key, settings that
contradict each other fail at DAG build, and jobs find `lqs` without an activated venv."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, make_workflow, snakemake, tiny_config, tiny_corpus, write_jsonl

from lqs import config as lqs_config

SCHEMA = yaml.safe_load((ROOT / "lqs" / "schema.yaml").read_text())


def with_defaults(config: dict) -> dict:
    from snakemake.utils import validate

    validate(config, str(ROOT / "lqs" / "schema.yaml"))
    return config


def demo_workflow(workdir: Path) -> Path:
    """The workflow with its real config/config.yaml (the demo defaults)."""
    for name in ("Snakefile", "rules", "envs", "config", "report"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    return workdir


def job_stats(output: str) -> dict[str, int]:
    lines = output.splitlines()
    i = lines.index("Job stats:") + 3
    stats = {}
    while lines[i].split() and lines[i].split()[0] != "total":
        rule, count = lines[i].split()
        stats[rule] = int(count)
        i += 1
    return stats


# ----------------------------------------------------------------------------------------------
# merging


def test_a_model_source_in_an_override_replaces_the_defaults_source():
    config = {"models": {"proxy": {"arch": {"model_type": "mistral"}}, "scorer": {"arch": {"model_type": "xglm"}},
                         "tokenizer": {"vocab_size": 2048}}}
    merged = {"models": {"proxy": {"arch": {"model_type": "mistral"}, "repo": "org/proxy", "revision": "v1"},
                         "scorer": {"arch": {"model_type": "xglm"}}, "tokenizer": {"vocab_size": 2048}}}
    lqs_config.replace_model_sources(merged, [{"models": {"proxy": {"repo": "org/proxy", "revision": "v1"},
                                                          "tokenizer": {}}}])
    assert merged["models"]["proxy"] == {"repo": "org/proxy", "revision": "v1"}
    assert merged["models"]["scorer"] == config["models"]["scorer"]  # not given: the default's
    assert merged["models"]["tokenizer"] == {}  # given: replaced, {} means the proxy's own

    # an override without a source kind (only a revision) merges as usual
    merged = {"models": {"proxy": {"repo": "org/proxy", "revision": "v2"}}}
    lqs_config.replace_model_sources(merged, [{"models": {"proxy": {"revision": "v2"}}}])
    assert merged["models"]["proxy"] == {"repo": "org/proxy", "revision": "v2"}


def test_each_override_in_turn_replaces_the_model_sources_before_it():
    """--configfile A B: B's `arch` replaces A's `repo` (Snakemake's merge of the two holds both),
    and a later override without a source (a revision, --config) merges into the one before."""
    paper = {"models": {"proxy": {"repo": "org/proxy"}, "scorer": {"repo": "org/scorer"}, "tokenizer": {}}}
    slice_ = {"models": {"proxy": {"arch": {"model_type": "mistral", "hidden_size": 768}},
                         "tokenizer": {"vocab_size": 32000}}}
    cli = {"models": {"scorer": {"revision": "v3"}}}
    merged = {"models": {"proxy": {"repo": "org/proxy", "arch": {"model_type": "mistral", "hidden_size": 768}},
                         "scorer": {"repo": "org/scorer", "revision": "v3"}, "tokenizer": {"vocab_size": 32000}}}
    lqs_config.replace_model_sources(merged, [paper, slice_, cli])
    assert merged["models"] == {"proxy": {"arch": {"model_type": "mistral", "hidden_size": 768}},
                                "scorer": {"repo": "org/scorer", "revision": "v3"},
                                "tokenizer": {"vocab_size": 32000}}
    lqs_config.replace_model_sources(merged, [paper, {"models": {"tokenizer": {}}}])  # {}: the proxy's own
    assert merged["models"]["tokenizer"] == {}


def test_cli_strings_are_read_as_yaml_where_the_schema_wants_no_string():
    cli = {"annotation": {"interval": "50", "lr": "1e-3"}, "target": {"max_samples": "null"},
           "selection": {"threshold": "0.5"}, "corpus": {"path": "2024", "num_shards": "per_file"},
           "output": {"score_field": "7"}, "device": "cuda:1"}
    config = json.loads(json.dumps(cli))
    lqs_config.coerce_cli_values(config, cli, SCHEMA)
    assert config["annotation"] == {"interval": 50, "lr": 1e-3}
    assert config["target"]["max_samples"] is None
    assert config["selection"]["threshold"] == 0.5
    assert config["corpus"] == {"path": "2024", "num_shards": "per_file"}  # strings where strings go
    assert config["output"]["score_field"] == "7"
    assert config["device"] == "cuda:1"


def test_paper_config_sets_every_key_the_demo_sets():
    """Merged into the demo defaults, config/paper.yaml gives the same configuration as on its
    own: nothing of the demo leaks into a paper run (but the demo-data and arch-pretraining
    settings, which a paper run never uses)."""
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    from snakemake.utils import update_config

    merged = json.loads(json.dumps(demo))
    update_config(merged, paper)
    lqs_config.replace_model_sources(merged, [paper])
    merged, alone = with_defaults(merged), with_defaults(json.loads(json.dumps(paper)))
    for config in (merged, alone):
        config.pop("demo")
        config["models"].pop("pretrain")
    assert merged == alone


# ----------------------------------------------------------------------------------------------
# validation


def test_schema_errors_are_one_line_per_problem_naming_the_key():
    config = {"corpus": {"path": "x.jsonl", "num_shards": 0}, "device": "gpu",
              "models": {"proxy": {"repo": "a", "arch": {"model_type": "mistral"}}, "scorer": {"path": "s"}},
              "annotation": {"interval": "often"}, "scorer": {"bogus": 1}}
    errors = lqs_config.schema_errors(config, SCHEMA)
    assert errors == [
        'annotation.interval: "often" is not valid: expected integer',
        "corpus.num_shards: 0 is not valid: expected an integer >= 1 or per_file",
        'device: "gpu" is not valid: expected torch device for the model stages: auto (cuda when '
        "available), cpu, cuda or cuda:N",
        "models.proxy: give exactly one of repo, path or arch (got arch, repo)",
        "scorer: Additional properties are not allowed ('bogus' was unexpected)",
    ]


def test_a_scorer_checkpoint_needs_no_models():
    """models.proxy and models.scorer are required unless scorer.checkpoint is set."""
    config = {"corpus": {"path": "x.jsonl"}, "scorer": {"checkpoint": "org/lqs-scorer"},
              "annotation": {"steps": 4, "interval": 5}, "proxy": {"size": 4, "num_parts": 8}}
    assert lqs_config.schema_errors(config, SCHEMA) == []
    config = with_defaults(config)
    assert config["models"]["trust_remote_code"] is False  # what the checkpoint's rules read
    assert "proxy" not in config["models"] and "scorer" not in config["models"]
    # the annotation and the proxy set are not run: their settings do not contradict anything
    assert lqs_config.consistency_errors(config) == []

    required = "required unless scorer.checkpoint is set (a pretrained scorer needs no proxy and no scorer base)"
    assert lqs_config.schema_errors({"corpus": {"path": "x.jsonl"}}, SCHEMA) == [f"models: {required}"]
    assert lqs_config.schema_errors({"corpus": {"path": "x.jsonl"}, "scorer": {"checkpoint": None},
                                     "models": {"proxy": {"repo": "org/proxy"}}},
                                    SCHEMA) == [f"models.scorer: {required}"]
    assert lqs_config.schema_errors({"scorer": {"checkpoint": "org/lqs-scorer"}}, SCHEMA) == ["corpus: required"]
    config = valid_config(scorer={"checkpoint": None}, annotation={"steps": 4, "interval": 5})
    assert lqs_config.consistency_errors(config)[0].startswith("annotation.interval (5) is larger")


def test_schema_default_max_chars_is_the_apis():
    """lqs.scorer's API checks texts with corpus.MAX_CHARS: the workflow's default."""
    from lqs.corpus import MAX_CHARS

    assert SCHEMA["properties"]["corpus"]["properties"]["max_chars"]["default"] == MAX_CHARS


def valid_config(**sections) -> dict:
    config = tiny_config("data/corpus.jsonl", "data/target.jsonl")
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return with_defaults(config)


@pytest.mark.parametrize("sections, message", [
    ({"annotation": {"steps": 4, "interval": 5}}, "annotation.interval (5) is larger than annotation.steps (4)"),
    ({"proxy": {"size": 48, "num_parts": 10**9}}, "proxy.num_parts (1000000000) is larger than proxy.size (48)"),
    ({"scorer": {"valid_size": 48}}, "scorer.valid_size (48) must be smaller than proxy.size (48)"),
    ({"selection": {"method": "threshold"}}, "selection.threshold: required when selection.method is threshold"),
    ({"efficacy": {"arms": ["lqs", "classifier"]}},
     "efficacy.arms: lqs, classifier without conventional, the arm every other is compared with"),
], ids=["interval>steps", "num_parts>size", "valid_size>=size", "threshold-missing", "arms-without-conventional"])
def test_contradictory_settings(sections, message):
    errors = lqs_config.consistency_errors(valid_config(**sections))
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_consistent_settings_pass():
    assert lqs_config.consistency_errors(valid_config(scorer={"valid_size": 47}, device="cuda:0")) == []
    assert lqs_config.consistency_errors(valid_config(scorer={"valid_size": 0.99})) == []
    for arms in (["classifier"], ["conventional", "classifier"], ["lqs_shuffled", "conventional"]):
        assert lqs_config.consistency_errors(valid_config(efficacy={"arms": arms})) == []


def test_corpus_file_listed_twice_is_read_once(tmp_path, caplog):
    for name in ("a.jsonl", "b.jsonl"):
        write_jsonl(tmp_path / name, tiny_corpus(2))
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    assert lqs_config.corpus_files([b, str(tmp_path / "*.jsonl"), a]) == [b, a]
    assert "listed more than once" in caplog.text
    with pytest.raises(lqs_config.ConfigError, match="corpus.path: .*nothing.*matches no file"):
        lqs_config.corpus_files([str(tmp_path / "nothing*.jsonl")])


def test_first_record_fields_of_each_format(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf\n{"text": "a", "score": 1}\n')
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write('{"text": "a", "id": 1}\n')
    pq.write_table(pa.table({"text": ["a"], "url": ["u"]}), tmp_path / "p.parquet")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert lqs_config.first_record_fields(str(tmp_path / "bom.jsonl")) == {"text", "score"}
    assert lqs_config.first_record_fields(str(tmp_path / "z.jsonl.gz")) == {"text", "id"}
    assert lqs_config.first_record_fields(str(tmp_path / "p.parquet")) == {"text", "url"}
    assert lqs_config.first_record_fields(str(tmp_path / "bad.jsonl")) == set()


def test_unwritable_outputs(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    assert lqs_config.unwritable(str(tmp_path / "new" / "dir" / "out.jsonl")) is None
    assert "is not a directory" in lqs_config.unwritable(str(tmp_path / "a_file" / "out.jsonl"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user would see it
    assert lqs_config.unwritable(str(tmp_path / "out.jsonl")) == f"directory {tmp_path} is not writable"


# ----------------------------------------------------------------------------------------------
# the workflow: dry runs


@pytest.mark.workflow
def test_configfile_with_only_a_corpus_runs_the_demo_models_on_it(tmp_path):
    workdir = demo_workflow(tmp_path)
    write_jsonl(workdir / "data" / "mine.jsonl", tiny_corpus(30))
    (workdir / "mine.yaml").write_text("corpus: {path: data/mine.jsonl}\n")
    result = snakemake(workdir, "-n", "--configfile", "mine.yaml")
    output = result.stdout + result.stderr
    stats = job_stats(result.stdout)
    assert stats["train_tokenizer"] == 1 and stats["pretrain_proxy"] == 1  # the demo's models
    assert stats["tokenize_shard"] == 2  # the demo's num_shards
    tokenize = [block for block in result.stdout.split("\n\n") if "rule tokenize_shard:" in block]
    assert tokenize and all("input: data/mine.jsonl, results/models/tokenizer" in b for b in tokenize), output


@pytest.mark.workflow
def test_config_edits_of_nested_keys(tmp_path):
    workdir = demo_workflow(tmp_path)
    result = snakemake(workdir, "-n", "--config", 'annotation={"interval": 2, "steps": 4}',
                       'proxy={"num_parts": 3}')
    assert job_stats(result.stdout)["grad_stats"] == 2 * 3


@pytest.mark.parametrize("args, message", [
    (['annotation={"interval": 50}'], "annotation.interval (50) is larger than annotation.steps (20)"),
    (['scorer={"valid_size": 512}'], "scorer.valid_size (512) must be smaller than proxy.size (512)"),
    (["device=gpu"], 'device: "gpu" is not valid'),
    (['proxy={"num_parts": 1000000000}'], "proxy.num_parts (1000000000) is larger than proxy.size (512)"),
    (['output={"score_field": "source"}'], "output.score_field: the corpus records already have a field 'source'"),
    (['output={"path": "a_file/scored.jsonl"}'], "output.path: cannot write 'a_file/scored.jsonl'"),
], ids=["interval", "valid_size", "device", "num_parts", "score_field", "unwritable"])
@pytest.mark.workflow
def test_contradictions_fail_at_dag_build_naming_the_key(tmp_path, args, message):
    workdir = demo_workflow(tmp_path)
    write_jsonl(workdir / "data" / "mine.jsonl", tiny_corpus(6))
    (workdir / "a_file").write_text("")
    result = snakemake(workdir, "-n", "--config", 'corpus={"path": "data/mine.jsonl"}', *args, check=False,
                       timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"invalid configuration:\n  {message}" in output, output
    assert "Job stats" not in output and "$schema" not in output


@pytest.mark.workflow
def test_jobs_find_lqs_without_an_activated_venv(tmp_path):
    corpus = write_jsonl(tmp_path / "data" / "corpus.jsonl", tiny_corpus(20))
    make_workflow(tmp_path, tiny_config(str(corpus.relative_to(tmp_path)), "data/target.jsonl"))
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no venv, no pyenv shims: no `lqs` on PATH
    assert shutil.which("lqs", path=env["PATH"]) is None
    snakemake(tmp_path, "results/models/tokenizer", cores=1, env=env, timeout=300, real_lqs=True)
    assert (tmp_path / "results" / "models" / "tokenizer" / "tokenizer.json").exists()
