"""Writing scored documents: JSONL, gzipped JSONL or Parquet (`output.format`), one file or one
part per shard (`output.layout`), with optional per-document fields (`output.extra_fields`).

A JSONL record is written as its input line, byte for byte, with the new members inserted before
its final `}`; a Parquet row as one line of JSON (corpus.PARQUET_TO_JSON). A Parquet output has one
schema, the corpus's (corpus_schema), settled before any record is written and used by every
writer: the input's columns and types (Parquet input), or the types the JSONL records settle in
input order (SchemaBuilder), then the new columns. A value is never cast, truncated or dropped: a
JSONL record the schema cannot hold exactly is a bad record (`fitting`), and a writer that meets
one fails naming its file and line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lqs import corpus
from lqs.formats import EXTENSIONS, is_gzip
from lqs.io import atomic_path, parquet_file, write_table

log = logging.getLogger(__name__)

# The per-document fields output.extra_fields may add, and their Parquet types.
STDOUT_BUFFER = 1 << 16  # bytes buffered for standard output (lqs score --out -); flushed after each chunk
EXTRA_FIELDS = {"n_tokens": pa.int64(), "n_windows": pa.int64(), "truncated": pa.bool_()}


def default_format(corpus_files: Sequence[str]) -> str:
    """Parquet for a corpus of Parquet files, JSONL otherwise."""
    return "parquet" if corpus_files and all(corpus.is_parquet(f) for f in corpus_files) else "jsonl"


def check_format(name: str) -> str:
    if name not in EXTENSIONS:
        raise ValueError(f"{corpus.setting('format')} must be one of {', '.join(EXTENSIONS)}, not {name!r}")
    return name


def part_name(shard: int, format: str) -> str:
    """The file of one shard's scored documents in a per_shard output directory."""
    return f"part-{shard}{EXTENSIONS[check_format(format)]}"


def json_members(values: Mapping[str, Any]) -> str:
    return "".join(f", {json.dumps(k)}: {json.dumps(v, allow_nan=False)}" for k, v in values.items())


def output_line(record: corpus.Record, values: Mapping[str, Any]) -> str:
    """The output line of a scored record: a JSONL line is its input line with the members of
    `values` (the score first) inserted before its final `}` (a scored object has its text field,
    so is never empty) and its own line end (a last line without one gets a newline); a Parquet
    row is one line of JSON."""
    for field in values:
        if field in record.fields:
            raise ValueError(f"{record.where}: the record already has a field {field!r}; choose another "
                             f"{corpus.setting('score_field' if field not in EXTRA_FIELDS else 'extra_fields')}")
    if record.raw is None:
        return corpus.json_line({**record.fields, **values}) + "\n"
    end = record.raw.rindex("}")
    return record.raw[:end] + json_members(values) + record.raw[end:] + (record.eol or "\n")


def parquet_input_schema(paths: Sequence[str], output_fields: Mapping[str, str] | None = None) -> pa.Schema | None:
    """The one schema of a corpus of Parquet files (None if any file is JSONL): the files'
    schemas unified (a column missing from one file is null there); schema-level metadata is
    dropped, as pandas' and datasets' describe the input's columns, not the output's. A file that
    cannot be read, or has a column the output adds (`output_fields`: corpus.output_fields), has
    no usable records (iter_records makes each a bad record), so it adds no columns either."""
    if not paths or not all(corpus.is_parquet(p) for p in paths):
        return None
    schemas = []
    for path in map(str, paths):
        try:
            schema = corpus.parquet_schema(path)
        except corpus.BadFileError as e:
            log.warning("%s; it adds no columns to the Parquet output", e)
            continue
        if not set(output_fields or ()) & set(schema.names):
            schemas.append(schema)
    try:
        return pa.unify_schemas(schemas).remove_metadata() if schemas else pa.schema([])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"the corpus's Parquet files have columns of different types ({e}); a Parquet output "
                         f"needs one schema: use {corpus.setting('format')} jsonl, or make the files agree") from None


# ----------------------------------------------------------------------------------------------
# The schema of JSONL records: settled in input order, widened only where no value changes.

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXACT_INT = 2**53  # a double holds every integer of at most this magnitude exactly


class Misfit(Exception):
    """A JSON value that a field's type cannot hold, even widened (SchemaBuilder)."""


