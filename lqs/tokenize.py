"""Tokenizers and windows: loading a tokenizer, and cutting documents into windows of token ids.

A window never crosses documents. Long documents are cut near `max_length`, preferring a
sentence end or newline in the last quarter of the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

# The tokenized shards (stage tokenize_shard): one row per window; fingerprint is its document's
# (corpus.Record.fingerprint, on each of its rows): score_shard checks each record it scores
# against it.
SHARD_SCHEMA = pa.schema([
    ("doc_id", pa.int64()),
    ("window", pa.int32()),
    ("input_ids", pa.list_(pa.int32())),
    ("fingerprint", pa.int64()),
])

_BOUNDARY_CHARS = ".!?\n"


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds before and after a text by default (e.g. BOS, or CLS/SEP)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


def window_bounds(offsets: Sequence[tuple[int, int]], text: str, budget: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) of at most `budget` tokens covering all tokens in order."""
    n = len(offsets)
    bounds, start = [], 0
    while start < n:
        end = min(start + budget, n)
        if end < n:
            for k in range(end - 1, start + (3 * budget) // 4 - 1, -1):
                stop = offsets[k][1]
                gap = text[stop:offsets[k + 1][0]] if k + 1 < n else ""
                if (stop > 0 and text[stop - 1] in _BOUNDARY_CHARS) or "\n" in gap:
                    end = k + 1
                    break
        bounds.append((start, end))
        start = end
    return bounds


def tokenize_windows(tokenizer, texts: Sequence[str], max_length: int) -> list[list[list[int]]]:
    """For each text, its windows of at most `max_length` ids, special tokens included."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room next to the special tokens")
    if len(texts) == 0:  # a fast tokenizer fails on an empty batch
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [[prefix + ids[a:b] + suffix for a, b in window_bounds(offsets, text, budget)]
                for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"])]
    # The Rust tokenizer directly: transformers' call would turn every encoding's ids, mask and
    # offsets into Python lists; offsets are needed only where a text is cut into windows.
    out = []
    for text, encoding in zip(texts, backend.encode_batch(list(texts), add_special_tokens=False)):
        ids = encoding.ids
        bounds = window_bounds(encoding.offsets, text, budget) if len(ids) > budget else [(0, len(ids))] if ids else []
        out.append([prefix + ids[a:b] + suffix for a, b in bounds])
    return out


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
