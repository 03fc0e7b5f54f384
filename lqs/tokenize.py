"""Tokenizers and windows: loading a tokenizer, and cutting documents into windows of token ids.

A window never crosses documents. Long documents are cut near `max_length`, preferring a
sentence end or newline in the last quarter of the window.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

# The tokenized shards (stage tokenize_shard): one row per window; fingerprint is its document's
# (corpus.Record.fingerprint, on each of its rows), which goes with the record's windows into its
# score: whatever reads the record again checks it against it. `ends`: the window's window_ends
# (positions in its ids, special tokens left out) and `source` its document's "source" field (when
# a string), so that windows of another length can be cut from the shard without the text
# (shard_documents; stage tokenize_scorer_shard).
SHARD_SCHEMA = pa.schema([
    ("doc_id", pa.int64()),
    ("window", pa.int32()),
    ("input_ids", pa.list_(pa.int32())),
    ("fingerprint", pa.int64()),
    ("ends", pa.list_(pa.int32())),
    ("source", pa.string()),
])
# In a tokenized shard's metadata: the tokenizer_sha256 of the tokenizer that made it.
TOKENIZER_METADATA = b"lqs.tokenizer_sha256"

_BOUNDARY_CHARS = ".!?\n"
_BOUNDARY_CODES = np.array([ord(c) for c in _BOUNDARY_CHARS], np.uint32)
_NEWLINE = ord("\n")


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds before and after a text by default (e.g. BOS, or CLS/SEP)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


def window_ends(offsets: Sequence[tuple[int, int]], text: str) -> np.ndarray:
    """The positions of the tokens a window may end after, ascending: those whose text ends with a
    sentence end or newline, or that a newline separates from the next token. All at once, in numpy."""
    n = len(offsets)
    chars = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)  # one per str index
    if n == 0 or len(chars) == 0:
        return np.zeros(0, np.int32)
    spans = np.fromiter(itertools.chain.from_iterable(offsets), np.int64, 2 * n).reshape(n, 2)
    stops = spans[:, 1]
    ends = (stops > 0) & np.isin(chars[np.maximum(stops - 1, 0)], _BOUNDARY_CODES)
    newline = chars == _NEWLINE
    if newline.any():  # a newline in text[stop:next token's start]
        before = np.concatenate(([0], np.cumsum(newline)))
        starts = np.maximum(np.append(spans[1:, 0], stops[-1]), stops)
        ends |= before[starts] > before[stops]
    return np.flatnonzero(ends).astype(np.int32)


def cut_windows(n: int, ends: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) of at most `budget` tokens covering n tokens in order: a window
    that must be cut ends after the last of `ends` (window_ends) in its last quarter, else is full."""
    bounds, start = [], 0
    while start < n:
        end = min(start + budget, n)
        if end < n:
            last = int(np.searchsorted(ends, end)) - 1  # the last position before `end`
            if last >= 0 and ends[last] >= start + (3 * budget) // 4:
                end = int(ends[last]) + 1
        bounds.append((start, end))
        start = end
    return bounds


def window_bounds(offsets: Sequence[tuple[int, int]], text: str, budget: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) of at most `budget` tokens covering all tokens in order."""
    return cut_windows(len(offsets), window_ends(offsets, text), budget)


def window_frame(tokenizer, max_length: int) -> tuple[list[int], list[int], int]:
    """The special tokens around every window (special_tokens) and the ids left between them."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room next to the special tokens")
    return prefix, suffix, budget