@dataclasses.dataclass(frozen=True)
class FieldType:
    """A field's type as the records so far give it: `kind` None (null: no value yet), bool, int,
    float, str, list (of `item`) or object (`fields`, in order of first appearance); from a
    Parquet schema also any other Arrow type's name, which holds no JSON value but null. `big`:
    an int field holds an integer a double cannot hold exactly, so it never widens to double."""
    kind: str | None = None
    big: bool = False
    item: FieldType | None = None
    fields: Mapping[str, FieldType] = dataclasses.field(default_factory=dict)


NULL, FLOAT = FieldType(), FieldType("float")


_KINDS = {bool: "bool", int: "int", Decimal: "int", float: "float", str: "str", list: "list", dict: "object"}
# how a message names the values of a kind
_HELD = {"bool": "true or false", "int": "integers", "float": "floats", "str": "strings", "list": "lists",
         "object": "objects"}


# a JSON number past a double's range (1e400) reads as infinity, which a Parquet column would store
_BEYOND_DOUBLE = ("field {path!r} is a number beyond a 64-bit float's range, which a Parquet column would hold as "
                  "infinity")


def _kind(value: Any) -> str:
    """The kind of a value json.loads (corpus.loads) made: exactly these types (bool is not an int
    here, as it is not to Arrow; a Decimal is an integer past int()'s digit limit)."""
    return _KINDS[type(value)]


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 40 else text[:40] + "…"


