"""Shards as input splits, planned at DAG build from metadata alone (docs/stages.md#shards).

A split is a part of one corpus file: the whole file, a byte range of an uncompressed JSONL file
(a record belongs to the split its line starts in) or a range of a Parquet file's row groups.
A gzip file is always one split. A shard is a run of consecutive splits, in corpus order; each
corpus byte belongs to exactly one shard, and a shard job opens only its own splits.

How files become shards (`corpus.num_shards`, `corpus.shard_size`):

- `num_shards: N`: N shards of equal bytes. The corpus is laid end to end and cut at every
  N-th of its size; a file across a cut is split there (a gzip file, a Parquet row group or a
  JSONL line goes to the shard it starts in; a piece of a Parquet file holds at least
  FOOTER_SHARE times its footer). A shard left with nothing is not planned. The
  shards are named 0 … N-1; adding or removing a file moves the cuts after it.
- `shard_size: S`: shards of S bytes on average whose boundaries depend on the files themselves
  (content-defined, as rsync's or restic's chunks do): a split starts a new shard when a hash of
  its name falls below its share of S (its bytes over S), and a file larger than S is cut into
  pieces of at most S, each starting a shard. A shard is named by a hash of its first split, so
  adding, removing or editing one file changes the shard that holds it (and, when the file itself
  starts or stops starting a shard, the one before it), and no other shard's name, files or
  outputs. The price: shard sizes vary (about exponentially around S for small files).
- `num_shards: per_file`: each file one shard, never cut, named by a hash of the file's name.

Documents are named by their file and their position in it: a JSONL line by the byte offset
its line starts at (in the decompressed stream of a .gz file), a Parquet row by its index in the
file. A shard's files hold doc ids local to the shard (`shard_doc_id`: the index of the file
among the shard's files, then the position); stages that read several shards make them the
corpus's (`corpus_doc_ids`: the file's index in the corpus), which keeps them in input order.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lqs.formats import is_cuttable, is_parquet

log = logging.getLogger(__name__)

FILE_BITS = 40  # doc id = file index << FILE_BITS | position in the file (up to 1 TiB or 2**40 rows)
POSITION_MASK = (1 << FILE_BITS) - 1
FILES_METADATA = b"lqs.files"  # a tokenized shard's Parquet metadata: its files, as a JSON list
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: int | str) -> int:
    """Bytes of a size setting: an integer, or a string such as "512MB" or "1.5GiB"."""
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size (an integer of bytes, or a number with KB, MB, GB, MiB, ...)")
    return int(float(match[1]) * _UNITS[(match[2] or "b").lower()])


FRACTION = 1 << 20  # a file not there at DAG build (the workflow writes it) is cut in 2**20ths of its bytes


@dataclass(frozen=True)
class Split:
    """Part of one corpus file: `start`/`stop` are bytes of an uncompressed JSONL file or row
    group indices of a Parquet file; stop None: to the end of the file. With `parts` (a file
    the workflow writes, whose size the plan cannot know), they are parts of its bytes, each
    1/`parts` of them, made bytes (or the row groups starting in them) when it is read (`resolved`)."""

    path: str
    start: int = 0
    stop: int | None = None
    parts: int = 0

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop is None

    def as_json(self) -> str | list:
        if self.whole:
            return self.path
        return [self.path, self.start, self.stop, *([self.parts] if self.parts else [])]

    @classmethod
    def from_json(cls, value: str | Sequence) -> Split:
        if isinstance(value, str):
            return cls(value)
        path, start, stop, *parts = value
        return cls(str(path), int(start), None if stop is None else int(stop), int(parts[0]) if parts else 0)

    def resolved(self) -> Split:
        """The split in bytes (JSONL) or row groups (Parquet), reading the file's size (and footer)."""
        if not self.parts or self.whole:
            return Split(self.path, self.start, self.stop)
        from lqs import sources

        size = sources.file_size(self.path)
        first = self.start * size // self.parts
        last = None if self.stop is None else self.stop * size // self.parts
        if not is_parquet(self.path):
            return Split(self.path, first, last)
        starts = np.asarray(row_groups(self.path).starts)
        begin = int(np.searchsorted(starts, first))
        end = None if last is None else int(np.searchsorted(starts, last))
        return Split(self.path, begin, None if end == len(starts) else end)

    def __str__(self) -> str:
        if self.whole:
            return self.path
        unit = "row groups" if is_parquet(self.path) else "bytes"
        if self.parts:
            unit = f"1/{self.parts}ths of its bytes"
        return f"{self.path} ({unit} {self.start} to {'the end' if self.stop is None else self.stop})"


