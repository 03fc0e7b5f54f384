"""Atomic output helpers: a killed job never leaves a file that looks finished."""

from __future__ import annotations

import contextlib
import csv
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


def remove_stale_temporaries(path: Path) -> None:
    """Removes the temporaries (.<name>.<random>.tmp files or directories) that a killed writer
    of `path` left beside it. The random part has no dot, so another output's are never matched."""
    own = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]+\.tmp")
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if own.fullmatch(stale.name):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto `path` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
