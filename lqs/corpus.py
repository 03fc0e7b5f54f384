"""Reading corpus records: JSONL (plain or gzip) and Parquet, validated, with file and line.

Every input record gets a `doc_id`: its index in input order across all files. A record that
cannot be used carries the reason; callers either raise (`on_bad_record: error`) or write it to
a rejects file (`skip`). Nothing is dropped silently; a file without records contributes no
documents and is logged. A file that cannot be read at all (a corrupt Parquet file) is one
record without a doc id or line: a rejected file, and a file without records to every stage.
Records are written back as JSON by `json_line` (PARQUET_TO_JSON).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import dataclasses
import datetime
import functools
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lqs import sources
from lqs.defaults import default
from lqs.formats import is_gzip, is_parquet
from lqs.io import parquet_file
from lqs.splits import Split, shard_doc_id

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which some editors write at the start of a file


class BadRecordError(ValueError):
    """A corpus record that cannot be used, named by file and line."""


class BadFileError(BadRecordError):
    """A corpus file that cannot be read at all (truncated or corrupt), named in the message."""


class LinesBefore:
    """The lines of a file before a split's first byte, counted once and only if asked for: a
    split that starts inside a file knows its records' lines relative to its start, and only a
    message (or a rejects entry) needs the file's line number."""

    def __init__(self, path: str, start: int):
        self.path, self.start, self._count = path, start, None

    def __call__(self) -> int:
        if self._count is None:  # the lines ending before byte start - 1, and the one the split skips
            count, left = 1, self.start - 1
            with sources.open_binary(self.path) as f:
                while left > 0 and (block := f.read(min(left, 1 << 20))):
                    count += block.count(b"\n")
                    left -= len(block)
            self._count = count
        return self._count


@dataclass(frozen=True)
class Record:
    doc_id: int | None  # None: the whole file cannot be read (line, fields, raw, text are None too)
    path: str
    split_line: int | None  # 1-based line (JSONL) or row (Parquet), from the start of the split read
    fields: dict[str, Any] | None  # the parsed record, None when it could not be parsed
    # the line as read (JSONL) without its line end (and BOM), kept for the output; its bytes
    # when they are not UTF-8 (a bad record)
    raw: str | bytes | None
    text: str | None
    error: str | None
    eol: str = ""  # the line end as read: "\n", "\r\n", or "" (a last line without one)
    # a split that starts inside its file: the lines before it, counted when asked for
    lines_before: LinesBefore | None = dataclasses.field(default=None, compare=False)

    @property
    def line(self) -> int | None:
        """The record's 1-based line (JSONL) or row (Parquet) in its file."""
        if self.split_line is None or self.lines_before is None:
            return self.split_line
        return self.split_line + self.lines_before()

    @property
    def where(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"

    @functools.cached_property  # a frozen dataclass still has the __dict__ this caches in
    def fingerprint(self) -> int:
        """The record's bytes hashed: a JSONL line as read, without its line end, or a Parquet
        row's values (canonical_row), whatever the output format. Each stage that reads the
        record to score it, or to write a score beside it, checks this against the one stored
        where the score came from: a score stays bound to the exact record it was computed on."""
        data = self.raw.encode("utf-8") if self.raw is not None else canonical_row(self.fields)
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)  # Parquet int64

    def reject_entry(self) -> dict[str, Any]:
        if isinstance(self.raw, bytes):  # not UTF-8, so not JSON text: its exact bytes, as base64
            record = {"record": None, "record_base64": base64.b64encode(self.raw).decode("ascii")}
        else:
            record = {"record": self.raw if self.raw is not None else self.fields}
        return {"doc_id": self.doc_id, "file": self.path, "line": self.line, "reason": self.error, **record}


# What to do when a fingerprint shows that the corpus changed after it was tokenized: Snakemake sees
# no change when an edit keeps the file's mtime (`cp -p`, `rsync -t`, tar). Forcing tokenize_shard
# reruns every job downstream of the corpus, as a newer mtime would have.
RETOKENIZE = ("rerun `snakemake --forcerun tokenize_shard` (with your usual targets and options) to "
              "tokenize and score the corpus anew")


