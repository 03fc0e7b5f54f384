"""The scorer's windows of a corpus shard (docs/stages.md#tokenize_scorer_shard): tokenized on a
CPU node by stage tokenize_scorer_shard, read by score_shard, which never tokenizes.

One row per window: `doc_id`, `window` (its index in the document), `input_ids` (the scorer
tokenizer's, special tokens included), and the document's `truncated` (inference.max_windows_per_doc
cut its windows), `fingerprint` (corpus.Record.fingerprint) and `source` (its "source" field when a
string, for the summary's per-source means). A row group holds the windows of consecutive accepted
documents (inference.chunk_docs of them), longest first (a stable sort, as
lqs.scorer.token_budget_batches orders them): a batch at a token budget is then a contiguous run of
rows, cut at read time by the budget the scoring device allows.

The file's metadata binds it to what made it: the tokenizer (`tokenizer_digest`) and max_length.
score_shard refuses windows made for another scorer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lqs.io import parquet_file
from lqs.tokenize import special_tokens

SCHEMA = pa.schema([
    ("doc_id", pa.int64()),
    ("window", pa.int32()),
    ("input_ids", pa.list_(pa.int32())),
    ("truncated", pa.bool_()),
    ("fingerprint", pa.int64()),
    ("source", pa.string()),
])
METADATA_KEY = b"lqs.scorer_windows"
# Text whose tokens depend on normalisation, pre-tokenisation, byte fallback and whitespace.
_PROBE = "Hello, World!  Ünïcödé — 12345 <b>tags</b>\tand\nnew lines. 日本語 🙂"


def tokenizer_digest(tokenizer) -> str:
    """SHA-256 of what decides a tokenizer's windows: its vocabulary, the special tokens it adds,
    its padding id and its ids for a probe text. Equal for a tokenizer and its saved copy."""
    prefix, suffix = special_tokens(tokenizer)
    facts = {"vocab": sorted(tokenizer.get_vocab().items()), "prefix": prefix, "suffix": suffix,
             "pad": tokenizer.pad_token_id, "probe": tokenizer(_PROBE, add_special_tokens=False)["input_ids"]}
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()


def metadata(tokenizer, max_length: int, max_windows_per_doc: int | None) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps({"tokenizer_sha256": tokenizer_digest(tokenizer), "max_length": max_length,
                                      "max_windows_per_doc": max_windows_per_doc}).encode()}


def chunk_table(doc_ids: Sequence[int], windows: Sequence[Sequence[Sequence[int]]], truncated: Sequence[bool],
                fingerprints: Sequence[int], sources: Sequence[str | None]) -> pa.Table:
    """One row group: the windows of these documents (in input order), longest first."""
    per_doc = np.array([len(w) for w in windows], np.int64)
    rows = np.repeat(np.arange(len(windows)), per_doc)
    flat = [ids for doc_windows in windows for ids in doc_windows]
    order = np.argsort(-np.array([len(ids) for ids in flat], np.int64), kind="stable")
    take = pa.array(order)
    table = pa.table({
        "doc_id": pa.array(np.asarray(doc_ids, np.int64)[rows]),
        "window": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in per_doc]) if len(flat)
                           else np.zeros(0, np.int32)),
        "input_ids": pa.array(flat, pa.list_(pa.int32())),
        "truncated": pa.array(np.asarray(truncated, bool)[rows]),
        "fingerprint": pa.array(np.asarray(fingerprints, np.int64)[rows]),
        "source": pa.array([sources[i] for i in rows], pa.string()),
    }, schema=SCHEMA)
    return table.take(take)


@dataclass
class Chunk:
    """A row group read back: its documents, ascending (`doc_ids`, and each one's `fingerprints`,
    `truncated`, `sources`), and its windows, longest first: `doc_index` (the position of each
    window's document in `doc_ids`), `lengths`, and their ids concatenated (`ids`, cut at `offsets`)."""

    doc_ids: np.ndarray
    fingerprints: np.ndarray
    truncated: np.ndarray
    sources: list[str | None]
    doc_index: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def tokens_per_doc(self) -> np.ndarray:
        return np.bincount(self.doc_index, weights=self.lengths, minlength=len(self.doc_ids)).astype(np.int64)

    def windows_per_doc(self) -> np.ndarray:
        return np.bincount(self.doc_index, minlength=len(self.doc_ids)).astype(np.int64)

    def padded(self, start: int, stop: int, pad_id: int, width: int | None = None,
               rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows start…stop−1 right-padded with `pad_id` to `width` (default: the longest), and to
        `rows` rows with empty ones, and their lengths: arrays made in one step each, never a Python
        list per token."""
        lengths = np.zeros(rows or stop - start, np.int64)
        lengths[:stop - start] = self.lengths[start:stop]
        width = width or int(lengths.max())
        mask = np.arange(width) < lengths[:, None]
        ids = np.full(mask.shape, pad_id, np.int64)
        ids[mask] = self.ids[self.offsets[start]:self.offsets[stop]]
        return ids, lengths


def budget_slices(lengths: np.ndarray, max_tokens: int, step: int = 1,
                  max_width: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """Batches of rows sorted longest first: (start, stop, width, rows) with the rows
    start…stop−1 padded to `width` (the first row's length rounded up to a multiple of `step`, at
    most max_width) and to `rows` rows, rows × width ≤ max_tokens (at least one row). step 1:
    token_budget_batches's batches on sorted rows, unpadded; a larger step gives few distinct
    shapes (a compiled forward's)."""
    start, n = 0, len(lengths)
    while start < n:
        width = -(-int(lengths[start]) // step) * step
        width = max(int(lengths[start]), min(width, max_width or width))
        rows = max(1, max_tokens // width)
        stop = min(start + rows, n)
        yield start, stop, width, (rows if step > 1 else stop - start)
        start = stop


def check_made_for(path: str, tokenizer, max_length: int) -> dict:
    """The file's metadata, if it was made with this tokenizer and max_length; else ValueError."""
    meta = parquet_file(path).schema_arrow.metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{path} is not a scorer windows file (no {METADATA_KEY.decode()} metadata): delete it "
                         "and rerun Snakemake, which remakes it with rule tokenize_scorer_shard")
    made = json.loads(meta[METADATA_KEY])
    if made["max_length"] != max_length or made["tokenizer_sha256"] != tokenizer_digest(tokenizer):
        raise ValueError(f"{path} was tokenized for another scorer (tokenizer or max_length {made['max_length']} "
                         f"differ from the scorer's, max_length {max_length}): delete it and rerun Snakemake, "
                         "which remakes it with rule tokenize_scorer_shard")
    return made


def read_chunks(path: str) -> Iterator[Chunk]:
    """The file's row groups in order, as Chunks; a damaged file fails naming it."""
    file = parquet_file(path)
    last = -1
    for group in range(file.num_row_groups):
        table = file.read_row_group(group)
        doc_ids, first = np.unique(table["doc_id"].to_numpy(), return_index=True)
        if len(doc_ids) and doc_ids[0] <= last:
            raise ValueError(f"{path}: row group {group} repeats or reorders documents; delete the file and rerun")
        last = int(doc_ids[-1]) if len(doc_ids) else last
        input_ids = table["input_ids"].combine_chunks()
        lengths = pc.list_value_length(input_ids).to_numpy(zero_copy_only=False).astype(np.int64)
        yield Chunk(doc_ids=doc_ids, fingerprints=table["fingerprint"].to_numpy()[first],
                    truncated=table["truncated"].to_numpy(zero_copy_only=False)[first],
                    sources=table["source"].take(pa.array(first)).to_pylist(),
                    doc_index=np.searchsorted(doc_ids, table["doc_id"].to_numpy()), lengths=lengths,
                    offsets=np.concatenate(([0], np.cumsum(lengths))),
                    ids=input_ids.flatten().to_numpy(zero_copy_only=False))
