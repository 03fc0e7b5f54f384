"""The paths a run writes, checked against what it reads and against each other before anything
is written: an output may not be, contain or lie inside an input (it would overwrite it, or be
read back as input by the next run), nor another output (one would replace the other).

Used at DAG build (lqs.config.path_errors, rules/common.smk) and by `lqs score`.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import PurePath
from urllib.parse import unquote, urlparse

from lqs.formats import format_of
from lqs.sources import is_url


def extension_format(path: str) -> str | None:
    """The output format a file name's extension names, or None (no known extension)."""
    return format_of(path)


def _real(path: str) -> PurePath:
    """The absolute path with every symlink resolved (as far as the path exists)."""
    return PurePath(os.path.realpath(path))


def _glob_base(pattern: str) -> tuple[PurePath, list[str]]:
    """A glob's fixed leading directory (resolved) and the components after it."""
    parts = PurePath(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return _real(os.path.join(*parts[:fixed]) if fixed else "."), list(parts[fixed:])


def _reachable(rel: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether the glob components `pattern` could match the path `rel` or something under it
    (`**` matches any number of directories, as glob.glob(recursive=True) does)."""
    if not rel:
        return True
    if not pattern:
        return False
    if pattern[0] == "**":
        return _reachable(rel, pattern[1:]) or _reachable(rel[1:], pattern)
    return fnmatchcase(rel[0], pattern[0]) and _reachable(rel[1:], pattern[1:])


def _relation(out: PurePath, other: PurePath) -> str | None:
    if out == other:
        return "is the same path as"
    if out.is_relative_to(other):
        return "lies inside"
    if other.is_relative_to(out):
        return "contains"
    return None


def _input_relation(out: PurePath, entry: str) -> str | None:
    if not glob.has_magic(entry):
        return _relation(out, _real(entry))
    base, pattern = _glob_base(entry)
    if base.is_relative_to(out):
        return "contains the files of"
    if out.is_relative_to(base) and _reachable(out.relative_to(base).parts, pattern):
        return "could be matched by"
    return None


def local_path(entry: str) -> str | None:
    """The local path an input entry names: itself, the path of a file:// URL, or None (another URL)."""
    if not is_url(entry):
        return entry
    url = urlparse(entry)
    return unquote(url.path) if url.scheme == "file" else None


@functools.lru_cache(maxsize=64)  # once per entry, not once per output checked against it
def _linked_files(entry: str) -> list[str]:
    """The files a directory or glob entry reaches through a symlink: they live elsewhere, and an
    output there would overwrite them although it lies outside the entry."""
    if glob.has_magic(entry):
        found = glob.glob(entry, recursive=True)
    elif os.path.isdir(entry):
        found = [os.path.join(entry, name) for name in os.listdir(entry)]
    else:
        return []
    return [path for path in found if os.path.realpath(path) != os.path.abspath(path)]


def path_conflicts(inputs: Mapping[str, Sequence[str]], outputs: Mapping[str, str]) -> list[str]:
    """One line per conflict, naming both keys and the path: an output (key -> path, a file or a
    directory) that equals, contains or lies inside an input (key -> its entries as given: files,
    directories or globs, file:// URLs; other URLs are skipped) or another output. Paths are
    resolved (symlinks too), and so are the files a directory or glob reaches through a symlink."""
    conflicts = []
    given = [(key, path, _real(path)) for key, path in outputs.items() if path]
    for i, (key, path, out) in enumerate(given):
        for input_key, entries in inputs.items():
            for entry in [entries] if isinstance(entries, str) else entries:
                if (local := local_path(entry)) is None:
                    continue
                relation = _input_relation(out, local) or next(
                    (f"is, holds or lies inside {linked!r} of" for linked in _linked_files(local)
                     if _relation(out, _real(linked))), None)
                if relation:
                    conflicts.append(f"{key}: {path!r} {relation} {input_key} ({entry!r}): the run would overwrite"
                                     " its input or read its own output back as input; choose another path")
        for other_key, other_path, other in given[:i]:
            if relation := _relation(out, other):
                conflicts.append(f"{key}: {path!r} {relation} {other_key} ({other_path!r}): one output would"
                                 " replace the other; choose another path")
    return conflicts


def directory_listing(path: str) -> list[list]:
    """[relative name, size, mtime_ns] of each file under a local directory (symlinks followed to
    what they name), sorted: what the workflow puts in a fetch rule's params for a local model
    directory, because Snakemake looks only at a directory input's own time stamp, not inside it,
    and an edit of a file in it must rerun the fetch and everything after it."""
    listing = []
    for root, _, names in os.walk(path):
        for name in names:
            file = os.path.join(root, name)
            stat = os.stat(file)
            listing.append([os.path.relpath(file, path), stat.st_size, stat.st_mtime_ns])
    return sorted(listing)
