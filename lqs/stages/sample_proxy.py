"""Stage `sample_proxy`: a seeded random subset of corpus windows, the proxy set (docs/stages.md#sample_proxy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lqs.io import write_table
from lqs.sample import draw_windows
from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.tokenize import load_tokenizer


@dataclass(frozen=True)
class Settings:
    size: int  # proxy.size
    seed: int  # proxy.seed


def sample_proxy(shard_paths: Sequence[str], tokenizer_dir: str, out: str, settings: Settings) -> int:
    """Writes samples.parquet: sample_id, doc_id, window, input_ids, and the window's text."""
    table = draw_windows(shard_paths, settings.size, settings.seed, what="proxy samples (proxy.size)")
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = tokenizer.batch_decode(table["input_ids"].to_pylist(), skip_special_tokens=True)
    table = table.add_column(0, "sample_id", pa.array(np.arange(len(table)), pa.int64()))
    table = table.append_column("text", pa.array(texts, pa.string()))
    write_table(out, table)
    return len(table)


STAGE = Stage(
    help="draw the proxy set from the corpus windows",
    run=sample_proxy,
    args=(Arg("shard_paths", "+"), Arg("--tokenizer-dir"), Arg("--out")),
    settings=Settings,
    counters={"samples": None},
    preload=TOKENIZERS,
)
