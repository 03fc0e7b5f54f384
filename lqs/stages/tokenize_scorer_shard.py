"""Stage `tokenize_scorer_shard`: corpus shard -> the scorer's windows (docs/stages.md#tokenize_scorer_shard).

Runs on a CPU node, so that score_shard's GPU runs the model alone. It writes the windows of
exactly the documents tokenization accepted, in the scorer's tokenizer (the checkpoint's own, or
the base's a trained scorer keeps), into the file lqs.scorer_windows describes: a row group per
inference.chunk_docs documents, windows longest first. Where that tokenizer made the tokenized
shard (the checkpoint's, or a proxy tokenizer an `arch` scorer takes), the windows are cut from the
shard's ids and window ends, and the corpus is not read; else the shard's records are read and
tokenized again (their fingerprints checked against tokenize_shard's).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lqs import scorer_windows
from lqs.batch_scoring import accepted_documents, accepted_records, chunked, record_source
from lqs.corpus import CorpusReading, Record
from lqs.io import TokenRate, atomic_path
from lqs.scorer import SCORER_CONFIG, scoring_windows, scoring_windows_of_ids
from lqs.splits import planned_splits
from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.tokenize import load_tokenizer, made_with, shard_documents, window_frame


@dataclass(frozen=True)
class Settings:
    corpus: CorpusReading  # the shard's splits, corpus.text_field, max_chars
    # scorer.max_length for a scorer the workflow trains; None: the checkpoint's (its scorer.json)
    max_length: int | None
    max_windows_per_doc: int | None  # inference.max_windows_per_doc
    chunk_docs: int  # inference.chunk_docs: documents per row group
    trust_remote_code: bool  # models.trust_remote_code


def tokenize_scorer_shard(plan: str, shard: str, tokenized_shard: str, tokenizer_dir: str, out: str,
                          settings: Settings) -> dict[str, int]:
    """Writes the scorer's windows of the accepted documents of shard `shard` of the corpus plan
    `plan` to `out`; returns the documents, windows and tokens written, and the texts tokenized
    (none where the windows were cut from the tokenized shard's ids)."""
    import pyarrow.parquet as pq

    s = settings
    splits = planned_splits(plan, shard, s.corpus.splits_sha256)
    tokenizer = load_tokenizer(tokenizer_dir, s.trust_remote_code)
    max_length = s.max_length
    if max_length is None:
        max_length = int(json.loads((Path(tokenizer_dir) / SCORER_CONFIG).read_text())["max_length"])
    num_accepted = sum(len(ids) for ids, _ in accepted_documents(tokenized_shard))
    from_ids = made_with(tokenized_shard, tokenizer)
    if from_ids:
        chunks = _chunks_from_ids(tokenized_shard, tokenizer, max_length, s)
    else:
        records = accepted_records(s.corpus.records(splits, require_records=False), tokenized_shard)
        chunks = _chunks_from_text(records, tokenizer, max_length, s)
    counts = {"documents": 0, "windows": 0, "tokens": 0, "texts_tokenized": 0}
    bar = tqdm(desc=f"tokenize shard {shard} for the scorer", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    schema = scorer_windows.SCHEMA.with_metadata(scorer_windows.metadata(tokenizer, max_length,
                                                                         s.max_windows_per_doc))
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for doc_ids, by_doc, truncated, fingerprints, sources in chunks:
            table = scorer_windows.chunk_table(doc_ids, by_doc, truncated, fingerprints, sources)
            writer.write_table(table, row_group_size=len(table))
            tokens = sum(len(ids) for windows in by_doc for ids in windows)
            counts["documents"] += len(doc_ids)
            counts["windows"] += len(table)
            counts["tokens"] += tokens
            bar.update(len(doc_ids))
            rate.add(tokens)
    bar.close()
    if not from_ids:
        counts["texts_tokenized"] = counts["documents"]
    if counts["documents"] != num_accepted:
        raise RuntimeError(f"shard {shard}: tokenization accepted {num_accepted} documents but "
                           f"{counts['documents']} were found to score; was the corpus changed?")
    return counts


Chunk = tuple[list[int], list[list[list[int]]], list[bool], list[int], list[str | None]]


def _chunks_from_ids(tokenized_shard: str, tokenizer, max_length: int, s: Settings) -> Iterator[Chunk]:
    """The windows of inference.chunk_docs documents at a time, cut from the shard's ids."""
    frame = window_frame(tokenizer, max_length)
    for chunk in chunked(shard_documents(tokenized_shard, tokenizer), s.chunk_docs):
        cut = [scoring_windows_of_ids(d.ids, d.ends, frame, s.max_windows_per_doc) for d in chunk]
        yield ([d.doc_id for d in chunk], [windows for windows, _ in cut], [truncated for _, truncated in cut],
               [d.fingerprint for d in chunk], [d.source for d in chunk])


def _chunks_from_text(records: Iterator[Record], tokenizer, max_length: int, s: Settings) -> Iterator[Chunk]:
    """The windows of inference.chunk_docs records at a time, their texts tokenized."""
    for chunk in chunked(records, s.chunk_docs):
        windows, truncated = scoring_windows(tokenizer, [r.text for r in chunk], max_length, s.max_windows_per_doc)
        by_doc: list[list[list[int]]] = [[] for _ in chunk]
        for w in windows:
            by_doc[w.doc].append(w.ids)
        yield ([r.doc_id for r in chunk], by_doc, truncated, [r.fingerprint for r in chunk],
               [record_source(r) for r in chunk])


STAGE = Stage(
    help="tokenize one corpus shard into the scorer's windows (a CPU job)",
    run=tokenize_scorer_shard,
    args=(Arg("--plan"), Arg("--shard"), Arg("--tokenized-shard"), Arg("--tokenizer-dir"), Arg("--out")),
    settings=Settings,
    counters={"tokens": "tokens", "documents": "documents", "windows": "windows", "texts tokenized": "texts_tokenized"},
    preload=TOKENIZERS,
)
