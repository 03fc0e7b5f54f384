"""The design pages under docs/: the repository cites them and no design outside itself, and every
link between them, and every `docs/<page>.md#<anchor>` cited in any file, resolves."""

from __future__ import annotations

import re
import subprocess

import pytest
from helpers import ROOT

DOCS = ROOT / "docs"
PAGES = {"README.md", "stages.md", "maths.md", "configuration.md", "reliability.md"}
# A design kept outside the repository, or a path into the folder that held it. Character classes
# keep this file from matching its own patterns.
OUTSIDE = re.compile(r"DESIGN[.]md|DESIGN\s*§|[.][.]/shared\b|[/]work[/]shared|shared[ ]folder")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
CITATION = re.compile(r"docs/([\w-]+[.]md)(?:#([\w-]+))?")


def repository_files() -> list[str]:
    """The files git tracks or would track (new ones too; not those it ignores)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's files cannot be listed")
    return [name for name in listed.splitlines() if (ROOT / name).is_file()]


def text(name: str) -> str | None:
    data = (ROOT / name).read_bytes()
    return None if b"\0" in data else data.decode("utf-8", errors="replace")


def anchors(page) -> set[str]:
    """GitHub's heading anchors of a Markdown page: lower case, punctuation dropped, spaces as
    hyphens (headings inside fenced code are not headings)."""
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6}\s+(.*?)\s*$", line)):
            found.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return found


def test_no_file_cites_a_design_outside_the_repository():
    offending = [f"{name}:{number}: {line.strip()}" for name in repository_files() if (content := text(name))
                 for number, line in enumerate(content.splitlines(), 1) if OUTSIDE.search(line)]
    assert not offending, "cite docs/ instead:\n" + "\n".join(offending)


def test_docs_links_resolve():
    assert {p.name for p in DOCS.glob("*.md")} >= PAGES
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.name}: {target}: no such heading")
    assert not broken, "\n".join(broken)


def test_docs_index_lists_every_page():
    listed = set(LINK.findall((DOCS / "README.md").read_text(encoding="utf-8")))
    assert {p.name for p in DOCS.glob("*.md")} - {"README.md"} <= listed


def test_citations_of_docs_resolve():
    """`docs/maths.md#labels-lqs-and-pds` in a docstring, comment or the README names a page and a
    heading that exist."""
    broken = []
    for name in repository_files():
        for number, line in enumerate((text(name) or "").splitlines(), 1):
            for page, anchor in CITATION.findall(line):
                if not (DOCS / page).is_file():
                    broken.append(f"{name}:{number}: docs/{page}: no such page")
                elif anchor and anchor not in anchors(DOCS / page):
                    broken.append(f"{name}:{number}: docs/{page}#{anchor}: no such heading")
    assert not broken, "\n".join(broken)
