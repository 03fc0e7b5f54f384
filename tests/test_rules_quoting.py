"""No configured string reaches a shell unquoted: every placeholder of every rule's `shell:`
command is formatted with `:q` (Snakemake's shlex quoting, element by element for a list), the
`{log}` redirect included. A path such as `rej$(touch PWNED).jsonl` or one with a space is then
one word whatever it holds (docs/reliability.md#no-configured-string-reaches-a-shell)."""

from __future__ import annotations

import ast
import re
import string

import pytest
from helpers import ROOT, copy_workflow, edit_config, read_jsonl, set_key, snakemake

RULE_FILES = sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
SHELL = re.compile(r"^(?P<indent>\s*)shell:\s*(?P<rest>.*)$")


def shell_commands(path) -> list[tuple[int, str]]:
    """(line, command) of each `shell:` directive of a Snakefile: the string literals that follow
    it (on its line or indented below it), concatenated as Python reads them."""
    lines = path.read_text().splitlines()
    commands = []
    for i, line in enumerate(lines):
        match = SHELL.match(line)
        if not match:
            continue
        body = [match["rest"]] if match["rest"].strip() else []
        for following in lines[i + 1:]:
            indent = len(following) - len(following.lstrip())
            if following.strip() and indent <= len(match["indent"]):
                break
            body.append(following.strip())
        source = "\n".join(part for part in body if part and not part.startswith("#"))
        commands.append((i + 1, ast.literal_eval(f"({source})")))
    return commands


def unquoted(command: str) -> list[str]:
    """The placeholders of a shell command formatted without `:q`."""
    return [f"{{{field}{':' + spec if spec else ''}}}"
            for _, field, spec, _ in string.Formatter().parse(command)
            if field is not None and "q" not in (spec or "")]


def test_the_parser_finds_every_rules_command():
    commands = {path.name: shell_commands(path) for path in RULE_FILES}
    found = sum(len(c) for c in commands.values())
    directives = sum(len(re.findall(r"^\s*shell:", p.read_text(), re.M)) for p in RULE_FILES)
    assert found == directives > 20
    assert all(command.startswith("lqs ") for c in commands.values() for _, command in c)
    assert unquoted("lqs x {input:q} --out {output} > {log:q} 2>&1 {{literal}}") == ["{output}"]


def test_every_shell_placeholder_is_quoted():
    offending = [f"{path.relative_to(ROOT)}:{line}: {placeholder}"
                 for path in RULE_FILES for line, command in shell_commands(path)
                 for placeholder in unquoted(command)]
    assert not offending, ("shell placeholders without :q (a configured path would be read by the shell; write "
                           "{x:q}, and make a flag a list param such as ['--flag', path] or []):\n  "
                           + "\n  ".join(offending))


# Every character the shell gives a meaning to, a leading dash and non-ASCII, in the output paths a
# run can be configured with; `$(...)` and backticks would create these files if a shell ran them.
HOSTILE_DIR = "-o it's \"x\" $(touch PWNED) `touch PWNED2` ; & é"


@pytest.mark.workflow
def test_output_paths_with_shell_characters_run_end_to_end(completed_workflow, tmp_path):
    workdir = copy_workflow(completed_workflow, tmp_path)
    corpus = (workdir / "data" / "corpus.jsonl").read_bytes()
    outputs = {"scored": f"{HOSTILE_DIR}/scored $x.jsonl", "rejects": f"{HOSTILE_DIR}/rej$(touch PWNED3).jsonl",
               "selected": f"{HOSTILE_DIR}/selected `x`.jsonl"}
    edit_config(workdir, set_key("output", "path", outputs["scored"]))
    edit_config(workdir, set_key("output", "rejects_path", outputs["rejects"]))
    edit_config(workdir, set_key("selection", "path", outputs["selected"]))
    snakemake(workdir, "all", "plots")
    scored = read_jsonl(workdir / outputs["scored"])
    assert len(scored) == 120 and scored == read_jsonl(completed_workflow / "scored.jsonl")
    assert (workdir / outputs["rejects"]).read_text() == ""
    assert read_jsonl(workdir / outputs["selected"]) == read_jsonl(completed_workflow / "selected.jsonl")
    assert (workdir / "results" / "plots" / "scores.png").stat().st_size > 0
    assert not [p for p in workdir.rglob("PWNED*")] and (workdir / "data" / "corpus.jsonl").read_bytes() == corpus
