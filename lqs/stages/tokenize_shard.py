"""Stage `tokenize_shard`: corpus shard -> windows of proxy-tokenizer ids (docs/stages.md#tokenize_shard)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from tqdm import tqdm

from lqs import corpus, sources
from lqs.corpus import CorpusReading
from lqs.io import TokenRate, atomic_open, parquet_writer
from lqs.splits import files_metadata, planned_splits
from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.tokenize import SHARD_SCHEMA, load_tokenizer, tokenize_windows

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

    records = s.corpus.records(splits, require_records=False)
    bar = tqdm(records, desc=f"tokenize shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    files = list(dict.fromkeys(map(sources.source_name, (split.path for split in splits))))
    schema = SHARD_SCHEMA.with_metadata(files_metadata(files))
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
