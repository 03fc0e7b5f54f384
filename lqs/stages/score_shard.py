"""Stage `score_shard`: score every accepted document of one corpus shard (docs/stages.md#score_shard).

Reads the shard's windows, tokenized beforehand on a CPU node (stage tokenize_scorer_shard,
lqs.scorer_windows), a row group at a time, the next one read in a thread while the model runs:
the GPU runs the model alone, and memory does not grow with the input. It never reads the corpus
(with output.layout per_shard, write_part writes the shard's scored records). The log ends
with the time split (read / model / write) and the tokens/s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass

import pyarrow as pa
from tqdm import tqdm

from lqs import scorer_windows
from lqs.batch_scoring import SCORER_DIGESTS_KEY, SCORES_SCHEMA, ChunkScores, Meter
from lqs.io import TokenRate, parquet_writer, write_json
from lqs.scorer import load, prefetched
from lqs.stage import MODELS, Arg, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    max_tokens: int | None  # inference.max_tokens
    dtype: str  # inference.dtype
    compile: bool  # inference.compile
    device: str  # device
    trust_remote_code: bool  # models.trust_remote_code


def score_shard(windows: str, scorer_dir: str, out: str, settings: Settings, shard: str = "",
                stats_out: str | None = None) -> dict[str, int]:
    """Writes the scores of the documents of `windows` (tokenize_scorer_shard's file) to `out`
    (SCORES_SCHEMA, in doc-id order, with the digests of the weights that scored them) and its
    counts and per-source score sums to `stats_out` (JSON)."""
    s = settings
    start = time.perf_counter()
    meter = Meter()
    bar = tqdm(desc=f"score shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with contextlib.ExitStack() as stack:
        scorer = load(scorer_dir, s.device, s.trust_remote_code, s.dtype, s.compile)
        scorer_windows.check_made_for(windows, scorer.tokenizer, scorer.max_length)
        schema = SCORES_SCHEMA if scorer.weights_sha256 is None else SCORES_SCHEMA.with_metadata(
            {SCORER_DIGESTS_KEY: json.dumps(scorer.weights_sha256, sort_keys=True)})
        writer = stack.enter_context(parquet_writer(out, schema))
        for chunk in meter.split.iterate("read", prefetched(scorer_windows.read_chunks(windows), lambda c: c)):
            with meter.split("model"):  # ends with the chunk's one host sync: the GPU time is in it
                scores = scorer.score_chunk(chunk, s.max_tokens)
            meter.flops += scorer.forward_flops(chunk.lengths.tolist())
            result = ChunkScores(scores.tolist(), chunk.truncated.tolist(), chunk.tokens_per_doc().tolist(),
                                 chunk.windows_per_doc().tolist())
            meter.add(chunk.sources, result)
            with meter.split("write"):
                writer.write_table(pa.table({"doc_id": chunk.doc_ids, "score": scores, "truncated": chunk.truncated,
                                             "n_tokens": result.n_tokens, "n_windows": result.n_windows,
                                             "fingerprint": chunk.fingerprints, "source": chunk.sources},
                                            schema=schema))
            bar.update(len(chunk.doc_ids))
            rate.add(chunk.tokens)
        if stats_out:
            write_json(stats_out, {"shard": shard, **meter.counts(), "by_source": meter.by_source})
    bar.close()
    log.info(meter.report(f"shard {shard}", time.perf_counter() - start, None))
    return meter.counts()


STAGE = Stage(
    help="score the documents of one corpus shard from its windows (a GPU job)",
    run=score_shard,
    args=(Arg("--windows"), Arg("--scorer-dir"), Arg("--out"), Arg("--stats-out", required=False),
          Arg("--shard", required=False)),
    settings=Settings,
    counters={"documents": "scored", "tokens": "tokens"},
    preload=MODELS,
)
