"""Atomic output helpers: a killed job never leaves a file that looks finished."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import glob
import json
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

_UMASK = os.umask(0)
os.umask(_UMASK)


# A temporary's name: "." + the output's name + "." + mkstemp's 8 random characters + ".tmp".
TEMPORARY_NAME_EXTRA = len("..") + 8 + len(".tmp")
NAME_MAX = 255  # bytes in one path component (Linux, macOS)


def temporary_name_error(path: str | os.PathLike) -> str | None:
    """Why an output's name is too long to have a temporary beside it (None if it is not): the
    error an atomic write would otherwise meet only when it starts writing, after the work."""
    size = len(os.fsencode(Path(path).name))
    if size + TEMPORARY_NAME_EXTRA <= NAME_MAX:
        return None
    return (f"its name is {size} bytes; an output's name can have at most {NAME_MAX - TEMPORARY_NAME_EXTRA} "
            f"(its temporary file, .<name>.<random>.tmp, must fit the {NAME_MAX}-byte limit); shorten it")


def _lock(fd: int) -> bool:
    """Takes the exclusive lock on an open temporary without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Removes the temporaries (.<name>.<random>.tmp files or directories) that a killed writer
    of `path` left beside it. The random part has no dot, so another output's are never matched.
    A live writer holds a lock on its temporary (_locked_temporary): a temporary whose lock this
    cannot take is being written, and is left alone; a killed writer's lock went with it."""
    own = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]+\.tmp")
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not own.fullmatch(stale.name) or stale.is_symlink():
            continue
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone already, or not ours to open
            continue
        try:
            if _lock(fd):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked_temporary(path: Path, directory: bool) -> Iterator[Path]:
    """A new temporary file or directory beside `path`, locked (flock) for as long as the block
    runs, so that another writer's clean-up (remove_stale_temporaries) leaves it alone; removed
    afterwards unless the block renamed it away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    while True:
        if directory:
            name = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            fd = os.open(name, os.O_RDONLY)
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # another writer's clean-up may have taken it between its creation and this lock: then
        # it is gone (or another file has the name) and a new one is made
        if _lock(fd) and os.path.lexists(name) and os.stat(name, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp makes 0600 and mkdtemp 0700; outputs get the usual permissions
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
        yield tmp
    finally:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        os.close(fd)  # the lock goes with it, after the temporary is renamed or removed


def _rename_no_replace(tmp: Path, path: Path) -> None:
    """Moves the finished file `tmp` onto `path` only if nothing is there (a hard link, then the
    temporary's name removed): another run that wrote `path` meanwhile keeps its output."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} was written by another run while this one ran: not replaced (this run's "
                              "output is discarded); run again with --overwrite to replace it") from None
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` only if the block succeeds.
    replace=False: an existing `path` (another writer's, finished meanwhile) is kept, and this
    fails with FileExistsError."""
    path = Path(path)
    with _locked_temporary(path, directory=False) as tmp:
        yield tmp
        if replace:
            os.replace(tmp, path)
        else:
            _rename_no_replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", replace: bool = True) -> Iterator[IO[Any]]:
    with atomic_path(path, replace) as tmp:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    with _locked_temporary(path, directory=True) as tmp:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


class TokenRate:
    """A tqdm postfix with the tokens/s next to the bar's own items/s."""

    def __init__(self, bar):
        self.bar, self.tokens, self.start = bar, 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)


def benchmark_seconds(benchmarks_dir: str | os.PathLike | None) -> dict[str, float]:
    """Wall seconds per rule, summed over its jobs, from Snakemake's benchmark files
    <benchmarks_dir>/<rule>/<job>.tsv: the whole job, process start and imports included."""
    seconds: dict[str, float] = defaultdict(float)
    for path in sorted(Path(benchmarks_dir).glob("*/*.tsv")) if benchmarks_dir else []:
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                seconds[path.parent.name] += float(row["s"])
    return dict(seconds)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_table(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@contextlib.contextmanager
def parquet_writer(path: str | os.PathLike, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """Streams row groups into a Parquet file that appears only once closed successfully."""
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            yield writer


def _unreadable(path: str | os.PathLike, error: Exception) -> ValueError:
    return ValueError(f"{path} is not a readable Parquet file ({error}): an intermediate output that was cut "
                      "short or damaged; delete it and rerun Snakemake, which remakes it with the rule that "
                      "writes it")


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """pq.read_table for the workflow's own Parquet files; a damaged one fails naming the file."""
    try:
        return pq.read_table(path, columns=columns)
    except pa.ArrowException as e:  # FileNotFoundError is not one: it names the file itself
        raise _unreadable(path, e) from None


def parquet_file(path: str | os.PathLike) -> pq.ParquetFile:
    """pq.ParquetFile (its footer read) for the workflow's own files; a damaged one fails naming it."""
    try:
        return pq.ParquetFile(path)
    except pa.ArrowException as e:
        raise _unreadable(path, e) from None


def parquet_batches(path: str | os.PathLike, columns: list[str] | None = None,
                    batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """The record batches of one of the workflow's own Parquet files, streamed; a damaged file
    (found on opening or on reading) fails naming the file."""
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)
    except pa.ArrowException as e:
        raise _unreadable(path, e) from None
