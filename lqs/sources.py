"""Where corpus files come from (`corpus.path`), resolved at DAG build, and how stages open them.

Each entry of `corpus.path` is one of

- a local file, a glob (`**` descends into subdirectories) or a directory: its JSONL and
  Parquet files (CORPUS_SUFFIXES) at its top level, sorted by name, hidden ones skipped;
- `hf://datasets/<org>/<name>[@<revision>]/<path, glob or directory>`: files of a Hugging Face
  data set repo, listed through `huggingface_hub.HfFileSystem` after an access check. The
  revision (default: main) is pinned to the commit it names at DAG build, and the pinned URLs
  (`...@<commit>/...`) are what every job reads, so a run reads one commit even if the repo moves;
- any other fsspec URL (`s3://`, `gs://`, `file://`, `memory://`, ...), listed with fsspec.

Local files are Snakemake inputs (an edit reruns their jobs). URLs cannot be: the rules pass them
as params, with a version for those no commit pins (a hash of the listing's metadata: size and
ETag or mtime), so a changed commit or object reruns their jobs when the run is planned again.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from lqs.formats import CORPUS_SUFFIXES

log = logging.getLogger(__name__)

# a protocol ("s3://") or the first link of a chained URL ("simplecache::s3://")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*(://|::)")
# hf://datasets/<org>/<name>[@<revision>][/<path>]; a revision with a "/" is written %2F-quoted,
# except the Hub's own refs/pr/<n> and refs/convert/<name>
_HF_DATASET = re.compile(r"hf://datasets/(?P<repo>[^/@]+/[^/@]+)"
                         r"(?:@(?P<revision>refs/(?:pr/\d+|convert/[\w.\-]+)|[^/]+))?(?:/(?P<path>.*))?")
HF_FORM = "hf://datasets/<org>/<name>[@<revision>]/<path or glob>"
PINS_ENV = "LQS_CORPUS_PINS"  # the main Snakemake process's pins, for jobs that parse the workflow again


class SourceError(ValueError):
    """A corpus.path entry that cannot be read; the message names it."""


@dataclass(frozen=True)
class CorpusFile:
    path: str  # a local path, or a URL (hf:// ones pinned to a commit)
    version: str | None = None  # what identifies a URL's content when no commit does; else None
    size: int | None = None  # a URL's bytes, as listed (a local file's are read when planning)

    @property
    def local(self) -> bool:
        return not is_url(self.path)


@dataclass
class Corpus:
    files: list[CorpusFile] = field(default_factory=list)
    # hub data sets: "<org>/<name>@<revision as given>" -> the commit it was pinned to
    pins: dict[str, str] = field(default_factory=dict)


def is_url(path: str) -> bool:
    return _URL.match(str(path)) is not None


def source_name(path: str | os.PathLike) -> str:
    """How a corpus file is named in records and messages: a URL as given, a local path normalised."""
    return str(path) if is_url(str(path)) else str(Path(path))


def is_data_file(name: str) -> bool:
    return name.endswith(CORPUS_SUFFIXES)


def is_hidden(name: str) -> bool:
    """Dot files: `.x.tmp` temporaries (lqs.io), `.gitattributes`, editors' and sync tools' files."""
    return name.startswith(".")


# ----------------------------------------------------------------------------------------------
# resolving corpus.path at DAG build


def resolve(patterns: str | Sequence[str], pins: Mapping[str, str] | None = None) -> Corpus:
    """The corpus files of `patterns` in the given order, each glob's or directory's files sorted.
    A file reached twice (a path and a glob, two overlapping globs) is read once, at its first
    place: scoring it twice would duplicate its documents in every output. `pins` (from the main
    process) are reused instead of asking the Hub again."""
    corpus, seen = Corpus(), {}
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if pattern.startswith("hf://"):
            files = _hub_files(pattern, corpus.pins, pins or {})
        elif is_url(pattern):
            files = _fsspec_files(pattern)
        else:
            files = [CorpusFile(p) for p in _local_files(pattern)]
        for file in files:
            key = _identity(file.path)
            if key in seen:
                log.warning("corpus.path: %s is listed more than once (also as %s); it is read once",
                            file.path, seen[key])
                continue
            seen[key] = file.path
            corpus.files.append(file)
    return corpus


def _identity(path: str) -> str:
    """One name per file: a local path's real path; a URL in its filesystem's canonical form
    (memory://a and memory:///a are one file)."""
    if not is_url(path):
        return os.path.realpath(path)
    if path.startswith("hf://"):
        return path  # listed names: hf://datasets/<repo>@<commit>/<path>
    import fsspec

    fs, fs_path = fsspec.core.url_to_fs(path)
    return fs.unstrip_protocol(fs_path)


def _no_data_files(where: str, subdirectories: list[str]) -> SourceError:
    message = (f"corpus.path: directory {where!r} holds no JSONL ({', '.join(CORPUS_SUFFIXES[:2])}) or Parquet "
               f"({', '.join(CORPUS_SUFFIXES[2:])}) files")
    if subdirectories:
        shown = ", ".join(sorted(subdirectories)[:3]) + (", ..." if len(subdirectories) > 3 else "")
        message += (f" at its top level (subdirectories are not read; it has {shown}): give a glob such as "
                    f"'{where.rstrip('/')}/*/*.parquet'")
    return SourceError(message)


def _local_files(pattern: str) -> list[str]:
    if glob.has_magic(pattern):
        matched = [p for p in sorted(glob.glob(pattern, recursive=True)) if not os.path.isdir(p)]
    elif os.path.isdir(pattern):
        with os.scandir(pattern) as entries:
            entries = [e for e in entries if not is_hidden(e.name)]
        matched = sorted(os.path.join(pattern, e.name) for e in entries if e.is_file() and is_data_file(e.name))
        if not matched:
            raise _no_data_files(pattern, [e.name for e in entries if e.is_dir()])
        return matched
    else:
        return [pattern]  # a missing file is Snakemake's missing input, named at DAG build
    if not matched:
        raise SourceError(f"corpus.path: {pattern!r} matches no file")
    return matched


def _listing(fs, path: str, pattern: str) -> dict[str, dict[str, Any]]:
    """name -> info of the files `path` (a glob, a directory or a file, in `fs`) names; empty if none."""
    if glob.has_magic(path):
        root = re.split(r"[*?\[]", path, maxsplit=1)[0].rsplit("/", 1)[0]
        matched = fs.glob(path, detail=True)
        # as a local glob does: hidden files and directories only where the pattern names them
        return {name: info for name, info in matched.items() if info["type"] == "file" and (
            "/." in path[len(root):] or not any(map(is_hidden, name[len(root):].split("/"))))}
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return {}
    if info["type"] != "directory":
        return {path: info}
    entries = [e for e in fs.ls(path, detail=True) if not is_hidden(e["name"].rstrip("/").rsplit("/", 1)[-1])]
    files = {e["name"]: e for e in entries if e["type"] == "file" and is_data_file(e["name"])}
    if not files:
        raise _no_data_files(pattern, [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                                       if e["type"] == "directory"])
    return files


def _version(info: Mapping[str, Any]) -> str:
    """A short hash of a file's listing metadata (size, ETag or mtime...: what the filesystem says)."""
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fsspec_files(pattern: str) -> list[CorpusFile]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(pattern)
    except ImportError as e:  # fsspec names the package: "Install s3fs to access S3"
        raise SourceError(f"corpus.path: cannot read {pattern!r}: {e} (pip install it into the environment "
                          "that runs the workflow and its jobs)") from None
    except ValueError as e:  # "Protocol not known: ..."
        raise SourceError(f"corpus.path: cannot read {pattern!r}: {e}") from None
    try:
        files = _listing(fs, path, pattern)
    except SourceError:
        raise
    except Exception as e:  # credentials, permissions, network: whatever the filesystem raises
        raise SourceError(f"corpus.path: cannot list {pattern!r}: {type(e).__name__}: {e}") from None
    if not files:
        raise SourceError(f"corpus.path: {pattern!r} matches no file")
    if list(files) == [path]:  # a single file: named as given
        return [CorpusFile(pattern, _version(files[path]), files[path].get("size"))]
    return [CorpusFile(fs.unstrip_protocol(name), _version(info), info.get("size"))
            for name, info in sorted(files.items())]


def parse_hub_url(url: str) -> tuple[str, str | None, str]:
    """(repo, revision or None, path in the repo) of an hf://datasets/ URL."""
    match = _HF_DATASET.fullmatch(url)
    if match is None:
        raise SourceError(f"corpus.path: {url!r} is not a Hugging Face data set path: expected {HF_FORM}")
    revision = match["revision"]
    return match["repo"], unquote(revision) if revision else None, match["path"] or ""


def _hub_files(url: str, pins: dict[str, str], inherited: Mapping[str, str]) -> list[CorpusFile]:
    """The files of an hf:// data set path at the commit its revision names now (or the inherited
    pin): one access check and one revision lookup per repo and revision, then a listing."""
    from huggingface_hub import HfApi, HfFileSystem, constants

    from lqs.hub import HubAccessError, check_access, hub_errors, repo_page

    repo, revision, path = parse_hub_url(url)
    if constants.HF_HUB_OFFLINE:
        raise SourceError(f"corpus.path: {url!r} is read from the Hugging Face Hub, but HF_HUB_OFFLINE is set: "
                          f"unset it, or download the files once (`hf download {repo} --repo-type dataset "
                          f"--local-dir <dir>`) and give their local path")
    key = f"{repo}@{revision or ''}"
    try:
        if key not in pins:
            if key in inherited:
                pins[key] = inherited[key]
            else:
                check_access(repo, "dataset")
                with hub_errors(repo, "dataset", revision):
                    pins[key] = HfApi().dataset_info(repo, revision=revision).sha
                log.info("corpus.path: %s is pinned to commit %s of %s", url, pins[key], repo)
        commit = pins[key]
        fs = HfFileSystem(skip_instance_cache=True)  # a fresh listing, never an earlier one's
        root = f"datasets/{repo}@{commit}"
        with hub_errors(repo, "dataset", commit):
            files = _listing(fs, f"{root}/{path}".rstrip("/"), url)
    except HubAccessError as e:
        raise SourceError(f"corpus.path: {e}") from None
    except SourceError:
        raise
    except Exception as e:  # the Hub could not be reached, or answered something else
        raise SourceError(f"corpus.path: cannot list {url!r} on the Hugging Face Hub: {type(e).__name__}: {e}") \
            from None
    if not files:
        raise SourceError(f"corpus.path: {url!r} matches no file in {repo} at commit {commit} (revision "
                          f"{revision or constants.DEFAULT_REVISION}); see its files at "
                          f"{repo_page(repo, 'dataset')}/tree/{commit}")
    return [CorpusFile(f"hf://{name}", size=files[name].get("size")) for name in sorted(files)]


# ----------------------------------------------------------------------------------------------
# opening


def file_size(path: str) -> int:
    """A corpus file's bytes (local path or URL)."""
    if not is_url(path):
        return os.path.getsize(path)
    import fsspec

    fs, fs_path = fsspec.core.url_to_fs(path)
    return int(fs.info(fs_path)["size"])


def open_binary(path: str, *, seekable: bool = False) -> IO[bytes]:
    """A corpus file opened for reading bytes: a local path, or a URL through fsspec, buffered so
    that lines are read in C (fsspec's own readline copies a whole block per line). `seekable`:
    Parquet's footer first; otherwise a Hub file is streamed in one request. A missing file is a
    FileNotFoundError naming the path as given."""
    if path == "-":  # standard input (lqs score -), through its own descriptor: closing it keeps stdin
        return os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    if not is_url(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"corpus file not found: {path}")
        return open(path, "rb")
    import fsspec

    try:
        fs, fs_path = fsspec.core.url_to_fs(path)
        if "hf" in ([fs.protocol] if isinstance(fs.protocol, str) else fs.protocol) and not seekable:
            fs.info(fs_path)  # a streamed file would only fail at its first read
            # streamed (block size 0): one GET; with a block size, one ranged GET per block
            raw = fs.open(fs_path, "rb", block_size=0)
        else:
            raw = fs.open(fs_path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus file not found: {path}") from None
    return raw if seekable else io.BufferedReader(raw, buffer_size=1 << 20)
