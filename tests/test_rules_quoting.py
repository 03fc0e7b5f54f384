"""No configured string reaches a shell unquoted: every placeholder of every rule's `shell:`
command is formatted with `:q` (Snakemake's shlex quoting, element by element for a list), the
`{log}` redirect included. A path such as `rej$(touch PWNED).jsonl` or one with a space is then
one word whatever it holds (docs/reliability.md#no-configured-string-reaches-a-shell)."""

from __future__ import annotations

import ast
import re
import string

from helpers import ROOT

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