@dataclass(frozen=True)
class Shard:
    key: str  # the wildcard: an index (num_shards: N) or a hash of its first split
    splits: tuple[Split, ...]
    size: int  # the planned bytes

    @property
    def files(self) -> list[str]:
        """The shard's files, in order, each once."""
        return list(dict.fromkeys(s.path for s in self.splits))


def dumps_splits(splits: Iterable[Split]) -> str:
    """Splits as the corpus plan holds them: a JSON list (a whole file is its path)."""
    return json.dumps([s.as_json() for s in splits], separators=(",", ":"))


# ----------------------------------------------------------------------------------------------
# planning


# A piece of a cut Parquet file holds at least this many times the file's footer: each job reads
# the whole footer of a file it reads part of, which holds every row group's statistics (up to
# kilobytes of text each), so that footers add at most 1/20 to the bytes read.
FOOTER_SHARE = 20


@dataclass(frozen=True)
class RowGroups:
    """A Parquet file's row groups: each one's first byte and bytes (for cutting) and rows; and
    the bytes of its footer."""

    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    rows: tuple[int, ...]
    footer: int = 0


def row_groups(path: str) -> RowGroups:
    """The row groups of a Parquet file, from its footer alone (local path or URL)."""
    import pyarrow.parquet as pq

    from lqs import sources

    with sources.open_binary(path, seekable=True) as f:
        metadata = pq.ParquetFile(f).metadata
    starts, sizes, rows = [], [], []
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        columns = [group.column(c) for c in range(group.num_columns)]
        first = min((c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset) for c in columns) \
            if columns else 0
        starts.append(first)
        sizes.append(sum(c.total_compressed_size for c in columns))
        rows.append(group.num_rows)
    return RowGroups(tuple(starts), tuple(sizes), tuple(rows), metadata.serialized_size + 8)  # + length, magic


def _key(*parts: object) -> str:
    return hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=5).hexdigest()


def _unit_hash(split: Split) -> float:
    """A split's hash in [0, 1): the content-defined boundary test's draw."""
    digest = hashlib.blake2b(f"{split.path}\0{split.start}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def _pieces(path: str, size: float, cut_at: Sequence[float], groups: Callable[[str], RowGroups],
            unknown: bool = False) -> list[tuple[Split, float]]:
    """`path` cut at the file offsets `cut_at` (ascending, inside the file): (split, bytes) pieces.
    JSONL at the offsets themselves; Parquet between row groups, each group to the piece its
    first byte falls in (pieces left without a group are dropped), a piece of fewer than
    FOOTER_SHARE times the footer's bytes joined to the next one (the last, to the one before)."""
    if not cut_at:
        return [(Split(path), size)]
    bounds = [0, *cut_at, size]
    if unknown:  # the workflow writes the file: cut it in parts of its size, made bytes when read
        parts = [round(b / size * FRACTION) for b in bounds]
        return [(Split(path, a, b if b < FRACTION else None, FRACTION), (b - a) * size / FRACTION)
                for a, b in zip(parts, parts[1:]) if b > a]
    if not is_parquet(path):
        return [(Split(path, a, b if b < size else None), b - a) for a, b in zip(bounds, bounds[1:]) if b > a]
    try:
        info = groups(path)
    except Exception:  # not Parquet after all, or damaged: one split, which its job reports (or rejects)
        return [(Split(path), size)]
    piece_of = np.searchsorted(np.asarray(cut_at), np.asarray(info.starts, dtype=np.int64), side="right")
    out = []
    for piece in np.unique(piece_of):
        members = np.flatnonzero(piece_of == piece)
        first, last = int(members[0]), int(members[-1]) + 1
        stop = None if last == len(info.starts) else last
        out.append((Split(path, first, stop), int(sum(info.sizes[first:last]))))
    out = _joined(out, FOOTER_SHARE * info.footer)
    if len(out) == 1:
        return [(Split(path), size)]
    return out


