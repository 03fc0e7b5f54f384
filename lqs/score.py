"""Stage `score_shard`: score every accepted document of one corpus shard (DESIGN.md §5).

Streams the shard's records in chunks through the batched scorer, so memory does not grow with
the shard. Only documents that tokenization accepted are scored; the others are in its rejects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from lqs import corpus
from lqs.io import TokenRate, parquet_writer
from lqs.scorer import load

SCORES_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("truncated", pa.bool_())])


def accepted_doc_ids(tokenized_shard: str) -> np.ndarray:
    return np.unique(pq.read_table(tokenized_shard, columns=["doc_id"])["doc_id"].to_numpy())


def score_shard(corpus_paths: Sequence[str], tokenized_shard: str, scorer_dir: str, out: str, *,
                shard: int, num_shards: int | str, text_field: str, max_chars: int,
                max_tokens: int | None, max_windows_per_doc: int | None, chunk_docs: int = 4096,
                dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False) -> dict[str, int]:
    scorer = load(scorer_dir, device, trust_remote_code, dtype)
    accepted = accepted_doc_ids(tokenized_shard)
    counts = {"scored": 0, "truncated": 0}
    chunk: list[corpus.Record] = []

    def flush(writer) -> None:
        values, flags = scorer.score_with_truncation([r.text for r in chunk], max_tokens,
                                                     max_windows_per_doc)
        writer.write_table(pa.table({"doc_id": [r.doc_id for r in chunk], "score": values,
                                     "truncated": flags}, schema=SCORES_SCHEMA))
        counts["scored"] += len(chunk)
        counts["truncated"] += sum(flags)
        bar.update(len(chunk))
        rate.add(scorer.tokens_scored - rate.tokens)
        chunk.clear()

    records = corpus.iter_records(corpus_paths, text_field, max_chars, shard, num_shards)
    bar = tqdm(total=len(accepted), desc=f"score shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with parquet_writer(out, SCORES_SCHEMA) as writer:
        for record in records:
            i = np.searchsorted(accepted, record.doc_id)
            if i < len(accepted) and accepted[i] == record.doc_id:
                chunk.append(record)
                if len(chunk) >= chunk_docs:
                    flush(writer)
        if chunk:
            flush(writer)
    bar.close()
    if counts["scored"] != len(accepted):
        raise RuntimeError(f"shard {shard}: tokenization accepted {len(accepted)} documents but "
                           f"{counts['scored']} were found to score; was the corpus changed?")
    return counts
