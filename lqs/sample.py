"""The seeded window draw: a uniform random subset of corpus windows, for the proxy set (stage
`sample_proxy`, docs/stages.md#sample_proxy) and the trajectory's training batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lqs.io import read_parquet
from lqs.splits import corpus_ids_of_shards, with_corpus_ids

MIN_TOKENS = 2  # a sample needs at least one next-token prediction


def draw_windows(shard_paths: Sequence[str], n: int, seed: int, *, allow_repeats: bool = False,
                 what: str = "samples") -> pa.Table:
    """`n` windows of >= 2 tokens drawn uniformly without replacement, in drawn order.

    With `allow_repeats`, a draw larger than the corpus walks through successive seeded
    permutations of it (epochs) instead of failing.
    """
    eligible = []
    for path in shard_paths:
        lengths = pc.list_value_length(read_parquet(path, columns=["input_ids"])["input_ids"])
        eligible.append(np.flatnonzero(np.asarray(lengths) >= MIN_TOKENS))
    total = sum(len(e) for e in eligible)
    if total == 0:
        raise ValueError(f"the corpus has no window of at least {MIN_TOKENS} tokens to draw {what} from")
    rng = np.random.default_rng(seed)
    if n > total and not allow_repeats:
        raise ValueError(f"cannot draw {n} {what}: the corpus has only {total} windows of at "
                         f"least {MIN_TOKENS} tokens (lower the size or add documents)")
    if n <= total:
        chosen = rng.choice(total, size=n, replace=False)
    else:
        chosen = np.concatenate([rng.permutation(total) for _ in range(-(-n // total))])[:n]

    offsets = np.cumsum([0] + [len(e) for e in eligible])
    shard_of = np.searchsorted(offsets, chosen, side="right") - 1
    parts = [None] * n
    indices = corpus_ids_of_shards(shard_paths)
    for s, path in enumerate(shard_paths):
        picked = np.flatnonzero(shard_of == s)
        if len(picked) == 0:
            continue
        rows = eligible[s][chosen[picked] - offsets[s]]
        table = with_corpus_ids(read_parquet(path, ["doc_id", "window", "input_ids"]), indices[s]).take(pa.array(rows))
        for position, row in zip(picked, table.to_pylist()):
            parts[position] = row
    return pa.Table.from_pylist(parts, schema=pa.schema([
        ("doc_id", pa.int64()), ("window", pa.int32()), ("input_ids", pa.list_(pa.int32()))]))

