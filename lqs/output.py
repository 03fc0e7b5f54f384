"""Writing scored documents: JSONL, gzipped JSONL or Parquet (`output.format`), one file or one
part per shard (`output.layout`), with optional per-document fields (`output.extra_fields`).

A JSONL record is written as its input line, byte for byte, with the new members inserted before
its final `}`; a Parquet row as one line of JSON (corpus.PARQUET_TO_JSON). A Parquet output keeps
the input's columns and types (Parquet input) and appends the new columns; from JSONL input the
columns are those Arrow infers from the first records a writer sees, and a later record that does
not fit them is an error naming its file and line.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from lqs import corpus, sources
from lqs.io import atomic_path

FORMATS = {"jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz", "parquet": ".parquet"}
# The per-document fields output.extra_fields may add, and their Parquet types.
EXTRA_FIELDS = {"n_tokens": pa.int64(), "n_windows": pa.int64(), "truncated": pa.bool_()}


def default_format(corpus_files: Sequence[str]) -> str:
    """Parquet for a corpus of Parquet files, JSONL otherwise."""
    return "parquet" if corpus_files and all(corpus.is_parquet(f) for f in corpus_files) else "jsonl"


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"output.format must be one of {', '.join(FORMATS)}, not {name!r}")
    return name


def part_name(shard: int, format: str) -> str:
    """The file of one shard's scored documents in a per_shard output directory."""
    return f"part-{shard}{FORMATS[check_format(format)]}"


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
                             f"{'output.score_field' if field not in EXTRA_FIELDS else 'output.extra_fields'}")
    if record.raw is None:
        return corpus.json_line({**record.fields, **values}) + "\n"
    end = record.raw.rindex("}")
    return record.raw[:end] + json_members(values) + record.raw[end:] + (record.eol or "\n")


def parquet_input_schema(paths: Sequence[str]) -> pa.Schema | None:
    """The one schema of a corpus of Parquet files (None if any file is JSONL): the files'
    schemas unified (a column missing from one file is null there); schema-level metadata is
    dropped, as pandas' and datasets' describe the input's columns, not the output's."""
    if not paths or not all(corpus.is_parquet(p) for p in paths):
        return None
    schemas = []
    for path in paths:
        with sources.open_binary(path, seekable=True) as f:
            schemas.append(pq.read_schema(f))
    try:
        return pa.unify_schemas(schemas).remove_metadata()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"the corpus's Parquet files have columns of different types ({e}); a Parquet output "
                         "needs one schema: use output.format jsonl, or make the files agree") from None


class ScoredWriter:
    """Writes scored records, a chunk at a time, into one file that appears (atomically) when the
    writer is closed without an error (or to standard output, path "-"). `fields` are the new members in order: the score field, then
    the extra fields; `input_schema` is the corpus's Parquet schema (see parquet_input_schema)."""

    def __init__(self, path: str | Path, format: str, fields: Sequence[str],
                 input_schema: pa.Schema | None = None):
        self.path, self.format, self.fields = Path(path), check_format(format), list(fields)
        self.input_schema = input_schema
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._file: IO[bytes] | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        if str(path) == "-":  # standard output (lqs score --out -): a stream, so JSONL only
            if self.format == "parquet":
                raise ValueError("a Parquet output cannot be streamed to standard output: give a file, or "
                                 "--format jsonl or jsonl.gz")
            self._file = sys.stdout.buffer
        else:
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            if self.format != "parquet":
                self._file = self._stack.enter_context(open(self._tmp, "wb"))
        if self._file is not None:
            if self.format == "jsonl.gz":  # mtime 0, no file name: the same documents give the same bytes
                self._file = self._stack.enter_context(
                    gzip.GzipFile(filename="", mode="wb", fileobj=self._file, compresslevel=6, mtime=0))

    def __enter__(self) -> ScoredWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and self.format == "parquet" and self._parquet is None:
            self._open_parquet(self.input_schema or pa.schema([]))  # no rows: the columns still
        if self._parquet is not None:
            self._parquet.close()
        self._stack.__exit__(kind, value, traceback)  # renames the file into place only on success

    def write(self, records: Sequence[corpus.Record], columns: Mapping[str, Sequence[Any]]) -> None:
        """One chunk: `columns` maps each of `fields` to one value per record."""
        if list(columns) != self.fields:
            raise ValueError(f"columns {list(columns)} are not the writer's fields {self.fields}")
        if self._file is not None:
            values = list(zip(*columns.values()))
            self._file.write("".join(output_line(r, dict(zip(self.fields, v)))
                                     for r, v in zip(records, values)).encode("utf-8"))
        elif records:
            self._write_parquet(records, columns)
        if self._file is not None and str(self.path) == "-":
            self._file.flush()  # the next program in the pipe gets each chunk as it is scored
        self.rows += len(records)

    def _open_parquet(self, input_schema: pa.Schema) -> None:
        clash = [f for f in self.fields if f in input_schema.names]
        if clash:
            raise ValueError(f"the corpus already has a column {clash[0]!r}; choose another "
                             f"{'output.score_field' if clash[0] == self.fields[0] else 'output.extra_fields'}")
        new = [pa.field(self.fields[0], pa.float64())] + [pa.field(f, EXTRA_FIELDS[f]) for f in self.fields[1:]]
        self.input_schema = input_schema
        self._schema = pa.schema(list(input_schema) + new)
        self._parquet = pq.ParquetWriter(self._tmp, self._schema)

    def _write_parquet(self, records: Sequence[corpus.Record], columns: Mapping[str, Sequence[Any]]) -> None:
        if self._parquet is None:
            self._open_parquet(self.input_schema or self._inferred(records))
        input_schema = self.input_schema
        rows = [r.fields for r in records]
        for r in records:
            unknown = set(r.fields) - set(input_schema.names)
            if unknown:
                raise ValueError(f"{r.where}: field {sorted(unknown)[0]!r} is not one of the Parquet output's "
                                 f"columns, which were inferred from the first records ({', '.join(input_schema.names)})"
                                 "; use output.format jsonl, which keeps every record as it is")
        try:
            table = pa.Table.from_pylist(rows, schema=input_schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            raise self._misfit(records, input_schema, e) from None
        for name in self.fields:
            table = table.append_column(self._schema.field(name), pa.array(columns[name], self._schema.field(name).type))
        self._parquet.write_table(table)

    @staticmethod
    def _inferred(records: Sequence[corpus.Record]) -> pa.Schema:
        try:
            return pa.Table.from_pylist([r.fields for r in records]).schema
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            raise ValueError(f"{records[0].where} and the {len(records) - 1} records after it have no common "
                             f"Parquet columns ({e}); use output.format jsonl") from None

    @staticmethod
    def _misfit(records: Sequence[corpus.Record], schema: pa.Schema, error: Exception) -> ValueError:
        for r in records:
            try:
                pa.Table.from_pylist([r.fields], schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
                return ValueError(f"{r.where}: the record does not fit the Parquet output's columns ({e}); use "
                                  "output.format jsonl, which keeps every record as it is")
        return ValueError(f"{records[0].where}…: the records do not fit the Parquet output's columns ({error})")


def read_lines(path: str | Path) -> Iterator[bytes]:
    """The lines of a JSONL or gzipped JSONL output file, as bytes with their line ends."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        yield from f
