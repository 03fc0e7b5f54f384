"""The file formats lqs reads and writes, decided from a path's name in this one place.

The corpus is JSONL (plain or gzipped) or Parquet; outputs are written as `jsonl`, `jsonl.gz` or
`parquet` (`output.format`). One reader per corpus format reads a split of a file
(lqs.corpus.reader, behind iter_records); one writer per output format writes an output
(lqs.output.open_output: the scored output through ScoredWriter, the training set through
lqs.select.write_selected)."""

from __future__ import annotations

import os

# output.format -> the extension its files get
EXTENSIONS = {"jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz", "parquet": ".parquet"}
# a file name's ending -> its format (the longest ending first: ".jsonl.gz" before ".gz")
_BY_ENDING = {".parquet": "parquet", ".pq": "parquet", ".jsonl.gz": "jsonl.gz", ".gz": "jsonl.gz", ".jsonl": "jsonl"}
# what a corpus directory's listing takes as data files
CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".pq")


def format_of(path: str | os.PathLike) -> str | None:
    """The format a file name says (`jsonl`, `jsonl.gz`, `parquet`), or None."""
    return next((fmt for ending, fmt in _BY_ENDING.items() if str(path).endswith(ending)), None)


def is_parquet(path: str | os.PathLike) -> bool:
    return format_of(path) == "parquet"


def is_gzip(path: str | os.PathLike) -> bool:
    return format_of(path) == "jsonl.gz"


def is_cuttable(path: str | os.PathLike) -> bool:
    """Whether a corpus file can be read in parts: uncompressed JSONL (byte ranges) or Parquet
    (row groups); a gzip stream is read from its start."""
    return not is_gzip(path)
