"""Selection and ordering of the training set (docs/maths.md#selection-and-ordering), for stage
`select_order` (lqs.stages.select_order): scored output -> the training set, selected and in
training order.

Memory does not grow with the text: the scores come from gather_scores' index of the scored
output (no record is parsed); a scan of scored.jsonl for newlines keeps each line's byte offset
and length (numpy arrays), and the chosen lines are copied byte for byte by offset.
Ties in score are broken by input order, earlier first, in every selection and ordering.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lqs import output
from lqs.io import parquet_batches, parquet_file
from lqs.splits import corpus_ids_of_shards, with_corpus_ids

ORDER_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("tokens", pa.int64())])
_CHUNK = 1 << 22


def line_spans(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte offset and length of every line (its newline included) of a file."""
    ends, size, last = [np.zeros(0, np.int64)], 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            ends.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n")) + size + 1)
            size, last = size + len(chunk), chunk[-1:]
    if last != b"\n":
        ends.append(np.array([size]))  # a last line without a newline
    lengths = np.concatenate(ends).astype(np.int64, copy=False)
    starts = np.zeros_like(lengths)
    starts[1:] = lengths[:-1]
    lengths -= starts  # in place: two arrays of a line's size, not three
    return starts, lengths


def _summed_runs(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct id once, ascending, with the sum of its counts (integers, exact). Windows come
    in document order (a shard's, and shards' in corpus order), so equal ids are adjacent and one
    linear pass sums them; ids out of order are sorted first."""
    if len(ids) == 0:
        return ids, counts
    if (ids[1:] < ids[:-1]).any():
        by_id = np.argsort(ids, kind="stable")
        ids, counts = ids[by_id], counts[by_id]
    runs = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    return ids[runs], np.add.reduceat(counts, runs)


def _shard_document_tokens(path: str, file_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, lengths = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    shard = parquet_file(path)
    for i in range(shard.num_row_groups):  # one at a time: iter_batches reads far ahead
        group = with_corpus_ids(shard.read_row_group(i, columns=["doc_id", "input_ids"]), file_indices)
        # memory holds documents, not windows
        doc_ids, tokens = _summed_runs(group.column(0).to_numpy(),
                                       pc.list_value_length(group.column(1)).to_numpy().astype(np.int64))
        ids.append(doc_ids)
        lengths.append(tokens)
    return np.concatenate(ids), np.concatenate(lengths)  # a document across row groups: merged by the caller


def document_tokens(shard_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(the corpus's doc ids, ascending (input order); tokens per document = the sum of its windows'
    lengths)."""
    per_shard = [_shard_document_tokens(p, i) for p, i in zip(shard_paths, corpus_ids_of_shards(shard_paths))]
    doc_ids = np.concatenate([ids for ids, _ in per_shard] + [np.zeros(0, np.int64)])
    tokens = np.concatenate([t for _, t in per_shard] + [np.zeros(0, np.int64)])
    del per_shard
    return _summed_runs(doc_ids, tokens)  # a document across row groups or shards counts once


def keep_count(ratio: float, n: int) -> int:
    """floor(ratio * n), with ratio read as the decimal written in the config (0.29 * 100 is
    28.999… in binary floating point)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"selection.ratio must be in (0, 1], got {ratio}")
    k = math.floor(Fraction(repr(float(ratio))) * n)
    if k == 0:
        raise ValueError(f"selection.ratio {ratio} keeps floor({ratio} * {n}) = 0 of the {n} scored "
                         "documents; raise selection.ratio")
    return k


def select(scores: np.ndarray, *, method: str = "top", ratio: float = 1.0, threshold: float | None = None,
           temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """Indices of the selected documents (ascending, i.e. input order) and the cut-off: the lowest
    selected score (top), the threshold (threshold), the lowest selected noisy key (gumbel)."""
    n = len(scores)
    if n == 0:
        raise ValueError("no scored documents: nothing to select")
    if method == "threshold":
        if threshold is None:
            raise ValueError("selection.method 'threshold' needs selection.threshold (a number); it is null")
        chosen = np.flatnonzero(scores > threshold)
        if len(chosen) == 0:
            raise ValueError(f"no document scores above selection.threshold {threshold} "
                             f"(the highest score is {scores.max()}); lower selection.threshold")
        return chosen, float(threshold)
    if method == "top":
        keys = scores
    elif method == "gumbel":
        if not temperature > 0:
            raise ValueError(f"selection.temperature must be > 0, got {temperature}")
        keys = scores + temperature * np.random.default_rng(seed).gumbel(size=n)
    else:
        raise ValueError(f"selection.method must be top, threshold or gumbel, got {method!r}")
    chosen = np.argsort(-keys, kind="stable")[:keep_count(ratio, n)]  # stable: ties by input order
    return np.sort(chosen), float(keys[chosen].min())


def folding(n: int, folds: int) -> np.ndarray:
    """DELT eq. 10 on positions 0..n-1 of a sorted list s: s[0::L] + s[1::L] + … + s[L-1::L]."""
    return np.argsort(np.arange(n) % folds, kind="stable")


def order(scores: np.ndarray, *, method: str = "folding", folds: int = 3, seed: int = 0) -> np.ndarray:
    """The training order: a permutation of positions into `scores` (given in input order)."""
    ascending = np.argsort(scores, kind="stable")  # ties in input order
    if method == "folding":
        if folds < 1:
            raise ValueError(f"ordering.folds must be >= 1, got {folds}")
        return ascending[folding(len(scores), folds)]
    if method == "ascending":
        return ascending
    if method == "descending":
        return np.argsort(-scores, kind="stable")
    if method == "shuffle":
        return np.random.default_rng(seed).permutation(len(scores))
    if method == "input":
        return np.arange(len(scores))
    raise ValueError(f"ordering.method must be folding, ascending, descending, shuffle or input, got {method!r}")


SELECT_MEMORY = 1 << 30  # bytes of records held at once when copying from .jsonl.gz or Parquet


def _windows(positions: np.ndarray, bytes_per_record: float) -> Iterator[np.ndarray]:
    """Consecutive pieces of the training order, each about SELECT_MEMORY bytes of records."""
    step = max(1, int(SELECT_MEMORY // max(bytes_per_record, 1.0)))
    for start in range(0, len(positions), step):
        yield positions[start:start + step]


def _slots(window: np.ndarray, count: int) -> np.ndarray:
    """For each record in storage order, its place in `window`, or -1."""
    slot = np.full(count, -1, np.int64)
    slot[window] = np.arange(len(window))
    return slot


class ScoredRecords:
    """The scored output's records in storage order (files in order, lines or rows in order), in
    one format (output.format): `take` yields the records at some positions, in that order, as
    chunks of that format (lqs.output.OutputWriter.write), unparsed. `schema`: a Parquet output's."""
    format: str
    schema: pa.Schema | None = None

    def __init__(self, paths: Sequence[str], count: int):
        self.paths, self.count = list(paths), count

    def stale(self) -> RuntimeError:
        where = (self.paths[0] if len(self.paths) == 1
                 else f"the {len(self.paths)} parts of {os.path.dirname(self.paths[0]) or '.'}")
        return RuntimeError(f"{where} does not hold the {self.count} documents gather_scores indexed; "
                            "rerun gather_scores")

    def take(self, positions: np.ndarray) -> Iterator:
        raise NotImplementedError


class JsonlRecords(ScoredRecords):
    """JSONL: each line's byte offset and length (a scan for newlines; no line is parsed) and file,
    so that a line is copied by its offset, one at a time."""
    format = "jsonl"

    def __init__(self, paths: Sequence[str], count: int):
        super().__init__(paths, count)
        spans = [line_spans(p) for p in paths]
        self.starts = np.concatenate([a for a, _ in spans] + [np.zeros(0, np.int64)])
        if len(self.starts) != count:
            raise self.stale()
        self.lengths = np.concatenate([n for _, n in spans] + [np.zeros(0, np.int64)])
        self.file_ends = np.cumsum([len(a) for a, _ in spans])  # each file's lines end before this position

    def files(self, positions: np.ndarray) -> np.ndarray:
        """The index of the file each position's line is in."""
        return np.searchsorted(self.file_ends, positions, side="right")

    def take(self, positions: np.ndarray) -> Iterator[bytes]:
        fds = [os.open(p, os.O_RDONLY) for p in self.paths]
        try:
            for f, start, length in zip(self.files(positions).tolist(), self.starts[positions].tolist(),
                                        self.lengths[positions].tolist()):
                line = os.pread(fds[f], length, start)
                yield line if line.endswith(b"\n") else line + b"\n"  # a last line without newline
        finally:
            for fd in fds:
                os.close(fd)


class GzipJsonlRecords(ScoredRecords):
    """Gzipped JSONL, which cannot be read at an offset: each piece of the order (SELECT_MEMORY
    bytes) is gathered in one pass over the files, lines counted as they are read."""
    format = "jsonl.gz"

    def __init__(self, paths: Sequence[str], count: int):
        super().__init__(paths, count)
        self.bytes_per_record = 4 * sum(map(os.path.getsize, paths)) / max(count, 1)  # gzip's usual ratio

    def take(self, positions: np.ndarray) -> Iterator[bytes]:
        n = self.count
        for window in _windows(positions, self.bytes_per_record):
            slot = _slots(window, n)
            lines: list[bytes] = [b""] * len(window)
            seen = 0
            for line in itertools.chain.from_iterable(output.read_lines(p) for p in self.paths):
                if seen < n and slot[seen] >= 0:
                    lines[slot[seen]] = line if line.endswith(b"\n") else line + b"\n"
                seen += 1
            if seen != n:
                raise RuntimeError(f"{self.paths[0]}: {seen} lines, but gather_scores indexed {n} documents; "
                                   "rerun gather_scores")
            yield b"".join(lines)


class ParquetRecords(ScoredRecords):
    """Parquet: each piece of the order (SELECT_MEMORY bytes) gathered in one pass over the files'
    batches, as a table of the output's schema (the first file's: every part has the same)."""
    format = "parquet"

    def __init__(self, paths: Sequence[str], count: int):
        super().__init__(paths, count)
        files = list(map(parquet_file, paths))
        if sum(f.metadata.num_rows for f in files) != count:
            raise self.stale()
        size = sum(f.metadata.row_group(i).total_byte_size for f in files for i in range(f.num_row_groups))
        self.bytes_per_record = size / max(count, 1)
        self.schema = files[0].schema_arrow

    def take(self, positions: np.ndarray) -> Iterator[pa.Table]:
        for window in _windows(positions, self.bytes_per_record):
            slot = _slots(window, self.count)
            pieces, slots, offset = [], [], 0
            for path in self.paths:
                for batch in parquet_batches(path):
                    taken = np.flatnonzero(slot[offset:offset + batch.num_rows] >= 0)
                    if len(taken):
                        pieces.append(pa.Table.from_batches([batch.take(pa.array(taken))]))
                        slots.append(slot[offset + taken])
                    offset += batch.num_rows
            table = pa.concat_tables(pieces).cast(self.schema) if pieces else self.schema.empty_table()
            yield table.take(pa.array(np.argsort(np.concatenate(slots)))) if pieces else table


def scored_records(paths: Sequence[str], format: str, count: int) -> ScoredRecords:
    """The scored output's files in `format`, `count` documents long (gather_scores' index says),
    ready for copying records by position: the one place the format picks the reader. A count
    that differs is an error."""
    readers = {r.format: r for r in (JsonlRecords, GzipJsonlRecords, ParquetRecords)}
    return readers[output.check_format(format)](paths, count)


def write_selected(records: ScoredRecords, positions: np.ndarray, out: str,
                   metadata: Mapping[bytes, bytes] | None = None) -> None:
    """The records at `positions` (storage order indices), in that order, into `out` in the
    records' format, through the writer the scored output was written with (lqs.output.open_output):
    a Parquet training set gets the scored output's schema, `metadata` merged into its key-value
    metadata, replacing its keys (the provenance block: lqs.provenance.parquet_metadata)."""
    with output.open_output(out, records.format, records.schema, metadata) as writer:
        for chunk in records.take(positions):
            writer.write(chunk)