def require_fingerprints(path: str) -> None:
    """Refuses a tokenized or score shard (the workflow's own) without the fingerprint column:
    an lqs from before fingerprints wrote it."""
    if "fingerprint" not in parquet_file(path).schema_arrow.names:
        raise RuntimeError(f"{path} has no record fingerprints (an older lqs wrote it): {RETOKENIZE}")


MAX_CHARS = default("corpus.max_chars")


@dataclass(frozen=True)
class CorpusReading:
    """How a workflow stage reads the corpus, the `corpus` object of its settings: the digest of
    the splits it reads (lqs.splits.planned_splits checks it against the plan), corpus.text_field
    and corpus.max_chars."""

    splits_sha256: str
    text_field: str
    max_chars: int

    def records(self, splits: Sequence[Split], require_records: bool = True) -> Iterator[Record]:
        """iter_records of `splits` with this text field and length limit."""
        return iter_records(splits, self.text_field, self.max_chars, require_records=require_records)

# How messages name a setting: the workflow's config keys, unless the caller names its own
# (`lqs score` its flags: lqs.score.SCORE_FLAGS) with `settings_named`.
CONFIG_KEYS = {"on_bad_record": "corpus.on_bad_record", "max_chars": "corpus.max_chars",
               "format": "output.format", "score_field": "output.score_field",
               "extra_fields": "output.extra_fields"}
_setting_names: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("setting_names",
                                                                                   default=CONFIG_KEYS)


@contextlib.contextmanager
def settings_named(names: Mapping[str, str]) -> Iterator[None]:
    """Messages built inside the block (in generators consumed there too) name settings by `names`."""
    token = _setting_names.set({**CONFIG_KEYS, **names})
    try:
        yield
    finally:
        _setting_names.reset(token)


def setting(name: str, value: str | None = None) -> str:
    """A setting as the caller names it, with a value as it is written: `corpus.on_bad_record: skip`
    in the config, `--on-bad-record skip` on a command line."""
    key = _setting_names.get()[name]
    return key if value is None else f"{key} {value}" if key.startswith("-") else f"{key}: {value}"


def text_error(text: Any, max_chars: int = MAX_CHARS, name: str = "text") -> str | None:
    """Why `text` cannot be tokenized and scored (`name` says what it is in the message), or
    None: the one check of a document's text, for corpus records and for lqs.scorer's API."""
    if not isinstance(text, str):
        return f"{name} is not a string (got {type(text).__name__})"
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"text longer than {setting('max_chars')} ({len(text)} > {max_chars} characters)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can escape one ("\ud800"); no tokenizer takes it
        return (f"{name} holds a lone UTF-16 surrogate (\\u{ord(text[e.start]):04x} "
                f"at character {e.start}), which is not Unicode text")
    return None


def output_fields(score_field: str, extra_fields: Sequence[str] = ()) -> dict[str, str]:
    """The fields the output adds to each record, each with the name of the setting that adds it."""
    return {score_field: "score_field", **dict.fromkeys(extra_fields, "extra_fields")}


def output_field_error(fields: Mapping[str, Any], output_fields: Mapping[str, str]) -> str | None:
    """Why a record cannot be written with the fields the output adds (it already has one, which
    the output would hold twice), or None."""
    for name, key in output_fields.items():
        if name in fields:
            return f"the record already has the field {name!r} that {setting(key)} adds; choose another {setting(key)}"
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")  # in a parsed string, a surrogate is a lone one (pairs are joined)


def _lone_surrogate(fields: dict[str, Any]) -> str | None:
    """Where a record holds a lone UTF-16 surrogate (in a key, or a string of a field), or None:
    UTF-8 cannot encode one, so no JSONL, Parquet or `datasets` reader could read the output."""
    for name, value in fields.items():
        stack, where = [value], f"in field {name!r}"
        if found := _SURROGATE.search(name):
            stack, where = [], "in a key"
        while stack and not found:  # a loop, not recursion: JSON may nest deeper than Python recurses
            value = stack.pop()
            if isinstance(value, str):
                found = _SURROGATE.search(value)
            elif isinstance(value, dict):
                found = next(filter(None, map(_SURROGATE.search, value)), None)
                where = f"in a key in field {name!r}" if found else where
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
        if found:
            return f"lone UTF-16 surrogate (\\u{ord(found.group()):04x}) {where}, which is not Unicode text"
    return None


