"""Stage `score_shard`: score every accepted document of one corpus shard (docs/stages.md#score_shard), and
`lqs score`: score files with a scorer checkpoint, no workflow needed.

Both stream records in chunks through the batched scorer (`scored_chunks`), so memory does not
grow with the input. score_shard scores only the documents that tokenization accepted (the others
are in its rejects) and, with output.layout per_shard, writes the shard's scored records itself.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from lqs import corpus, output
from lqs.io import TokenRate, atomic_open, parquet_batches, parquet_writer, write_json
from lqs.output import ScoredWriter
from lqs.runtime import resolve_device
from lqs.scorer import load, tokenizer_processes, windows_in_worker

T = TypeVar("T")

log = logging.getLogger(__name__)

# One row per scored document; n_tokens and n_windows count what the score was computed on, and
# fingerprint is the record's (corpus.Record.fingerprint), which gather_scores checks.
SCORES_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("truncated", pa.bool_()),
                           ("n_tokens", pa.int64()), ("n_windows", pa.int64()), ("fingerprint", pa.int64())])


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


def accepted_records(records: Iterator[corpus.Record], tokenized_shard: str) -> Iterator[corpus.Record]:
    """The records tokenization accepted. Both streams come in input order: a merge, never a
    lookup table. Stops at an accepted document that is gone or is now a bad record; one whose
    fingerprint differs from the tokenized shard's is an error (the corpus was edited since)."""
    accepted = ((int(i), int(f)) for ids, fingerprints in accepted_documents(tokenized_shard)
                for i, f in zip(ids, fingerprints))
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

    def add(self, chunk: list[corpus.Record], result: ChunkScores) -> None:
        self.documents += len(chunk)
        self.truncated += sum(result.truncated)
        self.tokens += sum(result.n_tokens)
        for record, score in zip(chunk, result.scores):
            source = record.fields.get("source") if record.fields else None
            if isinstance(source, str):
                total = self.by_source.setdefault(source, [0.0, 0])
                total[0] += score
                total[1] += 1

    def counts(self) -> dict[str, int]:
        return {"scored": self.documents, "truncated": self.truncated, "tokens": self.tokens}

    def report(self, what: str, wall: float, workers: int | None) -> str:
        seconds = self.split.seconds
        where = f" in {workers} processes beside the model" if workers else ""
        waited = max(0.0, seconds["next chunk"] - seconds["read"] - (0 if workers else seconds["tokenize"]))
        model = max(seconds["model"], 1e-9)
        return (f"{what}: {self.documents} documents, {self.tokens} tokens in {wall:.3g} s (model loaded and "
                f"output written): {self.tokens / wall:.0f} tokens/s end to end; read {seconds['read']:.3g} s, "
                f"tokenize {seconds['tokenize']:.3g} s{where} (waited for {waited:.3g} s), "
                f"model {seconds['model']:.3g} s "
                f"({self.tokens / model:.0f} tokens/s, {self.flops / model / 1e12:.3g} TFLOP/s), "
                f"write {seconds['write']:.3g} s")


def scored_chunks(scorer, pool, workers: int, records: Iterator[corpus.Record], meter: Meter, *,
                  chunk_docs: int, max_tokens: int | None, max_windows_per_doc: int | None
                  ) -> Iterator[tuple[list[corpus.Record], ChunkScores]]:
    """Each chunk of `records` with its scores, in input order; with a pool of tokenizer processes,
    the next chunks are tokenized while one is scored."""

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
        meter.add(chunk, result)
        yield chunk, result


