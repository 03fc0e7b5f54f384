"""Stage `score_shard`: score every accepted document of one corpus shard (docs/stages.md#score_shard).

Streams the shard's records in chunks through the batched scorer (lqs.batch_scoring, the path
`lqs score` shares), so memory does not grow with the input. It scores only the documents that
tokenization accepted (the others are in its rejects) and, with output.layout per_shard, writes the
shard's scored records itself. The log ends with the time split (read / tokenize / model / write)
and the tokens/s.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
from tqdm import tqdm

from lqs import corpus, output, provenance, sources
from lqs.batch_scoring import SCORES_SCHEMA, Meter, accepted_documents, accepted_records, loaded_scorer, scored_chunks
from lqs.io import TokenRate, parquet_writer, write_json
from lqs.output import ScoredWriter
from lqs.stage import MODELS, Arg, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    num_shards: int | str  # corpus.num_shards
    text_field: str  # corpus.text_field
    max_chars: int  # corpus.max_chars
    shard: int  # the job's shard (wildcard)
    max_tokens: int | None  # inference.max_tokens
    max_windows_per_doc: int | None  # inference.max_windows_per_doc
    chunk_docs: int  # inference.chunk_docs
    dtype: str  # inference.dtype
    tokenizer_workers: int | None  # inference.tokenizer_workers
    device: str  # device
    trust_remote_code: bool  # models.trust_remote_code
    # output.layout per_shard only, with --part-out: the rule passes them then alone (the part is the
    # only file they change), so that editing them does not rescore a single-layout run
    output_format: str | None = None  # output.format
    score_field: str | None = None  # output.score_field
    extra_fields: Sequence[str] | None = None  # output.extra_fields
    # a Parquet part's provenance block (lqs.provenance): the scored output's configuration digest
    # (rules/common.smk CONFIG_DIGESTS) and the versions of the shard's remote corpus files
    config_sha256: str | None = None
    corpus_versions: Mapping[str, str] | None = None


def score_shard(corpus_paths: Sequence[str], tokenized_shard: str, scorer_dir: str, out: str, settings: Settings,
                stats_out: str | None = None, part_out: str | None = None, output_schema: str | None = None,
                prefetch: bool | None = None) -> dict[str, int]:
    """Writes the shard's scores to `out` (SCORES_SCHEMA), its counts and per-source score sums to
    `stats_out` (JSON), and with `part_out` (output.layout per_shard) its scored records, in input
    order, in output.format; a Parquet part with the whole corpus's schema, the output_schema
    stage's file `output_schema`, so that every part has the same one, and the provenance block
    in its metadata. `prefetch`: as lqs.batch_scoring.loaded_scorer (default: on a GPU)."""
    s = settings
    start = time.perf_counter()
    meter = Meter()
    with meter.split("read"):
        num_accepted = sum(len(ids) for ids, _ in accepted_documents(tokenized_shard))
        input_schema = output.read_schema(output_schema) if part_out and output_schema else None
    records = accepted_records(corpus.iter_records(corpus_paths, s.text_field, s.max_chars, s.shard, s.num_shards),
                               tokenized_shard)
    bar = tqdm(total=num_accepted, desc=f"score shard {s.shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with contextlib.ExitStack() as stack:
        scorer, pool, workers = stack.enter_context(loaded_scorer(scorer_dir, s.device, s.dtype, s.trust_remote_code,
                                                                  prefetch, s.tokenizer_workers))
        writer = stack.enter_context(parquet_writer(out, SCORES_SCHEMA))
        metadata = None
        if part_out and s.output_format == "parquet":  # the weights' digests as loading checked them
            versions = s.corpus_versions or {}
            metadata = provenance.parquet_metadata(provenance.block(
                s.config_sha256, scorer_dir, [sources.CorpusFile(p, versions.get(p)) for p in corpus_paths],
                scorer_digests=scorer.weights_sha256))
        part = stack.enter_context(ScoredWriter(part_out, s.output_format, [s.score_field, *s.extra_fields],
                                                input_schema, metadata)) if part_out else None
        for chunk, result in scored_chunks(scorer, pool, workers, records, meter, chunk_docs=s.chunk_docs,
                                           max_tokens=s.max_tokens, max_windows_per_doc=s.max_windows_per_doc):
            with meter.split("write"):
                writer.write_table(pa.table({"doc_id": [r.doc_id for r in chunk], "score": result.scores,
                                             "truncated": result.truncated, "n_tokens": result.n_tokens,
                                             "n_windows": result.n_windows,
                                             "fingerprint": [r.fingerprint for r in chunk]}, schema=SCORES_SCHEMA))
                if part is not None:
                    part.write(chunk, result.columns(s.score_field, s.extra_fields))
            bar.update(len(chunk))
            rate.add(meter.tokens - rate.tokens)
        if meter.documents != num_accepted:
            raise RuntimeError(f"shard {s.shard}: tokenization accepted {num_accepted} documents but "
                               f"{meter.documents} were found to score; was the corpus changed?")
        if stats_out:
            write_json(stats_out, {"shard": s.shard, **meter.counts(), "by_source": meter.by_source})
    bar.close()
    log.info(meter.report(f"shard {s.shard}", time.perf_counter() - start, workers if pool is not None else None))
    return meter.counts()


STAGE = Stage(
    help="score the documents of one corpus shard",
    run=score_shard,
    args=(Arg("corpus_paths", "+"), Arg("--tokenized-shard"), Arg("--scorer-dir"), Arg("--out"),
          Arg("--stats-out", required=False), Arg("--part-out", required=False),
          Arg("--output-schema", required=False)),
    settings=Settings,
    counters={"documents": "scored", "tokens": "tokens"},
    preload=MODELS,
)
