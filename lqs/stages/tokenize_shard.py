"""Stage `tokenize_shard`: corpus shard -> windows of proxy-tokenizer ids (docs/stages.md#tokenize_shard)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from tqdm import tqdm

from lqs import corpus, output
from lqs.io import TokenRate, atomic_open, parquet_writer
from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.tokenize import SHARD_SCHEMA, load_tokenizer, tokenize_windows

BATCH_DOCS = 512  # documents tokenized per call of the tokenizer


@dataclass(frozen=True)
class Settings:
    num_shards: int | str  # corpus.num_shards
    text_field: str  # corpus.text_field
    max_chars: int  # corpus.max_chars
    max_length: int  # corpus.max_length
    on_bad_record: str  # corpus.on_bad_record
    score_field: str  # output.score_field: a record that already has it is rejected here
    extra_fields: Sequence[str]  # output.extra_fields, likewise


def tokenize_shard(
    corpus_paths: Sequence[str],
    tokenizer_dir: str,
    shard: int,
    out: str,
    rejects: str,
    settings: Settings,
    output_schema: str | None = None,
    batch_docs: int = BATCH_DOCS,
) -> dict[str, int]:
    """Writes the shard's windows to `out` and its rejected records (and unreadable files) to
    `rejects` (JSONL). A record that already has a field the output adds (output.score_field,
    output.extra_fields) is rejected here, before anything is scored, and so is, with `output_schema`
    (output.format parquet: the output_schema stage's file), a record it cannot hold exactly."""
    s = settings
    tokenizer = load_tokenizer(tokenizer_dir)
    counts = {"documents": 0, "rejected": 0, "windows": 0, "tokens": 0}
    batch: list[corpus.Record] = []

    def flush(writer) -> None:
        windows = tokenize_windows(tokenizer, [r.text for r in batch], settings.max_length)
        doc_ids, window_idx, ids, fingerprints = [], [], [], []
        for record, doc_windows in zip(batch, windows):
            fingerprint = record.fingerprint
            for w, window in enumerate(doc_windows):
                doc_ids.append(record.doc_id)
                window_idx.append(w)
                ids.append(window)
                fingerprints.append(fingerprint)
                counts["tokens"] += len(window)
        counts["windows"] += len(ids)
        rate.add(sum(map(len, ids)))
        writer.write_table(pa.table([doc_ids, window_idx, ids, fingerprints], schema=SHARD_SCHEMA))
        batch.clear()

    records = output.fitting(corpus.iter_records(corpus_paths, s.text_field, s.max_chars, shard, s.num_shards,
                                                 corpus.output_fields(s.score_field, s.extra_fields)),
                             output.read_schema(output_schema) if output_schema else None)
    bar = tqdm(records, desc=f"tokenize shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with parquet_writer(out, SHARD_SCHEMA) as writer, atomic_open(rejects) as rejects_file:
        for record in bar:
            if corpus.check(record, s.on_bad_record):
                counts["documents"] += 1
                batch.append(record)
                if len(batch) >= batch_docs:
                    flush(writer)
            else:
                counts["rejected"] += record.doc_id is not None  # a document, not an unreadable file
                rejects_file.write(corpus.json_line(record.reject_entry()) + "\n")
        if batch:
            flush(writer)
    return counts


STAGE = Stage(
    help="tokenize one corpus shard into windows",
    run=tokenize_shard,
    args=(Arg("corpus_paths", "+"), Arg("--tokenizer-dir"), Arg("--shard", type=int), Arg("--out"), Arg("--rejects"),
          Arg("--output-schema", required=False)),
    settings=Settings,
    counters={"documents": "documents", "tokens": "tokens", "windows": "windows"},
    preload=TOKENIZERS,
)
