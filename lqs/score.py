"""Stage `score_shard`: score every accepted document of one corpus shard (DESIGN.md §5).

Streams the shard's records in chunks through the batched scorer, so memory does not grow with
the shard. Only documents that tokenization accepted are scored; the others are in its rejects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from lqs import corpus
from lqs.io import TokenRate, parquet_writer
from lqs.scorer import load

SCORES_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("truncated", pa.bool_())])


def accepted_doc_ids(tokenized_shard: str, batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """The ids of the documents tokenization accepted, ascending, a batch at a time: the shard
    has one row per window, in input order, so memory stays that of one batch."""
    last = -1
    for batch in pq.ParquetFile(tokenized_shard).iter_batches(batch_size=batch_rows, columns=["doc_id"]):
        ids = batch.column(0).to_numpy()
        if len(ids) == 0:
            continue
        if ids[0] < last or (np.diff(ids) < 0).any():
            raise RuntimeError(f"{tokenized_shard}: document ids are not in input order")
        new = ids[np.concatenate(([ids[0] != last], ids[1:] != ids[:-1]))]
        last = int(ids[-1])
        yield new


def score_shard(corpus_paths: Sequence[str], tokenized_shard: str, scorer_dir: str, out: str, *,
                shard: int, num_shards: int | str, text_field: str, max_chars: int,
                max_tokens: int | None, max_windows_per_doc: int | None, chunk_docs: int = 4096,
                dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False) -> dict[str, int]:
    scorer = load(scorer_dir, device, trust_remote_code, dtype)
    num_accepted = sum(len(ids) for ids in accepted_doc_ids(tokenized_shard))
    accepted = (int(i) for ids in accepted_doc_ids(tokenized_shard) for i in ids)
    next_accepted = next(accepted, None)
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

    # Both the records and the accepted ids come in input order: a merge, never a lookup table.
    records = corpus.iter_records(corpus_paths, text_field, max_chars, shard, num_shards)
    bar = tqdm(total=num_accepted, desc=f"score shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with parquet_writer(out, SCORES_SCHEMA) as writer:
        for record in records:
            if next_accepted is None or record.doc_id < next_accepted:
                continue  # a record tokenization rejected
            if record.doc_id > next_accepted or record.error is not None:
                break  # the accepted document is gone, or is now a bad record
            chunk.append(record)
            next_accepted = next(accepted, None)
            if len(chunk) >= chunk_docs:
                flush(writer)
        if chunk:
            flush(writer)
        if counts["scored"] != num_accepted:
            raise RuntimeError(f"shard {shard}: tokenization accepted {num_accepted} documents but "
                               f"{counts['scored']} were found to score; was the corpus changed?")
    bar.close()
    return counts
