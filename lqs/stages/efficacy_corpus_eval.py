"""Stage `efficacy_corpus_eval`: the efficacy experiment's held-out corpus documents, its corpus evaluation set
(docs/stages.md#the-efficacy-experiment)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lqs.efficacy import document_lengths, read_windows
from lqs.io import write_table
from lqs.sample import MIN_TOKENS
from lqs.stage import Arg, Stage

SEED = 0  # the draw's fixed seed: the same documents for every arm and run seed


@dataclass(frozen=True)
class Settings:
    docs: int  # efficacy.corpus_eval_docs


def efficacy_corpus_eval(shard_paths: Sequence[str], out: str, settings: Settings, seed: int = SEED) -> int:
    """Writes the corpus evaluation set (doc_id, input_ids): `docs` documents of at least two
    tokens drawn with a fixed seed, the same for every arm and run seed; no arm trains on them."""
    docs = settings.docs
    doc_ids, lengths = document_lengths(shard_paths)
    eligible = doc_ids[lengths >= MIN_TOKENS]
    if docs >= len(eligible):
        raise ValueError(f"efficacy.corpus_eval_docs {docs}: the corpus has {len(eligible)} documents of at least "
                         f"{MIN_TOKENS} tokens, and the arms need documents to train on: hold out fewer")
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, docs, replace=False))
    windows = read_windows(shard_paths, chosen)
    write_table(out, pa.table({"doc_id": pa.array(chosen, pa.int64()),
                               "input_ids": pa.array([windows[d] for d in chosen], pa.list_(pa.int32()))}))
    return docs


STAGE = Stage(
    help="the efficacy experiment's held-out corpus documents",
    run=efficacy_corpus_eval,
    args=(Arg("shard_paths", "+"), Arg("--out")),
    settings=Settings,
    counters={"documents": None},
)
