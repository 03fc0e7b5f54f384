"""Stage `score_shard`: score every accepted document of one corpus shard (docs/stages.md#score_shard).

Reads the shard's windows, tokenized beforehand on a CPU node (stage tokenize_scorer_shard,
lqs.scorer_windows), a row group at a time, the next one read in a thread while the model runs:
the GPU runs the model alone, and memory does not grow with the input. With output.layout
per_shard it also writes the shard's scored records itself, read from the corpus. The log ends
with the time split (read / model / write) and the tokens/s.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from lqs import corpus, output, provenance, scorer_windows, sources
from lqs.batch_scoring import SCORES_SCHEMA, ChunkScores, Meter, accepted_records
from lqs.corpus import CorpusReading
from lqs.io import TokenRate, parquet_writer, write_json
from lqs.output import ScoredWriter
from lqs.scorer import load, prefetched
from lqs.splits import planned_splits
from lqs.stage import MODELS, Arg, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    max_tokens: int | None  # inference.max_tokens
    dtype: str  # inference.dtype
    compile: bool  # inference.compile
    device: str  # device
    trust_remote_code: bool  # models.trust_remote_code
    # output.layout per_shard only, with --part-out: the rule passes them then alone (the part is the
    # only file they change, and the corpus is read only for it), so that editing them does not
    # rescore a single-layout run
    corpus: CorpusReading | None = None  # the shard's splits (lqs.splits.planned_splits), corpus.text_field, max_chars
    output_format: str | None = None  # output.format
    score_field: str | None = None  # output.score_field
    extra_fields: Sequence[str] | None = None  # output.extra_fields
    # a Parquet part's provenance block (lqs.provenance): the scored output's configuration digest
    # (rules/common.smk CONFIG_DIGESTS) and the versions of the shard's remote corpus files
    config_sha256: str | None = None
    corpus_versions: Mapping[str, str] | None = None


def score_shard(windows: str, scorer_dir: str, out: str, settings: Settings, shard: str = "",
                stats_out: str | None = None, plan: str | None = None, tokenized_shard: str | None = None,
                part_out: str | None = None, output_schema: str | None = None) -> dict[str, int]:
    """Writes the scores of the documents of `windows` (tokenize_scorer_shard's file) to `out`
    (SCORES_SCHEMA), its counts and per-source score sums to `stats_out` (JSON), and with
    `part_out` (output.layout per_shard) the scored records of shard `shard` of the corpus plan
    `plan` that `tokenized_shard`
    accepted, in input order, in output.format; a Parquet part with the whole corpus's schema, the
    output_schema stage's file `output_schema`, so that every part has the same one, and the
    provenance block in its metadata."""
    s = settings
    start = time.perf_counter()
    meter = Meter()
    bar = tqdm(desc=f"score shard {shard}", unit="doc", mininterval=5)
    rate = TokenRate(bar)
    with contextlib.ExitStack() as stack:
        scorer = load(scorer_dir, s.device, s.trust_remote_code, s.dtype, s.compile)
        scorer_windows.check_made_for(windows, scorer.tokenizer, scorer.max_length)
        writer = stack.enter_context(parquet_writer(out, SCORES_SCHEMA))
        part, records = None, None
        if part_out:
            splits = planned_splits(plan, shard, s.corpus.splits_sha256)  # with --part-out only: the plan is read then
            corpus_paths = list(dict.fromkeys(map(sources.source_name, (split.path for split in splits))))
            records = accepted_records(s.corpus.records(splits, require_records=False),
                                       tokenized_shard)
            metadata = None
            if s.output_format == "parquet":  # the weights' digests as loading checked them
                versions = s.corpus_versions or {}
                metadata = provenance.parquet_metadata(provenance.block(
                    s.config_sha256, scorer_dir, [sources.CorpusFile(p, versions.get(p)) for p in corpus_paths],
                    scorer_digests=scorer.weights_sha256))
            part = stack.enter_context(ScoredWriter(part_out, s.output_format, [s.score_field, *s.extra_fields],
                                                    output.read_schema(output_schema) if output_schema else None,
                                                    metadata))
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
                                            schema=SCORES_SCHEMA))
            if part is not None:
                with meter.split("read"):
                    chunk_records = _records_of(chunk, records, windows)
                with meter.split("write"):
                    part.write(chunk_records, result.columns(s.score_field, s.extra_fields))
            bar.update(len(chunk.doc_ids))
            rate.add(chunk.tokens)
        if records is not None and (extra := next(records, None)) is not None:
            raise RuntimeError(f"{extra.where}: accepted by tokenization but not in {windows}; {corpus.RETOKENIZE}")
        if stats_out:
            write_json(stats_out, {"shard": shard, **meter.counts(), "by_source": meter.by_source})
    bar.close()
    log.info(meter.report(f"shard {shard}", time.perf_counter() - start, None))
    return meter.counts()


def _records_of(chunk: scorer_windows.Chunk, records, windows: str) -> list[corpus.Record]:
    """The chunk's documents' records, from the accepted records in input order: the same
    documents, with the fingerprints the windows were made from."""
    found = list(itertools.islice(records, len(chunk.doc_ids)))
    if (len(found) != len(chunk.doc_ids) or not np.array_equal([r.doc_id for r in found], chunk.doc_ids)
            or not np.array_equal([r.fingerprint for r in found], chunk.fingerprints)):
        where = found[0].where if found else "the corpus"
        raise RuntimeError(f"{where}: the corpus changed since {windows} was tokenized from it; {corpus.RETOKENIZE}")
    return found


STAGE = Stage(
    help="score the documents of one corpus shard from its windows (a GPU job)",
    run=score_shard,
    args=(Arg("--windows"), Arg("--scorer-dir"), Arg("--out"), Arg("--stats-out", required=False),
          Arg("--shard", required=False), Arg("--plan", required=False),
          Arg("--tokenized-shard", required=False), Arg("--part-out", required=False),
          Arg("--output-schema", required=False)),
    settings=Settings,
    counters={"documents": "scored", "tokens": "tokens"},
    preload=MODELS,
)