def _check_record(fields: Any, text_field: str, max_chars: int, output_fields: Mapping[str, str],
                  line: str | None = None) -> tuple[str | None, str | None]:
    """(text, None) for a usable record, else (None, why not). `output_fields`: see output_fields;
    `line`: the JSONL line the record was parsed from."""
    if not isinstance(fields, dict):
        return None, f"not a JSON object (got {type(fields).__name__})"
    if text_field not in fields:
        return None, f"missing text field {text_field!r}"
    text = fields[text_field]
    error = text_error(text, max_chars, f"text field {text_field!r}")
    if not error:
        error = output_field_error(fields, output_fields)
    # only a \u escape makes a surrogate (a UTF-8 line holds none): most lines need no walk
    if not error and line is not None and ("\\ud" in line or "\\uD" in line):
        error = _lone_surrogate(fields)
    return (None, error) if error else (text, None)


# The magic numbers of compressed files: no JSONL line starts with these bytes.
COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# The longest line a record within max_chars can take: its text JSON-escaped (\uXXXX\uXXXX, 12
# bytes, for a character outside the BMP) and this much for its other fields.
LINE_SLACK = 2**20


def max_line_bytes(max_chars: int) -> int:
    return 12 * max_chars + LINE_SLACK


MAGIC_BYTES = max(map(len, COMPRESSION_MAGIC))
EXACT_RANGE = 1 << 20  # a byte range up to this long is read exactly: a buffer would read past it


