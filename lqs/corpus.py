"""Reading corpus records: JSONL (plain or gzip) and Parquet, validated, with file and line.

Every input record gets a `doc_id`: its index in input order across all files. A record that
cannot be used carries the reason; callers either raise (`on_bad_record: error`) or write it to
a rejects file (`skip`). Nothing is dropped silently.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


class BadRecordError(ValueError):
    """A corpus record that cannot be used, named by file and line."""


@dataclass(frozen=True)
class Record:
    doc_id: int
    path: str
    line: int  # 1-based line (JSONL) or row (Parquet)
    fields: dict[str, Any] | None  # the parsed record, None when it could not be parsed
    raw: str | None  # the line as read (JSONL), kept byte-for-byte for the output
    text: str | None
    error: str | None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def reject_entry(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "file": self.path, "line": self.line,
                "reason": self.error, "record": self.raw if self.raw is not None else self.fields}


def is_parquet(path: str | Path) -> bool:
    return str(path).endswith((".parquet", ".pq"))


def _check_text(fields: Any, text_field: str, max_chars: int) -> tuple[str | None, str | None]:
    if not isinstance(fields, dict):
        return None, f"not a JSON object (got {type(fields).__name__})"
    if text_field not in fields:
        return None, f"missing text field {text_field!r}"
    text = fields[text_field]
    if not isinstance(text, str):
        return None, f"text field {text_field!r} is not a string (got {type(text).__name__})"
    if not text.strip():
        return None, "empty text"
    if len(text) > max_chars:
        return None, f"text longer than corpus.max_chars ({len(text)} > {max_chars} characters)"
    return text, None


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number, raw bytes, error) for each non-blank line; a truncated gzip ends in an error."""
    opener = gzip.open if path.suffix == ".gz" else open
    lineno, records = 0, 0
    with opener(path, "rb") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    records += 1
                    yield lineno, line, None
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            yield lineno + 1, None, f"corrupt or truncated gzip stream ({e})"
            return
    if records == 0:  # an input that silently contributes nothing is more likely a mistake
        yield 1, None, "empty input file (no records)"


def _parse_line(raw: bytes, text_field: str, max_chars: int):
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", errors="replace").rstrip("\r\n"), None, None, f"invalid UTF-8 ({e.reason} at byte {e.start})"
    line = line.rstrip("\r\n")
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as e:
        return line, None, None, f"invalid JSON ({e.msg} at column {e.colno})"
    text, error = _check_text(fields, text_field, max_chars)
    return line, fields if isinstance(fields, dict) else None, text, error


FILE_BITS = 40  # per-file sharding: doc_id = file index << FILE_BITS | record index in the file


def shard_of(doc_id: int, num_shards: int | str) -> int:
    return doc_id >> FILE_BITS if num_shards == "per_file" else doc_id % int(num_shards)


def iter_records(
    paths: Sequence[str | Path],
    text_field: str = "text",
    max_chars: int = 1_000_000,
    shard: int | None = None,
    num_shards: int | str = 1,
) -> Iterator[Record]:
    """Yields every record of `paths` in input order, or only those of one shard.

    `num_shards` is an integer (doc ids count records across all files; a shard is doc_id
    modulo num_shards; records of other shards are counted but not parsed) or "per_file": a
    shard is one file, `paths` is then that file alone when `shard` is given, and doc ids are
    file index << FILE_BITS | record index, so one file's edits never move another's ids.
    Doc ids increase in input order either way.
    """
    per_file = num_shards == "per_file"
    if per_file and shard is not None and len(paths) != 1:
        raise ValueError("with num_shards: per_file, a shard reads exactly its one file")
    doc_id = 0
    for file_index, path in enumerate(map(Path, paths), start=shard if per_file and shard else 0):
        if not path.exists():
            raise FileNotFoundError(f"corpus file not found: {path}")
        if per_file:
            doc_id = file_index << FILE_BITS
        for line, raw, fields, text, error in _file_records(path, text_field, max_chars):
            if shard is None or per_file or doc_id % int(num_shards) == shard:
                if isinstance(raw, bytes):
                    raw, fields, text, error = _parse_line(raw, text_field, max_chars)
                yield Record(doc_id, str(path), line, fields, raw, text, error)
            doc_id += 1


def _file_records(path: Path, text_field: str, max_chars: int):
    """Unparsed JSONL lines (parsed lazily by the caller) or parsed Parquet rows."""
    if is_parquet(path):
        row = 0
        for batch in pq.ParquetFile(path).iter_batches():
            for fields in batch.to_pylist():
                row += 1
                text, error = _check_text(fields, text_field, max_chars)
                yield row, None, fields, text, error
        if row == 0:
            yield 1, None, None, None, "empty input file (no records)"
    else:
        for line, raw, error in _jsonl_lines(path):
            yield line, raw, None, None, error


def check(record: Record, on_bad_record: str) -> bool:
    """True if the record is usable; raises for a bad one under `error`, else False."""
    if record.error is None:
        return True
    if on_bad_record == "error":
        raise BadRecordError(
            f"{record.where}: {record.error} (set corpus.on_bad_record: skip to write such "
            "records to the rejects file instead)")
    return False
