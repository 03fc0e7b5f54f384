"""Stage `score_shard`: score every accepted document of one corpus shard (DESIGN.md §5).

Streams the shard's records in chunks through the batched scorer, so memory does not grow with
the shard. Only documents that tokenization accepted are scored; the others are in its rejects.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from lqs import corpus
from lqs.io import TokenRate, parquet_writer
from lqs.scorer import load

T = TypeVar("T")
R = TypeVar("R")

SCORES_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("truncated", pa.bool_())])


def accepted_doc_ids(tokenized_shard: str, batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """The ids of the documents tokenization accepted, ascending, a batch at a time: the shard
    has one row per window, in input order, so memory stays that of one batch."""
    last = -1
    for batch in pq.ParquetFile(tokenized_shard).iter_batches(batch_size=batch_rows, columns=["doc_id"]):
        ids = batch.column(0).to_numpy()
        if len(ids) == 0:
            continue
        if ids[0] < last or (np.diff(ids) < 0).any():
            raise RuntimeError(f"{tokenized_shard}: document ids are not in input order")
        new = ids[np.concatenate(([ids[0] != last], ids[1:] != ids[:-1]))]
        last = int(ids[-1])
        yield new


def accepted_records(records: Iterator[corpus.Record], accepted: Iterator[int]) -> Iterator[corpus.Record]:
    """The records tokenization accepted. Both streams come in input order: a merge, never a
    lookup table. Stops at an accepted document that is gone or is now a bad record."""
    next_accepted = next(accepted, None)
    for record in records:
        if next_accepted is None or record.doc_id < next_accepted:
            continue  # a record tokenization rejected
        if record.doc_id > next_accepted or record.error is not None:
            return
        yield record
        next_accepted = next(accepted, None)


def chunked(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def prefetched(items: Iterator[T], fn: Callable[[T], R]) -> Iterator[R]:
    """fn of each item in turn, the next item read and computed in a background thread while
    the caller works on the current one: reading and tokenizing overlap the scoring."""
    done = object()

    def next_result():
        item = next(items, done)
        return done if item is done else fn(item)

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next_result)
        while (result := future.result()) is not done:
            future = pool.submit(next_result)
            yield result


def score_shard(corpus_paths: Sequence[str], tokenized_shard: str, scorer_dir: str, out: str, *,
                shard: int, num_shards: int | str, text_field: str, max_chars: int,
                max_tokens: int | None, max_windows_per_doc: int | None, chunk_docs: int = 4096,
                dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                prefetch: bool | None = None) -> dict[str, int]:
    """prefetch (default: on a GPU) reads and tokenizes the next chunk while the current one is
    scored. On a CPU the two would share the same cores: measured no faster there."""
    scorer = load(scorer_dir, device, trust_remote_code, dtype)
    if prefetch is None:
        prefetch = scorer.device.type == "cuda"
    num_accepted = sum(len(ids) for ids in accepted_doc_ids(tokenized_shard))
    records = accepted_records(corpus.iter_records(corpus_paths, text_field, max_chars, shard, num_shards),
                               (int(i) for ids in accepted_doc_ids(tokenized_shard) for i in ids))

    def tokenized(chunk: list[corpus.Record]):
        return chunk, *scorer.windows([r.text for r in chunk], max_windows_per_doc)

    counts = {"scored": 0, "truncated": 0}
    bar = tqdm(total=num_accepted, desc=f"score shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with parquet_writer(out, SCORES_SCHEMA) as writer:
        chunks = chunked(records, chunk_docs)
        for chunk, windows, truncated in prefetched(chunks, tokenized) if prefetch else map(tokenized, chunks):
            values = scorer.score_windows(windows, len(chunk), max_tokens)
            writer.write_table(pa.table({"doc_id": [r.doc_id for r in chunk], "score": values,
                                         "truncated": truncated}, schema=SCORES_SCHEMA))
            counts["scored"] += len(chunk)
            counts["truncated"] += sum(truncated)
            bar.update(len(chunk))
            rate.add(scorer.tokens_scored - rate.tokens)
        if counts["scored"] != num_accepted:
            raise RuntimeError(f"shard {shard}: tokenization accepted {num_accepted} documents but "
                               f"{counts['scored']} were found to score; was the corpus changed?")
    bar.close()
    return counts
