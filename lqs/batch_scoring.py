"""The batched scoring path that stage `score_shard` (lqs.stages.score_shard) and `lqs score`
(lqs.score) share: records streamed in chunks through the scorer (`scored_chunks`), so memory does
not grow with the input, with tokenizer processes ahead of the model on a GPU (`loaded_scorer`);
the documents tokenization accepted (`accepted_records`); and the time split (read / tokenize /
model / write) and tokens/s of a run's log line (`Meter`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from lqs import corpus
from lqs.io import parquet_batches
from lqs.runtime import resolve_device
from lqs.splits import corpus_doc_ids, corpus_ids_of_shards

T = TypeVar("T")

# One row per scored document; n_tokens and n_windows count what the score was computed on, and
# fingerprint is the record's (corpus.Record.fingerprint), which gather_scores checks.
SCORES_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("truncated", pa.bool_()),
                           ("n_tokens", pa.int64()), ("n_windows", pa.int64()), ("fingerprint", pa.int64()),
                           ("source", pa.string())])
# A score shard's key-value metadata: the digests of the weights that computed its scores, as
# lqs.scorer.load checked them (JSON), which a part's provenance block takes (write_part) instead
# of hashing the whole model again in every shard's job.
SCORER_DIGESTS_KEY = b"lqs.scorer_weights_sha256"
# The scored output's documents in storage order, with their scores and sources (gather_scores
# writes it): what select_order and the report read instead of parsing the scored output.
INDEX_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("source", pa.string())])


def accepted_documents(tokenized_shard: str, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, fingerprints) of the documents tokenization accepted, ascending, a batch at a time:
    the shard has one row per window, in input order, so memory stays that of one batch."""
    corpus.require_fingerprints(tokenized_shard)
    last = -1
    for batch in parquet_batches(tokenized_shard, ["doc_id", "fingerprint"], batch_rows):
        ids = batch.column(0).to_numpy()
        if len(ids) == 0:
            continue
        if ids[0] < last or (np.diff(ids) < 0).any():
            raise RuntimeError(f"{tokenized_shard}: document ids are not in input order")
        first = np.concatenate(([ids[0] != last], ids[1:] != ids[:-1]))
        last = int(ids[-1])
        yield ids[first], batch.column(1).to_numpy()[first]


