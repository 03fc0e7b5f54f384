"""Reading corpus records: JSONL (plain or gzip) and Parquet, validated, with file and line.

Every input record gets a `doc_id`: its index in input order across all files. A record that
cannot be used carries the reason; callers either raise (`on_bad_record: error`) or write it to
a rejects file (`skip`). Nothing is dropped silently; a file without records contributes no
documents and is logged. Records are written back as JSON by `json_line` (PARQUET_TO_JSON).
"""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import logging
import math
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lqs import sources

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors write at the start of a file


class BadRecordError(ValueError):
    """A corpus record that cannot be used, named by file and line."""


@dataclass(frozen=True)
class Record:
    doc_id: int
    path: str
    line: int  # 1-based line (JSONL) or row (Parquet)
    fields: dict[str, Any] | None  # the parsed record, None when it could not be parsed
    raw: str | None  # the line as read (JSONL) without its line end (and BOM), kept for the output
    text: str | None
    error: str | None
    eol: str = ""  # the line end as read: "\n", "\r\n", or "" (a last line without one)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def reject_entry(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "file": self.path, "line": self.line,
                "reason": self.error, "record": self.raw if self.raw is not None else self.fields}


def is_parquet(path: str | Path) -> bool:
    return str(path).endswith((".parquet", ".pq"))


MAX_CHARS = 10_000_000  # the default of corpus.max_chars (config/schema.yaml)


def text_error(text: Any, max_chars: int = MAX_CHARS, name: str = "text") -> str | None:
    """Why `text` cannot be tokenized and scored (`name` says what it is in the message), or
    None: the one check of a document's text, for corpus records and for lqs.scorer's API."""
    if not isinstance(text, str):
        return f"{name} is not a string (got {type(text).__name__})"
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"text longer than corpus.max_chars ({len(text)} > {max_chars} characters)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can escape one ("\ud800"); no tokenizer takes it
        return (f"{name} holds a lone UTF-16 surrogate (\\u{ord(text[e.start]):04x} "
                f"at character {e.start}), which is not Unicode text")
    return None


def _check_text(fields: Any, text_field: str, max_chars: int) -> tuple[str | None, str | None]:
    if not isinstance(fields, dict):
        return None, f"not a JSON object (got {type(fields).__name__})"
    if text_field not in fields:
        return None, f"missing text field {text_field!r}"
    text = fields[text_field]
    error = text_error(text, max_chars, f"text field {text_field!r}")
    return (None, error) if error else (text, None)


def _jsonl_lines(path: str) -> Iterator[tuple[int, bytes | None, str | None]]:
    """(line number, raw bytes with the line end, error) for each non-blank line; a BOM at the
    start of the file is dropped; a truncated gzip ends in an error."""
    lineno = 0
    with sources.open_binary(path) as raw, (gzip.open(raw, "rb") if path.endswith(".gz") else raw) as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if lineno == 1 and line.startswith(BOM):
                    line = line[len(BOM):]
                if line.strip():
                    yield lineno, line, None
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            yield lineno + 1, None, f"corrupt or truncated gzip stream ({e})"


def _int(digits: str) -> int | Decimal:
    """A JSON integer of any length: int() refuses more than 4,300 digits, Decimal keeps it exactly."""
    try:
        return int(digits)
    except ValueError:
        return Decimal(digits)


def loads(line: str | bytes) -> Any:
    """json.loads that reads integers of any length (exactly; Decimal past int()'s digit limit)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise
    except ValueError:  # valid JSON with an integer over int()'s digit limit; parse_int slows every line
        return json.loads(line, parse_int=_int)


def _parse_line(raw: bytes, text_field: str, max_chars: int):
    """(line without its end, line end, fields, text, error) of one raw JSONL line."""
    body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    eol = raw[len(body):].decode("ascii")
    try:
        line = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return body.decode("utf-8", errors="replace"), eol, None, None, f"invalid UTF-8 ({e.reason} at byte {e.start})"
    try:
        fields = loads(line)
    except json.JSONDecodeError as e:
        return line, eol, None, None, f"invalid JSON ({e.msg} at column {e.colno})"
    except RecursionError:
        return line, eol, None, None, "JSON nested too deeply to read"
    text, error = _check_text(fields, text_field, max_chars)
    return line, eol, fields if isinstance(fields, dict) else None, text, error


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

    Records are the non-blank lines of a JSONL file and the rows of a Parquet file. A file with
    none contributes no documents and is logged; if every file is empty, that is an error.
    """
    per_file = num_shards == "per_file"
    if per_file and shard is not None and len(paths) != 1:
        raise ValueError("with num_shards: per_file, a shard reads exactly its one file")
    doc_id, empty = 0, []
    for file_index, path in enumerate(map(sources.source_name, paths), start=shard if per_file and shard else 0):
        if per_file:
            doc_id = file_index << FILE_BITS
        records = 0
        for line, raw, fields, text, error in _file_records(path, text_field, max_chars):
            records += 1
            if shard is None or per_file or doc_id % int(num_shards) == shard:
                eol = ""
                if isinstance(raw, bytes):
                    raw, eol, fields, text, error = _parse_line(raw, text_field, max_chars)
                yield Record(doc_id, path, line, fields, raw, text, error, eol)
            doc_id += 1
        if records == 0:
            log.warning("%s: empty corpus file (no records); it contributes no documents", path)
            empty.append(path)
    # a per-file shard sees only its own file: whether all are empty is for the whole corpus to say
    if paths and len(empty) == len(paths) and not (per_file and shard is not None):
        raise ValueError(f"every corpus file is empty (no records): {', '.join(empty)}")