@contextlib.contextmanager
def loaded_scorer(scorer_dir: str, device: str, dtype: str, trust_remote_code: bool, prefetch: bool | None,
                  tokenizer_workers: int | None) -> Iterator[tuple[Any, Any, int]]:
    """(scorer, pool of tokenizer processes or None, their number). prefetch (default: on a GPU):
    tokenizer_workers processes (default: a quarter of the cores, 1 to 4) tokenize the next chunks
    while the current one is scored. On a CPU they would share the cores with the model: measured
    no faster there."""
    if prefetch is None:
        prefetch = resolve_device(device).type == "cuda"
    workers = tokenizer_workers or min(4, max(1, (os.cpu_count() or 1) // 4))
    with tokenizer_processes(scorer_dir, workers) if prefetch else contextlib.nullcontext() as pool:
        yield load(scorer_dir, device, trust_remote_code, dtype), pool, workers


def score_shard(corpus_paths: Sequence[str], tokenized_shard: str, scorer_dir: str, out: str, *,
                shard: int, num_shards: int | str, text_field: str, max_chars: int,
                max_tokens: int | None, max_windows_per_doc: int | None, chunk_docs: int = 4096,
                dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                prefetch: bool | None = None, tokenizer_workers: int | None = None,
                stats_out: str | None = None, part_out: str | None = None, output_format: str = "jsonl",
                score_field: str = "score", extra_fields: Sequence[str] = (),
                output_schema: str | None = None) -> dict[str, int]:
    """Writes the shard's scores to `out` (SCORES_SCHEMA), its counts and per-source score sums to
    `stats_out` (JSON), and with `part_out` (output.layout per_shard) its scored records, in input
    order, in `output_format`; a Parquet part with the whole corpus's schema, the output_schema
    stage's file `output_schema`, so that every part has the same one."""
    start = time.perf_counter()
    meter = Meter()
    with meter.split("read"):
        num_accepted = sum(len(ids) for ids, _ in accepted_documents(tokenized_shard))
        input_schema = output.read_schema(output_schema) if part_out and output_schema else None
    records = accepted_records(corpus.iter_records(corpus_paths, text_field, max_chars, shard, num_shards),
                               tokenized_shard)
    bar = tqdm(total=num_accepted, desc=f"score shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with contextlib.ExitStack() as stack:
        scorer, pool, workers = stack.enter_context(loaded_scorer(scorer_dir, device, dtype, trust_remote_code,
                                                                  prefetch, tokenizer_workers))
        writer = stack.enter_context(parquet_writer(out, SCORES_SCHEMA))
        part = stack.enter_context(ScoredWriter(part_out, output_format, [score_field, *extra_fields], input_schema)
                                   ) if part_out else None
        for chunk, result in scored_chunks(scorer, pool, workers, records, meter, chunk_docs=chunk_docs,
                                           max_tokens=max_tokens, max_windows_per_doc=max_windows_per_doc):
            with meter.split("write"):
                writer.write_table(pa.table({"doc_id": [r.doc_id for r in chunk], "score": result.scores,
                                             "truncated": result.truncated, "n_tokens": result.n_tokens,
                                             "n_windows": result.n_windows,
                                             "fingerprint": [r.fingerprint for r in chunk]}, schema=SCORES_SCHEMA))
                if part is not None:
                    part.write(chunk, result.columns(score_field, extra_fields))
            bar.update(len(chunk))
            rate.add(meter.tokens - rate.tokens)
        if meter.documents != num_accepted:
            raise RuntimeError(f"shard {shard}: tokenization accepted {num_accepted} documents but "
                               f"{meter.documents} were found to score; was the corpus changed?")
        if stats_out:
            write_json(stats_out, {"shard": shard, **meter.counts(), "by_source": meter.by_source})
    bar.close()
    log.info(meter.report(f"shard {shard}", time.perf_counter() - start, workers if pool is not None else None))
    return meter.counts()


def checked_records(records: Iterator[corpus.Record], on_bad_record: str, rejects) -> Iterator[corpus.Record]:
    """The usable records; a bad one stops the run (error) or is written to `rejects` (skip)."""
    for record in records:
        if corpus.check(record, on_bad_record):
            yield record
        else:
            rejects.write(corpus.json_line(record.reject_entry()) + "\n")
            rejects.rejected += 1


class _Rejects:
    """The rejects file of `lqs score`, created (atomically) only if a record is rejected; one
    that an earlier run wrote (replaced only under --overwrite: check_outputs) is removed when
    this run ends well with none, so that it never lies beside an output it does not belong to."""

    def __init__(self, path: str | None):
        self.path, self.rejected, self._stack, self._file = path, 0, contextlib.ExitStack(), None

    def write(self, line: str) -> None:
        if self._file is None:
            self._file = self._stack.enter_context(atomic_open(self.path))
        self._file.write(line)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and self._file is None and self.path:
            Path(self.path).unlink(missing_ok=True)
        self._stack.__exit__(kind, value, traceback)


def format_of(out: str, format: str | None, inputs: Sequence[str]) -> str:
    """--format, else the output's extension, else (standard output) Parquet for Parquet input and
    JSONL otherwise. A file's extension must name its format: a `.jsonl` file never holds Parquet."""
    from lqs.paths import extension_format

    named = extension_format(out) if out != "-" else None
    if format:
        output.check_format(format)
        if named not in (None, format):
            raise ValueError(f"--format {format} contradicts --out {out}, whose extension names {named}; "
                             "give one or the other")
        return format
    return named or output.default_format(inputs)


def resolve_scorer(scorer: str, revision: str | None = None) -> str:
    """A local scorer checkpoint directory, or a hub repo id downloaded (once, to the Hugging Face
    cache) with huggingface_hub."""
    from lqs import models

    if Path(scorer).is_dir():
        return scorer
    if Path(scorer).exists() or scorer.count("/") != 1:
        raise FileNotFoundError(f"--scorer {scorer!r} is neither a scorer checkpoint directory nor a hub repo id")
    return models.resolve_source({"repo": scorer, "revision": revision}, ignore_patterns=models.FOREIGN_WEIGHTS)


def check_outputs(inputs: Sequence[str], scorer: str, outputs: dict[str, str], overwrite: bool) -> None:
    """Refuses, before anything is scored, outputs ({flag: path}) that would land on an input (or
    inside a directory or glob of inputs, or the --scorer directory) or on each other, an output
    that is a directory or in a missing or unwritable one, and an existing one without
    `overwrite`. A read-only output is never replaced: it was made read-only for a reason."""
    from lqs.paths import path_conflicts

    given = {"INPUT": [i for i in inputs if i != "-"]} | ({"--scorer": [scorer]} if Path(scorer).is_dir() else {})
    conflicts = path_conflicts(given, outputs)
    if conflicts:
        raise ValueError("; ".join(conflicts))
    for flag, path in outputs.items():
        target, where = Path(path), Path(path).parent
        if target.is_dir():
            raise ValueError(f"{flag} {path} is a directory: give the path of the file to write")
        if not where.is_dir():
            raise ValueError(f"{flag} {path}: its directory {where} does not exist")
        if not os.access(where, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: its directory {where} is not writable")
        if not (target.exists() or target.is_symlink()):
            continue
        if not overwrite:
            raise ValueError(f"{flag} {path} exists: pass --overwrite to replace it")
        if not os.access(target, os.W_OK) or not target.stat().st_mode & 0o222:
            raise ValueError(f"{flag} {path} is read-only: not replaced, even with --overwrite; make it "
                             f"writable (chmod u+w {path}) to replace it")


# `lqs score` names its settings by its flags in messages (corpus.setting)
SCORE_FLAGS = {"on_bad_record": "--on-bad-record", "max_chars": "--max-chars", "format": "--format",
               "score_field": "--score-field", "extra_fields": "--extra-fields"}


@corpus.settings_named(SCORE_FLAGS)
def score_files(inputs: Sequence[str], *, scorer: str, out: str, text_field: str = "text", score_field: str = "score",
                format: str | None = None, overwrite: bool = False,
                on_bad_record: str = "error", rejects: str | None = None, extra_fields: Sequence[str] = (),
                max_chars: int = corpus.MAX_CHARS, revision: str | None = None, device: str = "auto",
                dtype: str = "auto",
                max_tokens: int | None = None, max_windows_per_doc: int | None = None, chunk_docs: int = 4096,
                tokenizer_workers: int | None = None, trust_remote_code: bool = False, progress: bool = True
                ) -> dict[str, Any]:
    """`lqs score`: every record of `inputs` (files, globs, directories, URLs, as corpus.path takes
    them, or "-": JSONL on standard input) scored into `out` (or "-": standard output, JSONL), in
    input order, by the batched path of score_shard. Bad records stop the run (error) or go to
    `rejects` (skip; default: <out>.rejects.jsonl, written only if any). Outputs are checked
    before any scoring (check_outputs); an existing one is replaced only with `overwrite`, and
    an earlier rejects file is replaced or removed with the output. Nothing scored (every
    record rejected) is a RuntimeError, raised once the output and rejects are written."""
    from lqs.config import corpus_files

    start = time.perf_counter()
    if "-" in inputs and len(inputs) > 1:
        raise ValueError("standard input (-) is read alone: give either - or files")
    files = ["-"] if list(inputs) == ["-"] else corpus_files(list(inputs))
    format = format_of(out, format, files)
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"--on-bad-record must be error or skip, not {on_bad_record!r}")
    if out == "-" and on_bad_record == "skip" and not rejects:
        raise ValueError("--out - with --on-bad-record skip needs --rejects PATH for the rejected records")
    unknown = [f for f in extra_fields if f not in output.EXTRA_FIELDS]
    if unknown:
        raise ValueError(f"unknown extra field {unknown[0]!r}: choose from {', '.join(output.EXTRA_FIELDS)}")
    if rejects == "-":
        raise ValueError("--rejects -: the rejects cannot go to standard output; give a file")
    rejects = rejects or (None if out == "-" else f"{out}.rejects.jsonl")
    check_outputs(inputs, scorer, {flag: path for flag, path in (("--out", out), ("--rejects", rejects))
                                   if path not in (None, "-")}, overwrite)
    meter = Meter()
    output_fields = corpus.output_fields(score_field, extra_fields)  # a record holding one is a bad record
    input_schema = None
    if format == "parquet":  # one schema, settled by a first pass over the input: a file can be read twice
        if files == ["-"]:
            raise ValueError("a Parquet output's schema is settled in a first pass over the input, and standard input "
                             "(-) cannot be read twice: give the input as a file, or --format jsonl or jsonl.gz")
        input_schema = output.corpus_schema(files, text_field, max_chars, output_fields)
    bar = tqdm(desc="score", unit="doc", mininterval=2, disable=not progress)
    rate = TokenRate(bar)
    with contextlib.ExitStack() as stack:
        scorer_, pool, workers = stack.enter_context(loaded_scorer(
            resolve_scorer(scorer, revision), device, dtype, trust_remote_code, None, tokenizer_workers))
        rejected = stack.enter_context(_Rejects(rejects))
        writer = stack.enter_context(ScoredWriter(out, format, [score_field, *extra_fields], input_schema))
        records = corpus.iter_records(files, text_field, max_chars, output_fields=output_fields)
        records = checked_records(output.fitting(records, input_schema), on_bad_record, rejected)
        for chunk, result in scored_chunks(scorer_, pool, workers, records, meter, chunk_docs=chunk_docs,
                                           max_tokens=max_tokens, max_windows_per_doc=max_windows_per_doc):
            with meter.split("write"):
                writer.write(chunk, result.columns(score_field, extra_fields))
            bar.update(len(chunk))
            rate.add(meter.tokens - rate.tokens)
    bar.close()
    log.info(meter.report(f"scored {out}", time.perf_counter() - start, workers if pool is not None else None))
    if meter.documents == 0:
        raise RuntimeError(f"nothing was scored: all {rejected.rejected} records were rejected (the reasons are "
                           f"in {rejects}); the output {out} has no records")
    summary = {"documents_read": meter.documents + rejected.rejected, "documents_scored": meter.documents,
               "documents_rejected": rejected.rejected, "documents_truncated": meter.truncated,
               "tokens": meter.tokens, "output": out, "format": format,
               "rejects": rejects if rejected.rejected else None}
    if meter.by_source:
        summary["mean_score_by_source"] = {k: t / n for k, (t, n) in sorted(meter.by_source.items())}
    return summary