def _joined(pieces: list[tuple[Split, int]], least: int) -> list[tuple[Split, int]]:
    """Consecutive row-group pieces of one file joined until each holds at least `least` bytes."""
    out: list[tuple[Split, int]] = []
    for split, size in pieces:
        if out and out[-1][1] < least:
            before, before_size = out.pop()
            split, size = Split(split.path, before.start, split.stop), before_size + size
        out.append((split, size))
    if len(out) > 1 and out[-1][1] < least:
        (before, before_size), (last, size) = out[-2:]
        out[-2:] = [(Split(last.path, before.start, last.stop), before_size + size)]
    return out


def plan_shards(files: Sequence[str], sizes: Sequence[int], num_shards: int | str = 1, shard_size: int | None = None,
                groups: Callable[[str], RowGroups] = row_groups) -> list[Shard]:
    """The shards of the corpus `files` (in order) of `sizes` bytes: see the module docstring.
    `groups` reads a Parquet file's row groups, called only for a file that is cut. A size None: a
    file not there yet (the workflow writes it), weighed as the mean of the others (or 1) and cut
    in parts of its size."""
    known = [s for s in sizes if s is not None]
    unknown = {path for path, s in zip(files, sizes) if s is None}
    weight = sum(known) / len(known) if known and sum(known) else 1.0
    sizes = [weight if s is None else s for s in sizes]
    groups = functools.lru_cache(maxsize=None)(groups)
    if shard_size is not None:
        return _by_size(files, sizes, shard_size, groups, unknown)
    if num_shards == "per_file":
        return [Shard(_key(path), (Split(path),), round(size)) for path, size in zip(files, sizes)]
    return _equal(files, sizes, int(num_shards), groups, unknown)


SHORTEST_RECORD = len('{"text":"x"}\n')  # bytes: a shard of fewer can hold no JSONL record


