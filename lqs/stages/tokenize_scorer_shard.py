"""Stage `tokenize_scorer_shard`: corpus shard -> the scorer's windows (docs/stages.md#tokenize_scorer_shard).

Runs on a CPU node, so that score_shard's GPU runs the model alone. It tokenizes exactly the
documents tokenization accepted (their fingerprints checked against tokenize_shard's), with the
scorer's tokenizer (the checkpoint's own, or the base's a trained scorer keeps), into the file
lqs.scorer_windows describes: a row group per inference.chunk_docs documents, windows longest first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lqs import scorer_windows
from lqs.batch_scoring import accepted_documents, accepted_records, chunked
from lqs.corpus import CorpusReading
from lqs.io import TokenRate, atomic_path
from lqs.scorer import SCORER_CONFIG, scoring_windows
from lqs.splits import planned_splits
from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.tokenize import load_tokenizer


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
    `plan` to `out`; returns the documents, windows and tokens written."""
    import pyarrow.parquet as pq

    s = settings
    splits = planned_splits(plan, shard, s.corpus.splits_sha256)
    tokenizer = load_tokenizer(tokenizer_dir, s.trust_remote_code)
    max_length = s.max_length
    if max_length is None:
        max_length = int(json.loads((Path(tokenizer_dir) / SCORER_CONFIG).read_text())["max_length"])
    num_accepted = sum(len(ids) for ids, _ in accepted_documents(tokenized_shard))
    records = accepted_records(s.corpus.records(splits, require_records=False),
                               tokenized_shard)
    counts = {"documents": 0, "windows": 0, "tokens": 0}
    bar = tqdm(desc=f"tokenize shard {shard} for the scorer", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    schema = scorer_windows.SCHEMA.with_metadata(scorer_windows.metadata(tokenizer, max_length,
                                                                         s.max_windows_per_doc))
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for chunk in chunked(records, s.chunk_docs):
            windows, truncated = scoring_windows(tokenizer, [r.text for r in chunk], max_length,
                                                 s.max_windows_per_doc)
            by_doc: list[list[list[int]]] = [[] for _ in chunk]
            for w in windows:
                by_doc[w.doc].append(w.ids)
            sources = [source if isinstance(source := (r.fields or {}).get("source"), str) else None for r in chunk]
            table = scorer_windows.chunk_table([r.doc_id for r in chunk], by_doc, truncated,
                                               [r.fingerprint for r in chunk], sources)
            writer.write_table(table, row_group_size=len(table))
            tokens = sum(len(w.ids) for w in windows)
            counts["documents"] += len(chunk)
            counts["windows"] += len(windows)
            counts["tokens"] += tokens
            bar.update(len(chunk))
            rate.add(tokens)
    bar.close()
    if counts["documents"] != num_accepted:
        raise RuntimeError(f"shard {shard}: tokenization accepted {num_accepted} documents but "
                           f"{counts['documents']} were found to score; was the corpus changed?")
    return counts


STAGE = Stage(
    help="tokenize one corpus shard into the scorer's windows (a CPU job)",
    run=tokenize_scorer_shard,
    args=(Arg("--plan"), Arg("--shard"), Arg("--tokenized-shard"), Arg("--tokenizer-dir"), Arg("--out")),
    settings=Settings,
    counters={"tokens": "tokens", "documents": "documents", "windows": "windows"},
    preload=TOKENIZERS,
)
