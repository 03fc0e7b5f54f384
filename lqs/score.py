"""Stage `score_shard`: score every accepted document of one corpus shard (DESIGN.md §5).

Streams the shard's records in chunks through the batched scorer, so memory does not grow with
the shard. Only documents that tokenization accepted are scored; the others are in its rejects.
The log ends with the time split (read / tokenize / model / write) and the tokens/s.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from lqs import corpus
from lqs.io import TokenRate, parquet_batches, parquet_writer
from lqs.runtime import resolve_device
from lqs.scorer import load, tokenizer_processes, windows_in_worker

T = TypeVar("T")

log = logging.getLogger(__name__)

SCORES_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("truncated", pa.bool_())])


def accepted_doc_ids(tokenized_shard: str, batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """The ids of the documents tokenization accepted, ascending, a batch at a time: the shard
    has one row per window, in input order, so memory stays that of one batch."""
    last = -1
    for batch in parquet_batches(tokenized_shard, ["doc_id"], batch_rows):
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


class Split:
    """Seconds spent in each part of a stage; parts may run in different threads at once."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def iterate(self, part: str, items: Iterable[T]) -> Iterator[T]:
        """items, the time taken to produce each one counted to `part`."""
        items = iter(items)
        while True:
            with self(part):
                item = next(items, _END)
            if item is _END:
                return
            yield item


_END = object()


def in_order(items: Iterator[T], submit: Callable[[T], Future], depth: int) -> Iterator[tuple[T, Any]]:
    """(item, its future's result) for each item in input order, with up to `depth` further items
    submitted while the caller works on one."""
    pending: deque = deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) > depth:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


def score_shard(corpus_paths: Sequence[str], tokenized_shard: str, scorer_dir: str, out: str, *,
                shard: int, num_shards: int | str, text_field: str, max_chars: int,
                max_tokens: int | None, max_windows_per_doc: int | None, chunk_docs: int = 4096,
                dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                prefetch: bool | None = None, tokenizer_workers: int | None = None) -> dict[str, int]:
    """prefetch (default: on a GPU): tokenizer_workers processes (default: a quarter of the
    cores, 1 to 4) tokenize the next chunks while the current one is scored. On a CPU they would
    share the cores with the model: measured no faster there."""
    start = time.perf_counter()
    if prefetch is None:
        prefetch = resolve_device(device).type == "cuda"
    workers = tokenizer_workers or min(4, max(1, (os.cpu_count() or 1) // 4))
    with tokenizer_processes(scorer_dir, workers) if prefetch else contextlib.nullcontext() as pool:
        scorer = load(scorer_dir, device, trust_remote_code, dtype)
        return _score_chunks(scorer, pool, workers, corpus_paths, tokenized_shard, out, start, shard=shard,
                             num_shards=num_shards, text_field=text_field, max_chars=max_chars,
                             max_tokens=max_tokens, max_windows_per_doc=max_windows_per_doc, chunk_docs=chunk_docs)


def _score_chunks(scorer, pool, workers: int, corpus_paths, tokenized_shard: str, out: str, start: float, *,
                  shard: int, num_shards, text_field: str, max_chars: int, max_tokens: int | None,
                  max_windows_per_doc: int | None, chunk_docs: int) -> dict[str, int]:
    split = Split()
    with split("read"):
        num_accepted = sum(len(ids) for ids in accepted_doc_ids(tokenized_shard))
    records = accepted_records(corpus.iter_records(corpus_paths, text_field, max_chars, shard, num_shards),
                               (int(i) for ids in accepted_doc_ids(tokenized_shard) for i in ids))

    def tokenize(chunk: list[corpus.Record]) -> Future:
        texts = [r.text for r in chunk]
        if pool is not None:
            return pool.submit(windows_in_worker, scorer.max_length, texts, max_windows_per_doc)
        future: Future = Future()
        begin = time.perf_counter()
        future.set_result((*scorer.windows(texts, max_windows_per_doc), time.perf_counter() - begin))
        return future

    counts = {"scored": 0, "truncated": 0, "tokens": 0}
    flops = 0.0
    bar = tqdm(total=num_accepted, desc=f"score shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with parquet_writer(out, SCORES_SCHEMA) as writer:
        chunks = split.iterate("read", chunked(records, chunk_docs))
        tokenized = split.iterate("next chunk", in_order(chunks, tokenize, workers if pool is not None else 0))
        for chunk, (windows, truncated, seconds) in tokenized:
            split.seconds["tokenize"] += seconds
            with split("model"):  # ends with the chunk's one host sync: the GPU time is in it
                values = scorer.score_windows(windows, len(chunk), max_tokens)
            with split("write"):
                writer.write_table(pa.table({"doc_id": [r.doc_id for r in chunk], "score": values,
                                             "truncated": truncated}, schema=SCORES_SCHEMA))
            counts["scored"] += len(chunk)
            counts["truncated"] += sum(truncated)
            counts["tokens"] += sum(len(w.ids) for w in windows)
            flops += scorer.forward_flops(len(w.ids) for w in windows)
            bar.update(len(chunk))
            rate.add(scorer.tokens_scored - rate.tokens)
        if counts["scored"] != num_accepted:
            raise RuntimeError(f"shard {shard}: tokenization accepted {num_accepted} documents but "
                               f"{counts['scored']} were found to score; was the corpus changed?")
    bar.close()
    wall, seconds = time.perf_counter() - start, split.seconds
    where = f" in {workers} processes beside the model" if pool is not None else ""
    log.info("shard %d: %d documents, %d tokens in %.3g s (model loaded and output written): %.0f tokens/s end "
             "to end; read %.3g s, tokenize %.3g s%s (waited for %.3g s), model %.3g s (%.0f tokens/s, "
             "%.3g TFLOP/s), write %.3g s", shard, counts["scored"], counts["tokens"], wall,
             counts["tokens"] / wall, seconds["read"], seconds["tokenize"], where,
             max(0.0, seconds["next chunk"] - seconds["read"] - (0 if pool is not None else seconds["tokenize"])),
             seconds["model"], counts["tokens"] / max(seconds["model"], 1e-9),
             flops / max(seconds["model"], 1e-9) / 1e12, seconds["write"])
    return counts