def _compression(f, path: str, position: int) -> str | None:
    """The compression a file's first bytes name (COMPRESSION_MAGIC), or None, read without moving
    `f` (opened at its start, or seekable) or filling its buffer with bytes another split reads."""
    if not sources.is_url(path) and path != "-":  # a local file: its buffer stays empty
        head = os.pread(f.fileno(), MAGIC_BYTES, 0)
    elif position == 0:  # a stream, opened at its start (standard input, a hub file)
        head = f.peek(MAGIC_BYTES)[:MAGIC_BYTES]
    else:
        f.seek(0)
        head = f.read(MAGIC_BYTES)
    return next((name for magic, name in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def _exact_range(f, start: int, stop: int, limit: int) -> io.BytesIO:
    """A local file's bytes [start, stop) and the rest of the line under way at `stop` (at most
    `limit` bytes of it), read with pread: no byte beyond them is read."""
    data = bytearray(os.pread(f.fileno(), stop - start, start))
    at, step = stop, 256  # the rest of the line in growing steps: read past it by less than it holds
    while not data.endswith(b"\n") and at - stop <= limit and (more := os.pread(f.fileno(), step, at)):
        end = more.find(b"\n")
        data += more if end < 0 else more[:end + 1]
        at, step = at + len(more), min(2 * step, 1 << 20)
        if end >= 0:
            break
    return io.BytesIO(bytes(data))


def _with_readline(f):
    """`f`, or a URL's seekable file (fsspec's readline takes no size) buffered for sized readlines."""
    return f if isinstance(f, io.BufferedIOBase) else io.BufferedReader(f, buffer_size=1 << 20)


def _skip_line(f) -> int:
    """Reads to the end of the line under way, in pieces (memory stays bounded); the bytes read."""
    skipped = 0
    while piece := f.readline(2**20):
        skipped += len(piece)
        if piece.endswith(b"\n"):
            break
    return skipped


def _jsonl_lines(split: Split, max_chars: int = MAX_CHARS
                 ) -> Iterator[tuple[int | None, int | None, bytes | None, str | None]]:
    """(position, line number from the split's start, raw bytes with the line end, error) for each
    non-blank line whose first byte lies in the split; a BOM at the start of the file is dropped;
    a truncated gzip ends in an error. A split that starts inside the file skips the line under
    way there (its own split reads it to its end) and reads past its stop to end its last line.
    Lines are read with a size cap (max_line_bytes): a longer one is a bad record without its
    bytes (its text would be over max_chars), skipped in pieces, so memory stays bounded whatever a
    line's length. A file not named .gz that starts with a compressed format's magic number is
    unreadable (position and line None)."""
    path, position, lineno, limit = split.path, split.start, 0, max_line_bytes(max_chars)
    with (sources.open_binary(path, seekable=position > 0) as raw,
          gzip.open(raw, "rb") if is_gzip(path) else _with_readline(raw) as f):
        try:
            if not is_gzip(path):
                if compression := _compression(f, path, position):
                    yield None, None, None, (f"{compression}-compressed, but its name does not say so: give a gzip "
                                             "file a name ending in .gz; lqs reads no other compression")
                    return
                base = max(position - 1, 0)
                if split.stop is not None and not sources.is_url(path) and split.stop - base <= EXACT_RANGE:
                    f = _exact_range(f, base, split.stop, limit)
                elif base:
                    f.seek(base)
                if position > 0:
                    position += _skip_line(f) - 1  # to the first line that starts in the split
            while (split.stop is None or position < split.stop) and (line := f.readline(limit + 1)):
                lineno += 1
                at = position
                position += len(line)
                if at == 0 and line.startswith(BOM):
                    line = line[len(BOM):]
                if len(line) > limit:
                    position += _skip_line(f)  # the rest of the line, unkept
                    yield at, lineno, None, (f"line longer than {limit} bytes: its text is over "
                                             f"{setting('max_chars')} ({max_chars}) characters")
                elif line.strip():
                    yield at, lineno, line, None
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            yield position, lineno + 1, None, f"corrupt or truncated gzip stream ({e})"


def _int(digits: str) -> int | Decimal:
    """A JSON integer of any length: int() refuses more than 4,300 digits, Decimal keeps it exactly."""
    try:
        return int(digits)
    except ValueError:
        return Decimal(digits)


class NotStrictJSON(ValueError):
    """JSON that Python's json reads but RFC 8259 has not (NaN, Infinity) or leaves to each reader
    (a duplicate key: most keep the last value, some the first, some refuse the record)."""


def _no_constant(name: str):
    raise NotStrictJSON(f"invalid JSON ({name} is not a JSON value)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise NotStrictJSON(f"duplicate key {next(k for k, _ in pairs if k in seen or seen.add(k))!r}")
    return obj


# made once: json.loads with a hook builds a decoder per call, which would double the reader's cost
_STRICT, _STRICT_LONG_INTS = (json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys,
                                               parse_int=parse_int) for parse_int in (None, _int))


def loads(line: str | bytes, strict: bool = False) -> Any:
    """json.loads that reads integers of any length (exactly; Decimal past int()'s digit limit).
    `strict` (a str line): NaN, Infinity, -Infinity and a duplicate key are a NotStrictJSON error."""
    try:
        return _STRICT.decode(line) if strict else json.loads(line)
    except (json.JSONDecodeError, NotStrictJSON):
        raise
    except ValueError:  # valid JSON with an integer over int()'s digit limit; parse_int slows every line
        return _STRICT_LONG_INTS.decode(line) if strict else json.loads(line, parse_int=_int)


def _parse_line(raw: bytes, text_field: str, max_chars: int, output_fields: Mapping[str, str]):
    """(line without its end (its bytes if not UTF-8), line end, fields, text, error) of one raw JSONL line."""
    body = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    eol = raw[len(body):].decode("ascii")
    try:
        line = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return body, eol, None, None, f"invalid UTF-8 ({e.reason} at byte {e.start})"
    try:
        fields = loads(line, strict=True)
    except json.JSONDecodeError as e:
        return line, eol, None, None, f"invalid JSON ({e.msg} at column {e.colno})"
    except NotStrictJSON as e:
        return line, eol, None, None, str(e)
    except RecursionError:
        return line, eol, None, None, "JSON nested too deeply to read"
    text, error = _check_record(fields, text_field, max_chars, output_fields, line)
    return line, eol, fields if isinstance(fields, dict) else None, text, error


def iter_records(
    splits: Sequence[Split | str | Path],
    text_field: str = "text",
    max_chars: int = 1_000_000,
    output_fields: Mapping[str, str] | None = None,
    require_records: bool = True,
) -> Iterator[Record]:
    """Yields every record of `splits` (lqs.splits.Split, or a path: the whole file) in order.

    Records are the non-blank lines of a JSONL file and the rows of a Parquet file; a record's
    doc id is the index of its file among the files of `splits` and its position in the file
    (lqs.splits: the byte its line starts at, or its row), so ids increase in input order and do
    not depend on any other file. A file with no records contributes no documents and is logged;
    with `require_records` (a reader of the whole corpus), every file empty is an error. A file
    that cannot be read at all is one Record with doc_id and line None and the reason, then a file
    without records. `output_fields` (see output_fields): a record that already has one is a bad
    record.
    """
    splits = [s if isinstance(s, Split) else Split(str(s)) for s in splits]
    without_records, unreadable, file_index, previous = [], [], -1, None
    for split in splits:
        path = sources.source_name(split.path)
        split = Split(path, split.start, split.stop, split.parts).resolved()
        if path != previous:
            file_index, previous = file_index + 1, path
        records, file_reader = 0, reader(path)
        lines_before = file_reader.lines_before(split)
        for position, line, raw, fields, text, error, eol in file_reader.records(split, text_field, max_chars,
                                                                                 output_fields or {}):
            if line is None:  # the whole file: no records, no doc ids
                log.warning("%s: %s; it contributes no documents", path, error)
                unreadable.append(path)
                yield Record(None, path, None, None, None, None, error)
                continue
            records += 1
            yield Record(shard_doc_id(file_index, position), path, line, fields, raw, text, error, eol, lines_before)
        if records == 0 and split.whole:
            if path not in unreadable:
                log.warning("%s: empty corpus file (no records); it contributes no documents", path)
            without_records.append(path)
    if require_records and splits and len(without_records) == len(splits):
        raise ValueError(f"every corpus file is empty (no records){' or unreadable' if unreadable else ''}: "
                         f"{', '.join(without_records)}")


def parquet_schema(path: str) -> pa.Schema:
    """The Arrow schema of a Parquet corpus file (local or URL); BadFileError naming it if unreadable."""
    with sources.open_binary(path, seekable=True) as f:
        parquet, error = _open_parquet(f)
    if error:
        raise BadFileError(f"{path}: {error}")
    return parquet.schema_arrow


def _open_parquet(source) -> tuple[pq.ParquetFile | None, str | None]:
    """(the Parquet file, its footer read, None), or (None, why its rows cannot be read as records)."""
    try:
        parquet = pq.ParquetFile(source)
    except pa.ArrowException as e:
        return None, f"corrupt or truncated Parquet file ({' '.join(str(e).split())})"
    duplicate = _duplicate_name(parquet.schema_arrow)
    return (None, duplicate) if duplicate else (parquet, None)


def _duplicate_name(fields, column: str | None = None) -> str | None:
    """Two columns, or two fields of a struct, of one name (a row as a dict keeps only one of the
    values), named; or None. `fields`: a schema, or a column's nested fields."""
    seen = set()
    for field in fields:
        if field.name in seen:
            where = f"fields named {field.name!r} in column {column!r}" if column else f"columns named {field.name!r}"
            return f"two {where} (a record holds one value per name)"
        seen.add(field.name)
    for field in fields:
        nested = [field.type.field(i) for i in range(field.type.num_fields)]
        if duplicate := _duplicate_name(nested, column or field.name):
            return duplicate
    return None


def _decoded_row(batch: pa.RecordBatch) -> dict[str, Any] | str:
    """The one row of `batch`, or why a string in it cannot be read (as the reason, a str)."""
    row = {}
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            row[name] = column.to_pylist()[0]
        except UnicodeDecodeError as e:
            return f"invalid UTF-8 in column {name!r} ({e.reason} at byte {e.start})"
    return row


class JsonlReader:
    """JSONL, plain or gzipped: a split is a byte range of a plain file (lqs.splits), a gzip
    stream is read whole; each non-blank line is a record, parsed strictly (_parse_line)."""

    def records(self, split: Split, text_field: str, max_chars: int, output_fields: Mapping[str, str]):
        """(position, line, raw, fields, text, error, eol) of each record of `split` (see
        Record); line None: the file cannot be read at all, and why."""
        for position, line, raw, error in _jsonl_lines(split, max_chars):
            if raw is None:
                yield position, line, None, None, None, error, ""
            else:
                raw, eol, fields, text, error = _parse_line(raw, text_field, max_chars, output_fields)
                yield position, line, raw, fields, text, error, eol

    def lines_before(self, split: Split) -> LinesBefore | None:
        """A split that starts inside its file counts its lines from there: the lines before it."""
        return LinesBefore(split.path, split.start) if split.start else None


class ParquetReader:
    """Parquet: a split is a range of row groups; each row is a record."""

    def records(self, split: Split, text_field: str, max_chars: int, output_fields: Mapping[str, str]):
        """As JsonlReader.records (raw None, eol ""). A missing file is a FileNotFoundError naming
        it as given (a URL stays a URL)."""
        path = split.path
        if sources.is_url(path):
            with sources.open_binary(path, seekable=True) as f:
                yield from _parquet_rows(f, split, text_field, max_chars, output_fields)
        elif not Path(path).exists():
            raise FileNotFoundError(f"corpus file not found: {path}")
        elif split.whole and os.path.getsize(path) <= EXACT_RANGE:  # read once: pyarrow would read the footer apart
            with open(path, "rb") as f:
                yield from _parquet_rows(pa.BufferReader(f.read()), split, text_field, max_chars, output_fields)
        else:
            yield from _parquet_rows(path, split, text_field, max_chars, output_fields)  # pyarrow reads a local path

    def lines_before(self, split: Split) -> None:
        return None  # a split of row groups counts the rows before it itself


def reader(path: str) -> JsonlReader | ParquetReader:
    """The reader of a corpus file, by its name (lqs.formats): the one place a corpus file's format
    picks how it is read. A name without a known ending (standard input, a URL) is JSONL."""
    return ParquetReader() if is_parquet(path) else JsonlReader()


def _parquet_rows(source, split: Split, text_field: str, max_chars: int, output_fields: Mapping[str, str]):
    """ParquetReader.records of the split's row groups of `source` (a path or an open file)."""
    parquet, error = _open_parquet(source)
    if error:
        yield None, None, None, None, None, error, ""
        return
    metadata = parquet.metadata
    groups = range(split.start, metadata.num_row_groups if split.stop is None else split.stop)
    row = sum(metadata.row_group(i).num_rows for i in range(split.start))  # rows before the split
    first = row
    try:
        for batch in parquet.iter_batches(row_groups=groups) if len(groups) else ():
            try:
                rows = batch.to_pylist()
            except UnicodeDecodeError:  # a string column holds invalid UTF-8: find its rows
                rows = [_decoded_row(batch.slice(i, 1)) for i in range(batch.num_rows)]
            for fields in rows:
                row += 1
                if isinstance(fields, str):  # why the row could not be read
                    yield row - 1, row, None, None, None, fields, ""
                else:
                    yield row - 1, row, None, fields, *_check_record(fields, text_field, max_chars, output_fields), ""
    except (pa.ArrowException, OSError) as e:  # a damaged page (pyarrow: OSError); the batches before it were read
        total = first + sum(metadata.row_group(i).num_rows for i in groups)
        yield row, row + 1, None, None, None, (f"corrupt Parquet file: its rows {row + 1} to {total} of "
                                               f"{metadata.num_rows} cannot be read ({' '.join(str(e).split())})"), ""


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


def canonical_row(fields: dict[str, Any] | None) -> bytes:
    """A Parquet row's values as bytes, for its fingerprint: JSON in column order, floats exactly
    (NaN and Infinity kept apart from null), and the values JSON has no type for tagged with
    their type ({"bytes": base64}, {"Decimal": "1.50"}, by PARQUET_TO_JSON)."""
    return json.dumps(fields, allow_nan=True, default=lambda v: {type(v).__name__: to_json(v)}).encode("ascii")


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
        if record.doc_id is None:
            raise BadFileError(f"{record.where}: {record.error} (set {setting('on_bad_record', 'skip')} to "
                               "list such files in the rejects file and read the other files)")
        raise BadRecordError(
            f"{record.where}: {record.error} (set {setting('on_bad_record', 'skip')} to write such "
            "records to the rejects file instead)")
    return False
