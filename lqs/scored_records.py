"""The scored records: a corpus shard's records joined with their scores, written in output.format
(docs/stages.md#gather_scores, #write_part).

Both writers of the scored output use it: gather_scores (layout single: every shard, into one
file) and write_part (layout per_shard: one shard, into its part). The corpus is streamed once, in
input order, and each document's values are pulled from its shard's (doc-id ordered) score file,
so memory does not grow with the corpus. A record the output cannot take (it already holds a
field the output adds, or a Parquet output cannot hold it exactly) is a bad record here, so that
tokenization and scoring never depend on an output setting.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from lqs import corpus, output
from lqs.batch_scoring import INDEX_SCHEMA, SCORER_DIGESTS_KEY
from lqs.io import parquet_batches, parquet_file
from lqs.splits import Split

SCORE_COLUMNS = ["doc_id", "score", "truncated", "n_tokens", "n_windows", "fingerprint", "source"]
CHUNK_RECORDS = 4096  # records handed to the writer at a time


def _scores(path: str) -> Iterator[tuple]:
    """(doc_id, score, truncated, n_tokens, n_windows, fingerprint, source) of each document of a score shard."""
    corpus.require_fingerprints(path)
    for batch in parquet_batches(path, columns=SCORE_COLUMNS):
        yield from zip(*(batch.column(c).to_pylist() for c in SCORE_COLUMNS))


def scorer_digests(score_path: str) -> dict[str, str] | None:
    """The digests of the scorer weights that computed a score shard's scores (score_shard records
    them as loading checked them); None for a checkpoint saved without digests."""
    recorded = (parquet_file(score_path).schema_arrow.metadata or {}).get(SCORER_DIGESTS_KEY)
    return None if recorded is None else json.loads(recorded)


def read_rejects(path: str, files: dict[str, str] | None = None) -> dict[int, str]:
    """A shard's rejects file (JSONL, corpus.Record.reject_entry): its records' lines by the
    shard's doc id. The lines of unreadable files (doc_id null) go to `files`, by file."""
    rejected = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if entry["doc_id"] is None:
                if files is not None:
                    files[entry["file"]] = line
            else:
                rejected[entry["doc_id"]] = line
    return rejected


def _changed_since_rejected(record: corpus.Record, entry_line: str) -> bool:
    """Whether `record` differs from the record its rejects entry (a JSON line) holds: a bad
    record fixed since, its file's mtime kept, would otherwise stay out of the output silently
    while the rejects show a line the corpus no longer has."""
    entry, now = json.loads(entry_line), json.loads(corpus.json_line(record.reject_entry()))
    return (entry.get("record"), entry.get("record_base64")) != (now.get("record"), now.get("record_base64"))


@dataclass
class Written:
    """What write_scored wrote: per shard, the documents written (shard doc ids, scores, sources:
    the index) in storage order; and the counts."""
    ids: list[list[int]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    sources: list[list[str | None]] = field(default_factory=list)
    read: int = 0
    scored: int = 0
    truncated: int = 0
    files_with_records: set[str] = field(default_factory=set)

    def index_table(self, shard: int = 0) -> pa.Table:
        """One shard's documents as an INDEX_SCHEMA table, with the shard's doc ids."""
        return pa.table([pa.array(self.ids[shard], pa.int64()), pa.array(self.scores[shard], pa.float64()),
                         pa.array(self.sources[shard], pa.string())], schema=INDEX_SCHEMA)


def write_scored(shard_splits: Sequence[Sequence[Split]], score_paths: Sequence[str],
                 rejected: Sequence[dict[int, str]], out: str, *, reading: corpus.CorpusReading,
                 output_format: str, score_field: str, extra_fields: Sequence[str], on_bad_record: str,
                 input_schema=None, metadata=None) -> Written:
    """Streams the corpus shards (their splits: `shard_splits`) once, in input order, joining each
    document's values from its shard's score file, into one output file `out` (the records read
    as `reading` says). A scored record that the output
    cannot take is an error, or (on_bad_record skip) added to its shard's `rejected` (rejects
    lines by shard doc id)."""
    written = Written()
    names = ["score", *extra_fields]  # the score files' columns, written as score_field and extra_fields
    added = corpus.output_fields(score_field, extra_fields)
    columns_type = None if input_schema is None else output.columns_of(input_schema)
    with output.ScoredWriter(out, output_format, [score_field, *extra_fields], input_schema, metadata) as writer:
        chunk, columns = [], {name: [] for name in names}
        for splits, score_path, shard_rejected in zip(shard_splits, score_paths, rejected):
            ids, scores, sources = [], [], []
            written.ids.append(ids)
            written.scores.append(scores)
            written.sources.append(sources)
            shard_scores = _scores(score_path)
            for record in reading.records(splits, require_records=False):
                if record.doc_id is None:  # an unreadable file, no documents: tokenize_shard listed it in the rejects
                    continue
                written.read += 1
                written.files_with_records.add(record.path)
                if record.doc_id in shard_rejected:
                    if _changed_since_rejected(record, shard_rejected[record.doc_id]):
                        raise RuntimeError(f"{record.where}: the corpus changed since it was tokenized (this record "
                                           f"differs from the one rejected then); {corpus.RETOKENIZE}")
                    continue
                doc_id, score, was_truncated, n_tokens, n_windows, fingerprint, source = next(shard_scores,
                                                                                              (None,) * 7)
                if doc_id != record.doc_id:
                    raise RuntimeError(f"{record.where}: this document is neither scored nor rejected ({score_path} "
                                       f"has doc id {doc_id} next, not {record.doc_id}); rerun its shard")
                if record.error is not None or record.fingerprint != fingerprint:
                    raise RuntimeError(f"{record.where}: the corpus changed since it was scored (this record differs "
                                       f"from the one scored in {score_path}); {corpus.RETOKENIZE}")
                error = corpus.output_field_error(record.fields, added)
                if not error and columns_type is not None and record.raw is not None:
                    if reason := output.misfit(record.fields, columns_type):
                        error = f"{reason}; {corpus.setting('format')} jsonl keeps every record as it is"
                if error:
                    bad = dataclasses.replace(record, error=error)
                    corpus.check(bad, on_bad_record)  # raises under on_bad_record: error
                    shard_rejected[record.doc_id] = corpus.json_line(bad.reject_entry()) + "\n"
                    continue
                values = dict(score=score, truncated=bool(was_truncated), n_tokens=n_tokens, n_windows=n_windows)
                ids.append(doc_id)
                scores.append(score)
                sources.append(source)
                chunk.append(record)
                for name in names:
                    columns[name].append(values[name])
                if len(chunk) == CHUNK_RECORDS:
                    writer.write(chunk, dict(zip(writer.fields, columns.values())))
                    chunk, columns = [], {name: [] for name in names}
                written.scored += 1
                written.truncated += bool(was_truncated)
            if next(shard_scores, None) is not None:
                raise RuntimeError(f"{score_path} holds documents the corpus does not have; rerun scoring")
        writer.write(chunk, dict(zip(writer.fields, columns.values())))
    if written.scored + sum(map(len, rejected)) != written.read:
        raise RuntimeError(f"read {written.read} documents but scored {written.scored} and rejected "
                           f"{sum(map(len, rejected))}")
    return written