def _encodings(tokenizer, texts: list[str]) -> list[tuple[list[int], Callable[[], Sequence[tuple[int, int]]]]]:
    """Each text's ids without special tokens, and a function that gives their offsets."""
    if len(texts) == 0:  # a fast tokenizer fails on an empty batch
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(ids, lambda offsets=offsets: offsets) for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]
    # The Rust tokenizer directly: transformers' call would turn every encoding's ids, mask and
    # offsets into Python lists; offsets are read only where they are needed.
    return [(e.ids, lambda e=e: e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]


def tokenize_windows(tokenizer, texts: Sequence[str], max_length: int) -> list[list[list[int]]]:
    """For each text, its windows of at most `max_length` ids, special tokens included."""
    prefix, suffix, budget = window_frame(tokenizer, max_length)
    out = []
    for text, (ids, offsets) in zip(texts, _encodings(tokenizer, list(texts))):
        bounds = window_bounds(offsets(), text, budget) if len(ids) > budget else [(0, len(ids))] if ids else []
        out.append([prefix + ids[a:b] + suffix for a, b in bounds])
    return out


def tokenize_texts(tokenizer, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray]]:
    """Each text's ids without special tokens and their window_ends: what windows of any length
    are cut from (cut_windows) as tokenize_windows cuts them from the text."""
    encodings = _encodings(tokenizer, list(texts))
    return [(ids, window_ends(offsets(), text)) for text, (ids, offsets) in zip(texts, encodings)]


def tokenizer_sha256(tokenizer) -> str | None:
    """SHA-256 of what decides the ids tokenize_windows gives a text: the Rust tokenizer's
    definition (normalizer, pre-tokenizer, model with its vocabulary and merges, added tokens;
    not its truncation and padding, which the windows never use) and the special tokens added
    around a window. None for a tokenizer without a Rust one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = json.loads(backend.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return hashlib.sha256(json.dumps([definition, *special_tokens(tokenizer)], sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ShardDocument:
    """A document of a tokenized shard with its windows joined back: `ids` without special
    tokens, and their window_ends."""

    doc_id: int
    fingerprint: int
    source: str | None
    ids: np.ndarray
    ends: np.ndarray


def tokenizer_metadata(tokenizer) -> dict[bytes, bytes]:
    """A tokenized shard's metadata naming the tokenizer that made it (made_with)."""
    digest = tokenizer_sha256(tokenizer)
    return {TOKENIZER_METADATA: digest.encode()} if digest else {}


def made_with(path: str, tokenizer) -> bool:
    """Whether `tokenizer` made the tokenized shard `path` (its tokenizer_sha256, in the metadata)."""
    from lqs.io import parquet_file

    made_by = (parquet_file(path).schema_arrow.metadata or {}).get(TOKENIZER_METADATA)
    return made_by is not None and made_by.decode() == tokenizer_sha256(tokenizer)


def shard_documents(path: str, tokenizer, batch_rows: int = 65536) -> Iterator[ShardDocument]:
    """The documents of the tokenized shard `path`, which `tokenizer` made (the caller checks it:
    made_with), in order."""
    from lqs.io import parquet_batches

    prefix, suffix = special_tokens(tokenizer)
    held: list = []  # the document under way: doc_id, fingerprint, source, its windows' ids and ends
    length = 0  # its ids so far

    def document() -> ShardDocument:
        doc_id, fingerprint, source, ids, ends = held
        return ShardDocument(doc_id, fingerprint, source, np.concatenate(ids), np.concatenate(ends))

    for batch in parquet_batches(path, ["doc_id", "input_ids", "ends", "fingerprint", "source"], batch_rows):
        doc_ids, fingerprints, sources = (batch.column(0).to_numpy(), batch.column(3).to_numpy(),
                                          batch.column(4).to_pylist())
        ids, id_starts = batch.column(1).values.to_numpy(), batch.column(1).offsets.to_numpy()
        ends, end_starts = batch.column(2).values.to_numpy(), batch.column(2).offsets.to_numpy()
        for row, doc_id in enumerate(doc_ids.tolist()):
            if held and held[0] != doc_id:
                yield document()
                held = []
            if not held:
                held, length = [doc_id, int(fingerprints[row]), sources[row], [], []], 0
            window = ids[id_starts[row] + len(prefix):id_starts[row + 1] - len(suffix)]
            held[3].append(window)
            held[4].append(ends[end_starts[row]:end_starts[row + 1]].astype(np.int64) + length)
            length += len(window)
    if held:
        yield document()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer saved in the directory `path`; a missing or damaged one fails naming its file."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises JSONDecodeError, KeyError, OSError, ... for a bad file
        name = path / "tokenizer.json" if (path / "tokenizer.json").exists() else path
        raise ValueError(f"cannot load the tokenizer {name} ({type(e).__name__}: {e}): replace it, or if the "
                         "workflow wrote it, delete the directory and rerun to remake it") from None