def _equal(files: Sequence[str], sizes: Sequence[float], n: int, groups, unknown: set[str]) -> list[Shard]:
    total, requested = sum(sizes), n
    if not unknown:  # no shard smaller than a record
        n = max(1, min(n, int(total // SHORTEST_RECORD)))
    width = total / n if total > 0 else 1.0
    bounds = [k * width for k in range(1, n)]  # shard k starts at bounds[k - 1]
    members: list[list[tuple[Split, int]]] = [[] for _ in range(n)]
    offset = 0
    for path, size in zip(files, sizes):
        made_for, cuts = [], []  # the shard each cut starts, and the cut in the file
        if is_cuttable(path) and size:
            first, last = math.floor(offset / width) + 1, math.ceil((offset + size) / width)
            for k in range(first, min(last, n)):
                cut = k * width - offset if path in unknown else round(k * width) - offset
                if 0 < cut < size and (not cuts or cut > cuts[-1]):
                    made_for.append(k)
                    cuts.append(cut)
        pieces = _pieces(path, size, cuts, groups, path in unknown)
        for i, (split, piece) in enumerate(pieces):
            if is_parquet(path) and not split.whole and not split.parts:  # by the first byte of its first group
                shard = bisect.bisect_right(bounds, offset + groups(path).starts[split.start])
            elif i > 0 and len(pieces) == len(cuts) + 1:  # a byte range begins at its cut
                shard = made_for[i - 1]
            else:
                shard = bisect.bisect_right(bounds, offset)
            members[shard].append((split, piece))
        offset += size
    shards = [Shard(str(k), tuple(s for s, _ in m), round(sum(b for _, b in m))) for k, m in enumerate(members) if m]
    if len(shards) < requested:
        log.warning("corpus.num_shards: %d, but the corpus's %d files can be cut into only %d non-empty shards (a gzip "
                    "file, a Parquet row group and a JSONL line each go to one shard, and a piece of a Parquet file "
                    "holds at least %d times its footer); planning %d",
                    requested, len(files), len(shards), FOOTER_SHARE, len(shards))
    return shards


def _by_size(files: Sequence[str], sizes: Sequence[float], target: int, groups, unknown: set[str]) -> list[Shard]:
    units: list[tuple[Split, float]] = []
    for path, size in zip(files, sizes):
        cuts = []
        if is_cuttable(path) and size > target and path not in unknown:
            pieces = math.ceil(size / target)
            cuts = [size * k // pieces for k in range(1, pieces)]
        units.extend(_pieces(path, size, cuts, groups))
    # A boundary before a split depends on that split alone (a hash of its name under its share of
    # the target), never on what came before it: one file's change moves no other boundary.
    shards: list[list[tuple[Split, int]]] = []
    for split, size in units:
        if not shards or _unit_hash(split) < size / target:
            shards.append([])
        shards[-1].append((split, size))
    return [Shard(_key(m[0][0].path, m[0][0].start), tuple(s for s, _ in m), round(sum(b for _, b in m)))
            for m in shards]


def local_state(files: Sequence[str]) -> str:
    """A digest of the local files' names, sizes and modification times: in the params of a job that
    reads the whole corpus, in place of every file as an input (which costs Snakemake's planning
    time per file and per job that waits on the job's output)."""
    state = hashlib.sha256()
    for path in files:
        try:
            stat = os.stat(path)
            state.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:  # a URL, or a file not there yet (the workflow writes it)
            state.update(f"{path}\n".encode())
    return state.hexdigest()


def file_sizes(files: Sequence[str], listed: Mapping[str, int | None]) -> list[int | None]:
    """Each file's bytes: the listing's, else the local file's (None for a file not there yet)."""
    sizes = []
    for path in files:
        size = listed.get(path)
        if size is None:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = None
        sizes.append(size)
    return sizes


# ----------------------------------------------------------------------------------------------
# doc ids


def shard_doc_id(file_index: int, position: int) -> int:
    if position > POSITION_MASK:
        raise ValueError(f"position {position} is past the 2**{FILE_BITS} a doc id holds")
    return file_index << FILE_BITS | position


def corpus_file_indices(shard_files: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """For shards in corpus order, given each one's files: each shard's files' indices in the
    corpus (a file cut across shards continues from one shard into the next)."""
    out, count, last = [], 0, None
    for files in shard_files:
        indices = []
        for i, path in enumerate(files):
            if not (i == 0 and path == last):
                count += 1
            indices.append(count - 1)
        if files:
            last = files[-1]
        out.append(np.asarray(indices, dtype=np.int64))
    return out


def corpus_doc_ids(local_ids: np.ndarray, file_indices: np.ndarray) -> np.ndarray:
    """A shard's local doc ids as the corpus's: its file's index in the shard replaced by the file's
    in the corpus (corpus_file_indices)."""
    local_ids = np.asarray(local_ids, dtype=np.int64)
    if len(local_ids) == 0:
        return local_ids
    return (file_indices[local_ids >> FILE_BITS] << FILE_BITS) | (local_ids & POSITION_MASK)


def files_metadata(files: Sequence[str]) -> dict[bytes, bytes]:
    return {FILES_METADATA: json.dumps(list(files)).encode()}


def shard_files(path: str) -> list[str]:
    """The files of a tokenized shard, from its metadata."""
    from lqs.io import parquet_file

    metadata = parquet_file(path).schema_arrow.metadata or {}
    if FILES_METADATA not in metadata:
        raise RuntimeError(f"{path} does not list its corpus files (an older lqs wrote it): rerun `snakemake "
                           "--forcerun tokenize_shard` (with your usual targets and options) to tokenize and score the "
                           "corpus anew")
    return json.loads(metadata[FILES_METADATA])


def corpus_ids_of_shards(shard_paths: Sequence[str]) -> list[np.ndarray]:
    """corpus_file_indices of tokenized shards, from their metadata."""
    return corpus_file_indices([shard_files(p) for p in shard_paths])


# ----------------------------------------------------------------------------------------------
# the corpus plan: what the workflow's jobs read, written once at DAG build

PLAN_ENV = "LQS_CORPUS_PLAN"  # the plan file's path, which every job inherits from the workflow


def splits_sha256(splits: Iterable[Split]) -> str:
    return hashlib.sha256(dumps_splits(splits).encode()).hexdigest()


@dataclass(frozen=True)
class CorpusPlan:
    """The corpus as the workflow reads it: its files in order with the versions of the URLs no
    commit pins, and its shards. Written to a file named by its own digest (`write`), which the
    jobs read: a shard's command line stays short whatever the corpus, and each job checks that
    the shard it reads is the one its params name (`splits_sha256`)."""

    files: tuple[str, ...]
    versions: Mapping[str, str]
    shards: tuple[Shard, ...]

    def as_json(self) -> dict:
        return {"files": list(self.files), "versions": dict(self.versions),
                "shards": [{"key": s.key, "size": s.size, "splits": [x.as_json() for x in s.splits]}
                           for s in self.shards]}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()

    def shard(self, key: str) -> Shard:
        for shard in self.shards:
            if shard.key == key:
                return shard
        raise KeyError(f"the corpus plan has no shard {key!r}")

    def path(self, directory: str) -> str:
        """Where the plan is written in `directory`: a file named by its digest."""
        return os.path.join(directory, f"{self.sha256[:16]}.json")

    def write(self, directory: str) -> str:
        """Writes the plan to `directory` (once: an existing file of its name holds it already)."""
        from lqs.io import write_json

        path = self.path(directory)
        if not os.path.exists(path):
            os.makedirs(directory, exist_ok=True)
            write_json(path, self.as_json())
        return path


def read_plan(path: str) -> CorpusPlan:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    shards = tuple(Shard(s["key"], tuple(Split.from_json(x) for x in s["splits"]), s["size"]) for s in data["shards"])
    return CorpusPlan(tuple(data["files"]), data["versions"], shards)


def planned_splits(plan_path: str, shard: str | None, sha256: str) -> list[Split]:
    """The splits a job reads: shard `shard`'s, or (None) every shard's in order; refused unless
    their digest is `sha256`, the one the job's params carry (the plan file is the DAG build's)."""
    plan = read_plan(plan_path)
    splits = [x for s in plan.shards for x in s.splits] if shard is None else list(plan.shard(shard).splits)
    if splits_sha256(splits) != sha256:
        raise RuntimeError(f"{plan_path}: the corpus plan's {'corpus' if shard is None else f'shard {shard}'} is not "
                           "the one this job was planned with; plan the workflow again (rerun snakemake)")
    return splits


def planned_shards(plan_path: str, sha256: str) -> list[Shard]:
    """Every shard of the plan, refused unless the digest of all their splits is `sha256`."""
    plan = read_plan(plan_path)
    if splits_sha256(x for s in plan.shards for x in s.splits) != sha256:
        raise RuntimeError(f"{plan_path}: the corpus plan is not the one this job was planned with; plan the "
                           "workflow again (rerun snakemake)")
    return list(plan.shards)


def build_plan(files: Sequence[str], versions: Mapping[str, str], sizes: Sequence[int], num_shards: int | str,
               shard_size: int | str | None) -> CorpusPlan:
    size = None if shard_size is None else parse_size(shard_size)
    shards = plan_shards(files, sizes, num_shards, size)
    return CorpusPlan(tuple(files), dict(versions), tuple(shards))


def with_corpus_ids(batch, file_indices: np.ndarray):
    """A tokenized shard's record batch (or table) with its doc_id column the corpus's."""
    import pyarrow as pa

    column = batch.schema.get_field_index("doc_id")
    ids = corpus_doc_ids(batch.column(column).to_numpy(), file_indices)
    return batch.set_column(column, "doc_id", pa.array(ids, pa.int64()))
