"""The stages' layout (lqs.stage): one module per Snakemake rule, named as the rule, whose command
is the rule's name with dashes and whose declaration the CLI is built from."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from helpers import ROOT, lqs_main

from lqs.cli import read_settings
from lqs.corpus import CorpusReading
from lqs.stage import PIPELINE, Stage, command, load

RULE = re.compile(r"^(?:rule|checkpoint) (\w+):", re.MULTILINE)
SHELL_COMMAND = re.compile(r"^rule (\w+):.*?^    shell:\n        \"lqs ([\w-]+)", re.MULTILINE | re.DOTALL)


def workflow_rules() -> dict[str, str]:
    """rule -> the text of its .smk file, for every rule but the Snakefile's `all`."""
    rules = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        text = path.read_text()
        rules |= dict.fromkeys(RULE.findall(text), text)
    return rules


def test_every_rule_is_one_stage_module_named_as_the_rule():
    rules = workflow_rules()
    modules = {p.stem for p in (ROOT / "lqs" / "stages").glob("*.py")} - {"__init__"}
    assert set(rules) == modules == set(PIPELINE)
    assert len(PIPELINE) == len(set(PIPELINE))


def test_every_rule_runs_its_own_command():
    called = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule )", path.read_text()):
            match = re.match(r"rule (\w+):", block)
            if match:
                called[match.group(1)] = re.findall(r'^\s+["\']lqs ([\w-]+)', block, re.MULTILINE)
    assert called == {rule: [command(rule)] for rule in PIPELINE}


@pytest.mark.parametrize("rule", PIPELINE)
def test_the_declaration_names_its_entry_function_and_settings(rule):
    stage = load(rule)
    assert isinstance(stage, Stage) and stage.help
    assert stage.run.__name__ == rule and stage.run.__module__ == f"lqs.stages.{rule}"
    if stage.settings is not None:
        assert dataclasses.is_dataclass(stage.settings)
        # the defaults live in lqs/schema.yaml, whose values the rule's params carry; None marks a
        # setting the rule passes only in some configurations
        assert all(f.default in (dataclasses.MISSING, None) and f.default_factory is dataclasses.MISSING
                   for f in dataclasses.fields(stage.settings)), rule
    first = next(iter(stage.counters), None)
    assert first is None or isinstance(first, str)


def test_lqs_help_lists_every_rule_and_lqs_score(caplog, capsys):
    code, _ = lqs_main(caplog, "--help")
    listed = re.search(r"\{([\w,-]+)\}", capsys.readouterr().out).group(1).split(",")
    assert code == 0 and listed == [command(rule) for rule in PIPELINE] + ["score"]


PROBE = """import json, sys
from lqs import cli
for argv in json.loads(sys.argv[1]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
print(json.dumps([sorted(m for m in sys.modules if m.startswith("lqs.stages.")), "torch" in sys.modules]))"""


def test_a_command_imports_only_what_it_runs():
    """`lqs <rule>` imports that stage's module only, and `lqs score` none; the stages that join
    records and scores on a CPU (a grouped SLURM job runs several in turn) start without torch."""
    cpu_stages = ["gather_scores", "output_schema", "select_order", "write_part"]
    for argvs, imported in (([[command(rule), "--help"] for rule in cpu_stages], cpu_stages),
                            ([["score", "--help"]], [])):
        out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True, text=True,
                             check=True).stdout
        assert json.loads(out.splitlines()[-1]) == [[f"lqs.stages.{rule}" for rule in imported], False]


def test_settings_must_be_exactly_the_stages_fields(caplog):
    code, log = lqs_main(caplog, "sample-proxy", "shard.parquet", "--tokenizer-dir", "t", "--out", "o.parquet",
                         "--settings", '{"size": 4, "seeds": 1}')
    assert code == 1
    assert "sample-proxy failed: --settings: unknown key 'seeds'; missing key 'seed'" in log


def test_a_corpus_reader_takes_the_corpus_reading_as_one_nested_object():
    """The splits' digest, text field and length limit are one group (lqs.corpus.CorpusReading) in
    every stage that reads the corpus, read from the nested `corpus` object of --settings."""
    readers = {rule for rule in PIPELINE if load(rule).settings is not None
               and "corpus" in {f.name for f in dataclasses.fields(load(rule).settings)}}
    assert readers == {"train_tokenizer", "output_schema", "tokenize_shard", "tokenize_scorer_shard", "write_part",
                       "gather_scores", "efficacy_classifier"}
    assert not any({"splits_sha256", "max_chars"} & {f.name for f in dataclasses.fields(load(rule).settings)}
                   for rule in PIPELINE if load(rule).settings is not None)
    settings = load("train_tokenizer").settings
    given = {"corpus": {"splits_sha256": "ab", "text_field": "content", "max_chars": 9}, "vocab_size": 300,
             "on_bad_record": "skip"}
    read = read_settings(settings, given)
    assert read.corpus == CorpusReading("ab", "content", 9) and read.vocab_size == 300


@pytest.mark.parametrize(("corpus", "error"), [
    ({"splits_sha256": "ab", "text_field": "text"}, "--settings: missing key 'corpus.max_chars'"),
    ({"splits_sha256": "ab", "text_field": "text", "max_chars": 9, "path": "x"},
     "--settings: unknown key 'corpus.path'"),
    ("text", "--settings: 'corpus' must be a JSON object, not str"),
    (None, "--settings: 'corpus' must be a JSON object, not NoneType"),
])
def test_a_bad_nested_settings_object_is_one_line_naming_its_key(caplog, corpus, error):
    settings = json.dumps({"corpus": corpus, "vocab_size": 300, "on_bad_record": "error"})
    code, log = lqs_main(caplog, "train-tokenizer", "--plan", "p.json", "--out-dir", "t", "--settings", settings)
    assert code == 1 and f"train-tokenizer failed: {error}" in log