def corpus_accepted_documents(tokenized_shards: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """accepted_documents of the shards of a corpus, in order, with the corpus's doc ids (lqs.splits)."""
    for shard, indices in zip(tokenized_shards, corpus_ids_of_shards(tokenized_shards)):
        for ids, fingerprints in accepted_documents(shard):
            yield corpus_doc_ids(ids, indices), fingerprints


def accepted_records(records: Iterator[corpus.Record],
                     tokenized_shard: str | Sequence[str]) -> Iterator[corpus.Record]:
    """The records tokenization accepted. Both streams come in input order: a merge, never a
    lookup table. Stops at an accepted document that is gone or is now a bad record; one whose
    fingerprint differs from the tokenized shard's is an error (the corpus was edited since).
    Several tokenized shards (every shard's, in order, against the whole corpus's records): with
    the corpus's doc ids, which increase in input order."""
    if isinstance(tokenized_shard, str):
        documents = accepted_documents(tokenized_shard)
    else:
        documents = corpus_accepted_documents(tokenized_shard)
        tokenized_shard = "the tokenized shards"
    accepted = ((int(i), int(f)) for ids, fingerprints in documents for i, f in zip(ids, fingerprints))
    next_id, fingerprint = next(accepted, (None, None))
    for record in records:
        if next_id is None or record.doc_id is None or record.doc_id < next_id:
            continue  # a record (or an unreadable file: doc_id None) tokenization rejected
        if record.doc_id > next_id or record.error is not None:
            return
        if record.fingerprint != fingerprint:
            raise RuntimeError(f"{record.where}: the corpus changed since it was tokenized (this record differs "
                               f"from the one {tokenized_shard} was made from); {corpus.RETOKENIZE}")
        yield record
        next_id, fingerprint = next(accepted, (None, None))


def record_source(record: corpus.Record) -> str | None:
    """The record's "source" field, when it is a string: the summary's scores by source."""
    source = record.fields.get("source") if record.fields else None
    return source if isinstance(source, str) else None


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



@dataclass
class ChunkScores:
    """One chunk's results, a value per document: the score, whether inference.max_windows_per_doc
    cut its windows, and the tokens and windows the score was computed on."""
    scores: list[float]
    truncated: list[bool]
    n_tokens: list[int]
    n_windows: list[int]

    def columns(self, score_field: str, extra_fields: Sequence[str]) -> dict[str, list]:
        return {score_field: self.scores} | {name: getattr(self, name) for name in extra_fields}


@dataclass
class Meter:
    """Counts and time split of a scoring run, for its log line."""
    split: Split = field(default_factory=Split)
    documents: int = 0
    truncated: int = 0
    tokens: int = 0
    flops: float = 0.0
    by_source: dict[str, list[float]] = field(default_factory=dict)  # source -> [sum of scores, documents]

    def add(self, sources: Sequence[str | None], result: ChunkScores) -> None:
        """A chunk's results, with each document's "source" field (None where it has no string one)."""
        self.documents += len(sources)
        self.truncated += sum(result.truncated)
        self.tokens += sum(result.n_tokens)
        for source, score in zip(sources, result.scores):
            if source is not None:
                total = self.by_source.setdefault(source, [0.0, 0])
                total[0] += score
                total[1] += 1

    def counts(self) -> dict[str, int]:
        return {"scored": self.documents, "truncated": self.truncated, "tokens": self.tokens}

    def report(self, what: str, wall: float, workers: int | None) -> str:
        """The log line; "tokenize" only for a run that tokenized (`lqs score`: score_shard reads
        windows tokenized beforehand, its "read" the time it waited for them)."""
        seconds = self.split.seconds
        where = f" in {workers} processes beside the model" if workers else ""
        waited = max(0.0, seconds["next chunk"] - seconds["read"] - (0 if workers else seconds["tokenize"]))
        tokenized = (f"tokenize {seconds['tokenize']:.3g} s{where} (waited for {waited:.3g} s), "
                     if seconds["tokenize"] or workers else "")
        model = max(seconds["model"], 1e-9)
        return (f"{what}: {self.documents} documents, {self.tokens} tokens in {wall:.3g} s (model loaded and "
                f"output written): {self.tokens / wall:.0f} tokens/s end to end; read {seconds['read']:.3g} s, "
                f"{tokenized}model {seconds['model']:.3g} s "
                f"({self.tokens / model:.0f} tokens/s, {self.flops / model / 1e12:.3g} TFLOP/s), "
                f"write {seconds['write']:.3g} s")


def scored_chunks(scorer, pool, workers: int, records: Iterator[corpus.Record], meter: Meter, *,
                  chunk_docs: int, max_tokens: int | None, max_windows_per_doc: int | None
                  ) -> Iterator[tuple[list[corpus.Record], ChunkScores]]:
    """Each chunk of `records` with its scores, in input order; with a pool of tokenizer processes,
    the next chunks are tokenized while one is scored."""
    from lqs.scorer import windows_in_worker  # here: the stages that only read the schemas skip torch

    def tokenize(chunk: list[corpus.Record]) -> Future:
        texts = [r.text for r in chunk]
        if pool is not None:
            return pool.submit(windows_in_worker, scorer.max_length, texts, max_windows_per_doc)
        future: Future = Future()
        begin = time.perf_counter()
        future.set_result((*scorer.windows(texts, max_windows_per_doc), time.perf_counter() - begin))
        return future

    split = meter.split
    chunks = split.iterate("read", chunked(records, chunk_docs))
    for chunk, (windows, truncated, seconds) in split.iterate(
            "next chunk", in_order(chunks, tokenize, workers if pool is not None else 0)):
        split.seconds["tokenize"] += seconds
        with split("model"):  # ends with the chunk's one host sync: the GPU time is in it
            scores = scorer.score_windows(windows, len(chunk), max_tokens)
        n_tokens, n_windows = [0] * len(chunk), [0] * len(chunk)
        for w in windows:
            n_tokens[w.doc] += len(w.ids)
            n_windows[w.doc] += 1
        meter.flops += scorer.forward_flops(len(w.ids) for w in windows)
        result = ChunkScores(scores, truncated, n_tokens, n_windows)
        meter.add([record_source(r) for r in chunk], result)
        yield chunk, result


@contextlib.contextmanager
def loaded_scorer(scorer_dir: str, device: str, dtype: str, trust_remote_code: bool, prefetch: bool | None,
                  tokenizer_workers: int | None) -> Iterator[tuple[Any, Any, int]]:
    """(scorer, pool of tokenizer processes or None, their number). prefetch (default: on a GPU):
    tokenizer_workers processes (default: a quarter of the cores, 1 to 4) tokenize the next chunks
    while the current one is scored. On a CPU they would share the cores with the model: measured
    no faster there."""
    from lqs.scorer import load, tokenizer_processes

    if prefetch is None:
        prefetch = resolve_device(device).type == "cuda"
    workers = tokenizer_workers or min(4, max(1, (os.cpu_count() or 1) // 4))
    with tokenizer_processes(scorer_dir, workers) if prefetch else contextlib.nullcontext() as pool:
        yield load(scorer_dir, device, trust_remote_code, dtype), pool, workers