def _child(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key


def _widened(t: FieldType, value: Any, path: str) -> FieldType:
    """`t` widened to hold `value` as well, changing no value it holds (`t` itself if it already
    does); Misfit, naming the field, if no such type exists."""
    if value is None:
        return t
    kind = _kind(value)
    if kind == "int" and not INT64_MIN <= value <= INT64_MAX:
        raise Misfit(f"field {path!r} is {_shown(value)}, an integer too large for a 64-bit integer column")
    if kind == "float" and not math.isfinite(value):
        raise Misfit(_BEYOND_DOUBLE.format(path=path))
    if t.kind is None and kind not in ("list", "object"):
        return FLOAT if kind == "float" else FieldType(kind, big=kind == "int" and abs(value) > EXACT_INT)
    if kind == t.kind and kind not in ("list", "object"):
        big = kind == "int" and abs(value) > EXACT_INT
        return FieldType("int", big=True) if big and not t.big else t
    if kind == "float" and t.kind == "int" and not t.big:
        return FLOAT  # every integer so far is exactly a double
    if kind == "int" and t.kind == "float" and abs(value) <= EXACT_INT:
        return t
    if kind == "list" and t.kind in (None, "list"):
        item = t.item or NULL
        for i, v in enumerate(value):
            item = _widened(item, v, _child(path, i))
        return t if t.kind and item is t.item else FieldType("list", item=item)
    if kind == "object" and t.kind in (None, "object"):
        fields = t.fields
        for key, v in value.items():
            old = fields.get(key)
            new = _widened(old or NULL, v, _child(path, key))  # a key with null alone still adds its field
            if new is not old:
                fields = dict(fields) if fields is t.fields else fields
                fields[key] = new
        return t if t.kind and fields is t.fields else FieldType("object", fields=fields)
    held = "integers a double cannot hold exactly" if t.big else _HELD[t.kind]
    raise Misfit(f"field {path!r} is {_shown(value)}, but earlier records give it {held}")


def _arrow(t: FieldType) -> pa.DataType:
    """The Arrow type of `t`. An object no record gives a field is null: Parquet has no empty struct."""
    if t.kind == "list":
        return pa.list_(_arrow(t.item))
    if t.kind == "object":
        return pa.struct([pa.field(k, _arrow(v)) for k, v in t.fields.items()]) if t.fields else pa.null()
    return {None: pa.null(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}[t.kind]


def _arrow_name(t: FieldType) -> str:
    return t.kind if t.kind not in (None, *_HELD) else str(_arrow(t))


def _from_arrow(type: pa.DataType) -> FieldType:
    if pa.types.is_struct(type):
        return FieldType("object", fields={f.name: _from_arrow(f.type) for f in type})
    if pa.types.is_list(type):
        return FieldType("list", item=_from_arrow(type.value_type))
    kinds = {pa.null(): None, pa.bool_(): "bool", pa.int64(): "int", pa.float64(): "float", pa.string(): "str"}
    return FieldType(kinds[type] if type in kinds else str(type))


def columns_of(schema: pa.Schema) -> FieldType:
    """The output schema's columns as one FieldType (of kind object), for `misfit`."""
    return FieldType("object", fields={f.name: _from_arrow(f.type) for f in schema})


def _misfit(value: Any, t: FieldType, path: str) -> str | None:
    """Why a column of type `t` cannot hold `value` exactly (Arrow would cast, truncate or drop
    it, or refuse it), or None."""
    if value is None:
        return None
    kind = _kind(value)
    if kind == "float" and not math.isfinite(value):
        return _BEYOND_DOUBLE.format(path=path)
    if kind == "list" and t.kind == "list":
        for i, v in enumerate(value):
            if reason := _misfit(v, t.item, _child(path, i)):
                return reason
        return None
    if kind == "object" and t.kind == "object":
        for key, v in value.items():
            if key not in t.fields:  # a field no record that fits gives: say why this one cannot
                try:
                    _widened(NULL, v, _child(path, key))
                except Misfit as e:
                    return str(e)
                return f"field {_child(path, key)!r} is not one of the Parquet output's columns"
            if reason := _misfit(v, t.fields[key], _child(path, key)):
                return reason
        return None
    if (kind == t.kind and kind != "int" or kind == "int" and t.kind == "int" and INT64_MIN <= value <= INT64_MAX
            or kind == "int" and t.kind == "float" and abs(value) <= EXACT_INT):
        return None
    if value == {} and t.kind is None:
        return f"field {path!r} is {{}}, an object that no record gives a field, which a Parquet column cannot hold"
    return f"field {path!r} is {_shown(value)}, which the Parquet output's {_arrow_name(t)} column cannot hold exactly"


def misfit(fields: Mapping[str, Any], columns: FieldType) -> str | None:
    """Why the output's `columns` (columns_of) cannot hold the record `fields` exactly, or None."""
    try:
        return _misfit(fields, columns, "")
    except RecursionError:
        return "JSON nested too deeply for a Parquet column"


class SchemaBuilder:
    """The schema of JSON records, settled in input order: a field's type is set by the first
    record that gives it a non-null value, and widens only where no value changes (an int field
    that also gets non-integers becomes double while every integer in it is at most 2**53 in
    magnitude; an object gains the fields later records add, null in the others; list items
    unify the same way). A record that fits no such widening is a misfit: `add` returns why and
    the record adds nothing, so it does not fit the final schema either."""

    def __init__(self):
        self.root = FieldType("object")

    def add(self, fields: Mapping[str, Any]) -> str | None:
        try:
            self.root = _widened(self.root, fields, "")
        except Misfit as e:
            return str(e)
        except RecursionError:
            return "JSON nested too deeply for a Parquet column"
        return None

    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(k, _arrow(v)) for k, v in self.root.fields.items()])


def corpus_schema(paths: Sequence[str], text_field: str = "text", max_chars: int = corpus.MAX_CHARS,
                  output_fields: Mapping[str, str] | None = None) -> pa.Schema:
    """The one schema (the input's columns) of a Parquet output of the corpus `paths`: the Parquet
    files' schemas unified, or the schema the JSONL records settle, read once in input order (the
    records iter_records accepts with these settings: the others are bad records anyway). The
    records that do not fit it are logged; `fitting` makes them bad records."""
    if all(corpus.is_parquet(p) for p in paths):
        return parquet_input_schema(paths, output_fields)
    if any(corpus.is_parquet(p) for p in paths):
        raise ValueError(f"a Parquet output needs one schema, but the corpus mixes JSONL and Parquet files "
                         f"({', '.join(map(str, paths[:3]))}{', …' if len(paths) > 3 else ''}): use "
                         f"{corpus.setting('format')} jsonl, or convert the files to one kind")
    builder, usable, misfits, first = SchemaBuilder(), 0, 0, []
    for record in corpus.iter_records(paths, text_field, max_chars, output_fields=output_fields):
        usable += record.error is None
        if record.error is None and (reason := builder.add(record.fields)):
            misfits += 1
            if len(first) < 3:
                first.append(f"{record.where}: {reason}")
    schema = builder.schema()
    log.info("the Parquet output's schema, from %d records: %s", usable,
             ", ".join(f"{f.name}: {f.type}" for f in schema))
    if misfits:
        log.warning("%d records do not fit it and are bad records; the first: %s", misfits, "; ".join(first))
    return schema