def _decoded_row(batch: pa.RecordBatch) -> dict[str, Any] | str:
    """The one row of `batch`, or why a string in it cannot be read (as the reason, a str)."""
    row = {}
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            row[name] = column.to_pylist()[0]
        except UnicodeDecodeError as e:
            return f"invalid UTF-8 in column {name!r} ({e.reason} at byte {e.start})"
    return row


def _file_records(path: str, text_field: str, max_chars: int):
    """Unparsed JSONL lines (parsed lazily by the caller) or parsed Parquet rows. A missing file
    is a FileNotFoundError naming it as given (a URL stays a URL)."""
    if not is_parquet(path):
        for line, raw, error in _jsonl_lines(path):
            yield line, raw, None, None, error
    elif sources.is_url(path):
        with sources.open_binary(path, seekable=True) as f:
            yield from _parquet_rows(f, text_field, max_chars)
    elif not Path(path).exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    else:
        yield from _parquet_rows(path, text_field, max_chars)  # pyarrow reads a local path itself


def _parquet_rows(source, text_field: str, max_chars: int):
    row = 0
    try:
        for batch in pq.ParquetFile(source).iter_batches():
            try:
                rows = batch.to_pylist()
            except UnicodeDecodeError:  # a string column holds invalid UTF-8: find its rows
                rows = [_decoded_row(batch.slice(i, 1)) for i in range(batch.num_rows)]
            for fields in rows:
                row += 1
                if isinstance(fields, str):  # why the row could not be read
                    yield row, None, None, None, fields
                else:
                    yield row, None, fields, *_check_text(fields, text_field, max_chars)
    except pa.ArrowException as e:
        yield row + 1, None, None, None, f"corrupt or truncated Parquet file ({e})"


PARQUET_TO_JSON = """\
null -> null; bool, int, str -> themselves; float -> the number, NaN and +-Infinity -> null;
decimal -> a string of its exact digits ("1.50"); binary -> a base64 string (RFC 4648, padded);
timestamp, date, time -> an ISO 8601 string (timestamps with their UTC offset when they have a
time zone, fractional seconds to the column's unit); duration -> an ISO 8601 duration string
in seconds ("PT1.5S", "-PT90S"); list -> array; struct -> object; map -> array of [key, value]
pairs (Arrow map keys need not be strings nor unique); uuid -> its canonical string."""


def to_json(value: Any) -> Any:
    """`value` as read from a Parquet row (pyarrow's to_pylist), as JSON-serialisable Python, by
    PARQUET_TO_JSON: strict JSON (no NaN), nothing lost that JSON can hold, never a Python repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: to_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):  # a map entry is a (key, value) tuple
        return [to_json(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time)):  # datetimes and pandas Timestamps too
        return value.isoformat()
    if isinstance(value, datetime.timedelta):  # pandas Timedeltas too, to the nanosecond
        import pandas as pd

        seconds, nanoseconds = divmod(abs(pd.Timedelta(value).value), 10**9)
        fraction = f".{nanoseconds:09d}".rstrip("0") if nanoseconds else ""
        return f"{'-' if value < datetime.timedelta(0) else ''}PT{seconds}{fraction}S"
    if isinstance(value, uuid.UUID):
        return str(value)
    raise ValueError(f"no JSON form for a Parquet value of type {type(value).__name__} ({value!r})")


def json_line(obj: Any) -> str:
    """One line of strict JSON for `obj` (to_json applied), non-ASCII text as is, without the
    newline. (No string here holds a lone surrogate, which UTF-8 cannot encode: Parquet strings
    are UTF-8, and a JSONL record is written as its raw line.)"""
    return json.dumps(to_json(obj), ensure_ascii=False, allow_nan=False)


def check(record: Record, on_bad_record: str) -> bool:
    """True if the record is usable; raises for a bad one under `error`, else False."""
    if record.error is None:
        return True
    if on_bad_record == "error":
        raise BadRecordError(
            f"{record.where}: {record.error} (set corpus.on_bad_record: skip to write such "
            "records to the rejects file instead)")
    return False
