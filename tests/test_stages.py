"""The stages' layout (lqs.stage): one module per Snakemake rule, named as the rule, whose command
is the rule's name with dashes and whose declaration the CLI is built from."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
from helpers import ROOT, lqs_main

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


def test_lqs_help_lists_every_rule_and_lqs_score():
    out = subprocess.run([sys.executable, "-m", "lqs", "--help"], capture_output=True, text=True, check=True).stdout
    listed = re.search(r"\{([\w,-]+)\}", out).group(1).split(",")
    assert listed == [command(rule) for rule in PIPELINE] + ["score"]


def test_settings_must_be_exactly_the_stages_fields(caplog):
    code, log = lqs_main(caplog, "sample-proxy", "shard.parquet", "--tokenizer-dir", "t", "--out", "o.parquet",
                         "--settings", '{"size": 4, "seeds": 1}')
    assert code == 1
    assert "sample-proxy failed: --settings: unknown key 'seeds'; missing key 'seed'" in log