def fitting(records: Iterable[corpus.Record], schema: pa.Schema | None) -> Iterator[corpus.Record]:
    """`records`, each JSONL one that the Parquet output's `schema` cannot hold exactly turned
    into a bad record with the reason; Parquet rows (read with their files' own columns, which
    the schema unifies) and every record when `schema` is None pass as they are."""
    root = None if schema is None else columns_of(schema)
    for record in records:
        if root is not None and record.error is None and record.raw is not None:
            reason = misfit(record.fields, root)
            if reason:
                record = dataclasses.replace(
                    record, error=f"{reason}; {corpus.setting('format')} jsonl keeps every record as it is")
        yield record


def write_schema(schema: pa.Schema, out: str) -> None:
    """The schema as a Parquet file without rows (atomically)."""
    write_table(out, schema.empty_table())


def read_schema(path: str) -> pa.Schema:
    """The schema a write_schema file holds; a damaged file fails naming it."""
    return parquet_file(path).schema_arrow


class OutputWriter:
    """One output file in one format, written a chunk at a time, that appears (atomically) when the
    writer is closed without an error (or standard output, path "-", JSONL only). Every output of
    records goes through one (open_output): the scored output and its parts (ScoredWriter) and the
    training set (lqs.select.write_selected), so that a record copied from one into the other is
    written the same way. `write` takes a chunk in the format (JsonlWriter: lines, ParquetWriter: a
    table); `encode` makes one of scored records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._stack.__exit__(kind, value, traceback)  # renames the file into place only on success

    def write(self, chunk: Any) -> None:
        raise NotImplementedError

    def encode(self, records: Sequence[corpus.Record], values: Mapping[str, Sequence[Any]]) -> Any:
        """The chunk of `records` with `values` (the new members, one value per record) added."""
        raise NotImplementedError


class JsonlWriter(OutputWriter):
    """JSON lines as bytes; `compress`: gzipped, level 6, with no time stamp or file name, so that
    the same lines give the same bytes."""

    def __init__(self, path: str | Path, compress: bool = False, replace: bool = True):
        super().__init__(path)
        self._stdout = str(path) == "-"
        if self._stdout:
            # A buffered writer of its own: it writes all of each chunk or raises (a pipe's reader
            # gone: BrokenPipeError), even when sys.stdout is unbuffered (PYTHONUNBUFFERED=1), whose
            # raw writes may write part of what they are given and say so only in their return value.
            self._file = self._stack.enter_context(
                io.BufferedWriter(io.FileIO(sys.stdout.fileno(), "wb", closefd=False), STDOUT_BUFFER))
        else:
            self._file = self._stack.enter_context(open(self._stack.enter_context(atomic_path(path, replace)), "wb"))
        if compress:
            self._file = self._stack.enter_context(
                gzip.GzipFile(filename="", mode="wb", fileobj=self._file, compresslevel=6, mtime=0))

    def write(self, lines: bytes) -> None:
        self._file.write(lines)
        if self._stdout:
            self._file.flush()  # the next program in the pipe gets each chunk as it is scored

    def encode(self, records: Sequence[corpus.Record], values: Mapping[str, Sequence[Any]]) -> bytes:
        names = list(values)
        return "".join(output_line(r, dict(zip(names, v))) for r, v in zip(records, zip(*values.values()))
                       ).encode("utf-8")


class ParquetWriter(OutputWriter):
    """Arrow tables of one `schema` (the output's columns and types, and its key-value metadata),
    the file opened at once: an output without records still has the columns."""

    def __init__(self, path: str | Path, schema: pa.Schema | None, replace: bool = True):
        super().__init__(path)
        if str(path) == "-":  # standard output (lqs score --out -): a stream, so JSONL only
            raise ValueError("a Parquet output cannot be streamed to standard output: give a file, or "
                             "--format jsonl or jsonl.gz")
        if schema is None:
            raise ValueError("a Parquet output needs the corpus's schema (lqs.output.corpus_schema), settled "
                             "before any record is written")
        self.schema = schema
        self._parquet = self._stack.enter_context(pq.ParquetWriter(self._stack.enter_context(
            atomic_path(path, replace)), schema))
        self._input: tuple[pa.Schema, FieldType] | None = None  # the input's columns, once encode knows them

    def write(self, table: pa.Table) -> None:
        self._parquet.write_table(table)

    def encode(self, records: Sequence[corpus.Record], values: Mapping[str, Sequence[Any]]) -> pa.Table:
        if self._input is None:
            input_schema = pa.schema([f for f in self.schema if f.name not in values])
            self._input = input_schema, columns_of(input_schema)
        input_schema, columns = self._input
        # Arrow casts a float into an int64 column, and drops a key its struct type lacks: every
        # JSONL record is checked first (a Parquet row comes with its file's types, which the schema unifies)
        for r in records:
            reason = misfit(r.fields, columns) if r.raw is not None else None
            if reason:
                raise ValueError(f"{r.where}: {reason}; {corpus.setting('format')} jsonl keeps every record as it is")
        try:
            table = pa.Table.from_pylist([r.fields for r in records], schema=input_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            where = records[0].where
            raise ValueError(f"{where}…: the records do not fit the Parquet output's columns ({e})") from None
        for name, column in values.items():
            field = self.schema.field(name)
            table = table.append_column(field, pa.array(column, field.type))
        return table


def open_output(path: str | Path, format: str, schema: pa.Schema | None = None,
                metadata: Mapping[bytes, bytes] | None = None, replace: bool = True) -> OutputWriter:
    """The writer of an output in `format` (output.format): the one place a format picks its writer.
    `schema`: a Parquet output's; `metadata` is merged into its key-value metadata, replacing its
    keys (the provenance block: lqs.provenance.parquet_metadata; JSONL has none). `replace=False`:
    an output that appeared meanwhile is kept, and closing fails (lqs.io.atomic_path)."""
    if check_format(format) == "parquet":
        if schema is not None and metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        return ParquetWriter(path, schema, replace)
    return JsonlWriter(path, compress=format == "jsonl.gz", replace=replace)


class ScoredWriter:
    """Writes scored records, a chunk at a time, into one output (open_output) that appears
    (atomically) when the writer is closed without an error (or to standard output, path "-").
    `fields` are the new members in order: the score field, then the extra fields; `input_schema`,
    for Parquet, is the corpus's (corpus_schema), which every row must fit exactly; `metadata`, the
    Parquet file's key-value metadata (the provenance block: lqs.provenance.parquet_metadata)."""

    def __init__(self, path: str | Path, format: str, fields: Sequence[str],
                 input_schema: pa.Schema | None = None, metadata: Mapping[bytes, bytes] | None = None,
                 replace: bool = True):
        self.path, self.format, self.fields = Path(path), check_format(format), list(fields)
        self.rows = 0
        schema = None if input_schema is None else pa.schema(list(input_schema) + self._new_columns(input_schema))
        self.output = open_output(path, format, schema, metadata, replace)

    def __enter__(self) -> ScoredWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.output.__exit__(kind, value, traceback)

    def write(self, records: Sequence[corpus.Record], columns: Mapping[str, Sequence[Any]]) -> None:
        """One chunk: `columns` maps each of `fields` to one value per record."""
        if list(columns) != self.fields:
            raise ValueError(f"columns {list(columns)} are not the writer's fields {self.fields}")
        if records:
            self.output.write(self.output.encode(records, columns))
        self.rows += len(records)

    def _new_columns(self, input_schema: pa.Schema) -> list[pa.Field]:
        clash = [f for f in self.fields if f in input_schema.names]
        if clash:
            raise ValueError(f"the corpus already has a column {clash[0]!r}; choose another "
                             f"{corpus.setting('score_field' if clash[0] == self.fields[0] else 'extra_fields')}")
        return [pa.field(self.fields[0], pa.float64())] + [pa.field(f, EXTRA_FIELDS[f]) for f in self.fields[1:]]


def read_lines(path: str | Path) -> Iterator[bytes]:
    """The lines of a JSONL or gzipped JSONL output file, as bytes with their line ends."""
    with (gzip.open if is_gzip(path) else open)(path, "rb") as f:
        yield from f
