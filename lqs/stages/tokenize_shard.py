"""Stage `tokenize_shard`: corpus shard -> windows of proxy-tokenizer ids (docs/stages.md#tokenize_shard)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from lqs import corpus, sources
from lqs.batch_scoring import record_source
from lqs.corpus import CorpusReading
from lqs.io import TokenRate, atomic_open, parquet_writer
from lqs.splits import files_metadata, planned_splits
from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.tokenize import SHARD_SCHEMA, cut_windows, load_tokenizer, tokenize_texts, tokenizer_metadata, window_frame

BATCH_DOCS = 512  # documents tokenized per call of the tokenizer


@dataclass(frozen=True)
class Settings:
    corpus: CorpusReading  # the shard's splits, corpus.text_field, max_chars
    max_length: int  # corpus.max_length
    on_bad_record: str  # corpus.on_bad_record


def tokenize_shard(
    plan: str,
    shard: str,
    tokenizer_dir: str,
    out: str,
    rejects: str,
    settings: Settings,
    batch_docs: int = BATCH_DOCS,
) -> dict[str, int]:
    """Writes the windows of shard `shard` of the corpus plan `plan` to `out` (with the shard's
    files in its metadata, lqs.splits) and its rejected records (and unreadable files) to
    `rejects` (JSONL). Nothing here depends on an output setting: the writers of the scored output
    reject the records it cannot take (lqs.scored_records)."""
    s = settings
    splits = planned_splits(plan, shard, s.corpus.splits_sha256)
    tokenizer = load_tokenizer(tokenizer_dir)
    counts = {"documents": 0, "rejected": 0, "windows": 0, "tokens": 0}
    batch: list[corpus.Record] = []
    prefix, suffix, budget = window_frame(tokenizer, s.max_length)

    def flush(writer) -> None:
        columns: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
        for record, (ids, ends) in zip(batch, tokenize_texts(tokenizer, [r.text for r in batch])):
            source = record_source(record)
            for w, (a, b) in enumerate(cut_windows(len(ids), ends, budget)):
                columns["doc_id"].append(record.doc_id)
                columns["window"].append(w)
                columns["input_ids"].append(prefix + ids[a:b] + suffix)
                columns["fingerprint"].append(record.fingerprint)
                columns["ends"].append(ends[np.searchsorted(ends, a):np.searchsorted(ends, b)] - a)
                columns["source"].append(source)
        tokens = sum(map(len, columns["input_ids"]))
        counts["windows"] += len(columns["doc_id"])
        counts["tokens"] += tokens
        rate.add(tokens)
        writer.write_table(pa.table(columns, schema=SHARD_SCHEMA))
        batch.clear()

    records = s.corpus.records(splits, require_records=False)
    bar = tqdm(records, desc=f"tokenize shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    files = list(dict.fromkeys(map(sources.source_name, (split.path for split in splits))))
    # where its tokenizer is the scorer's, tokenize_scorer_shard cuts the scorer's windows from these ids
    schema = SHARD_SCHEMA.with_metadata(files_metadata(files) | tokenizer_metadata(tokenizer))
    with parquet_writer(out, schema) as writer, atomic_open(rejects) as rejects_file:
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
    args=(Arg("--plan"), Arg("--shard"), Arg("--tokenizer-dir"), Arg("--out"), Arg("--rejects")),
    settings=Settings,
    counters={"documents": "documents", "tokens": "tokens", "windows": "windows"},
    preload=TOKENIZERS,
)
