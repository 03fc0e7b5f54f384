"""Stage `gather_scores`: input records + shard scores -> the scored output, rejects, summary
(docs/stages.md#gather_scores).

Layout single: streams the input once, in order, joining each document with its score
(lqs.scored_records), into one file in output.format (lqs.output: a JSONL line copied byte for
byte with the new fields inserted before its final `}`; a Parquet row as JSON by
corpus.PARQUET_TO_JSON, or as a Parquet row). Layout per_shard: the write_part jobs wrote the
parts; this job gathers their documents, rejects and counts, and never reads the corpus.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lqs import corpus, output, provenance, scored_records, sources
from lqs.batch_scoring import INDEX_SCHEMA
from lqs.corpus import CorpusReading
from lqs.io import atomic_open, benchmark_seconds, parquet_file, read_json, write_json, write_table
from lqs.splits import corpus_doc_ids, corpus_file_indices, planned_shards
from lqs.stage import Arg, Stage

log = logging.getLogger(__name__)


def stage_seconds(benchmarks_dir: str | None) -> dict[str, float]:
    """Wall seconds per rule of the jobs that ran before this one (io.benchmark_seconds, less
    this job's own from an earlier run)."""
    return {k: round(v, 3) for k, v in sorted(benchmark_seconds(benchmarks_dir).items()) if k != "gather_scores"}


def _merged_by_source(stats_paths: Sequence[str]) -> dict[str, float]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for path in stats_paths:
        for source, (total, n) in read_json(path)["by_source"].items():
            totals[source][0] += total
            totals[source][1] += n
    return {k: total / n for k, (total, n) in sorted(totals.items())}


def _with_doc_id(line: str, doc_id: int) -> str:
    """A rejects line (corpus.Record.reject_entry, doc_id first) with the corpus's doc id for the shard's."""
    prefix = '{"doc_id": '
    if not line.startswith(prefix):
        raise ValueError(f"not a rejects line of lqs: {line[:80]!r}")
    return prefix + str(doc_id) + line[line.index(",", len(prefix)):]


PARTS_MANIFEST = "output_parts.json"  # beside summary.json: the per_shard parts each run wrote


def _file_state(path: str | Path) -> dict[str, int]:
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def remove_stale_parts(out_dir: str, part_paths: Sequence[str], manifest: str | Path) -> list[str]:
    """Removes from the per_shard output directory the parts an earlier run wrote that this run
    did not (it had more shards, or another format): a reader of the directory would take them
    for this run's. Only what `manifest` lists as written by the workflow, unchanged since (size
    and mtime), is removed; anything else is left and logged. Then records this run's parts."""
    directory = os.path.normpath(out_dir)  # as configured: a moved workflow directory keeps its manifest
    try:
        written = read_json(manifest) if Path(manifest).exists() else {}
    except ValueError:  # damaged: it vouches for nothing, so nothing is removed
        log.warning("%s is not readable JSON; no earlier part is removed, and it is written anew", manifest)
        written = {}
    current = {Path(p).name for p in part_paths}
    removed = []
    for name, state in sorted(written.get(directory, {}).items()):
        path = Path(out_dir) / name
        if name in current or Path(name).name != name or not path.is_file():  # only files directly in out_dir
            continue
        if _file_state(path) == state:
            path.unlink()
            removed.append(str(path))
        else:
            log.warning("%s: left in place: an earlier run wrote this part, but it has changed since", path)
    others = sorted(name for name in os.listdir(out_dir) if name not in current
                    and str(Path(out_dir) / name) not in removed and not sources.is_hidden(name))
    if others:
        log.warning("%s holds files this run did not write, left in place (a reader of the directory may take them"
                    " for parts): %s", out_dir, ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""))
    written[directory] = {Path(p).name: _file_state(p) for p in part_paths}
    write_json(manifest, written)
    return removed


@dataclass(frozen=True)
class Settings:
    corpus: CorpusReading  # every shard's splits (lqs.splits.planned_shards), corpus.text_field, max_chars
    on_bad_record: str  # corpus.on_bad_record: a record the output cannot take (layout single)
    output_format: str  # output.format
    score_field: str  # output.score_field
    extra_fields: Sequence[str]  # output.extra_fields
    layout: str  # output.layout
    # the provenance block's (lqs.provenance): the scored output's configuration digest
    # (rules/common.smk CONFIG_DIGESTS) and the versions of the remote corpus files
    config_sha256: str | None
    corpus_versions: Mapping[str, str]


def gather_scores(plan: str, score_paths: Sequence[str], reject_paths: Sequence[str],
                  out: str, rejects_out: str, summary_out: str, index_out: str, settings: Settings,
                  stats_paths: Sequence[str] = (), part_paths: Sequence[str] = (),
                  part_index_paths: Sequence[str] = (), part_stats_paths: Sequence[str] = (),
                  benchmarks_dir: str | None = None, scorer_metrics: str | None = None,
                  annotation_info: str | None = None, proxy_model: str | None = None,
                  output_schema: str | None = None, scorer_dir: str | None = None) -> dict:
    """layout single: the corpus of the plan `plan` and the scores (`score_paths`, one per shard, in
    the plan's order) into one output file `out`, less the records tokenization rejected
    (`reject_paths`, tokenize_shard's). layout per_shard: the write_part jobs wrote `part_paths`
    (in the directory `out`), their documents (`part_index_paths`), rejects (`reject_paths`, theirs)
    and counts (`part_stats_paths`); they are gathered here, and the corpus is not read. `stats_paths`:
    the score jobs' counts (the mean score per source). `output_schema`: the output_schema stage's
    file, for a Parquet output (without it, as outside the workflow, the schema is settled here, by
    the same function, from the corpus). The provenance block of the corpus files, the scorer
    `scorer_dir` and the configuration digest goes into the summary and a Parquet output's metadata.
    `index_out`: the scored output's documents in storage order (doc_id, score, source:
    batch_scoring.INDEX_SCHEMA), which select_order and the report read. Doc ids in the rejects and
    the index are the corpus's (lqs.splits)."""
    s = settings
    shards = planned_shards(plan, s.corpus.splits_sha256)
    per_shard = part_index_paths if s.layout == "per_shard" else score_paths
    if len(shards) != len(per_shard) or len(shards) != len(reject_paths):
        raise ValueError(f"{len(shards)} shards planned, but {len(per_shard)} score and {len(reject_paths)} rejects "
                         "files given")
    corpus_paths = list(dict.fromkeys(sources.source_name(x.path) for shard in shards for x in shard.splits))
    block = provenance.block(s.config_sha256, scorer_dir,
                             [sources.CorpusFile(p, s.corpus_versions.get(p)) for p in corpus_paths])
    # rejects lines: of records by shard and local doc id; of unreadable files (doc_id null) by file,
    # as every shard that opened one lists it
    rejected_files: dict[str, str] = {}
    rejected = [scored_records.read_rejects(path, rejected_files) for path in reject_paths]
    order = {p: i for i, p in enumerate(corpus_paths)}
    file_indices = corpus_file_indices([shard.files for shard in shards])
    summary: dict = {}
    if not any(map(len, rejected)) and not any(parquet_file(p).metadata.num_rows for p in per_shard):
        # before anything is written: a finished output is kept, not replaced by an empty one
        raise ValueError(f"every corpus file is empty (no records){' or unreadable' if rejected_files else ''}: "
                         f"{', '.join(corpus_paths)}")
    if s.layout == "single":
        input_schema = None
        if s.output_format == "parquet":
            input_schema = output.read_schema(output_schema) if output_schema else output.corpus_schema(
                corpus_paths, s.corpus.text_field, s.corpus.max_chars,
                corpus.output_fields(s.score_field, s.extra_fields))
        written = scored_records.write_scored(
            [shard.splits for shard in shards], score_paths, rejected, out, reading=s.corpus,
            output_format=s.output_format, score_field=s.score_field, extra_fields=s.extra_fields,
            on_bad_record=s.on_bad_record, input_schema=input_schema, metadata=provenance.parquet_metadata(block))
        read, scored, truncated, with_records = (written.read, written.scored, written.truncated,
                                                 written.files_with_records)
        index = [written.index_table(i) for i in range(len(shards))]
    elif s.layout == "per_shard":
        missing = [p for p in part_paths if not Path(p).is_file()]
        if missing:
            raise RuntimeError(f"the write_part jobs' part files are missing: {', '.join(missing)}; rerun their shards")
        part_stats = [read_json(p) for p in part_stats_paths]  # what each write_part job counted
        read, scored, truncated = (sum(stats[k] for stats in part_stats) for k in ("read", "scored", "truncated"))
        with_records = {path for stats in part_stats for path in stats["files_with_records"]}
        index = [pq.read_table(path) for path in part_index_paths]
        summary["parts"] = [str(p) for p in part_paths]
        summary["removed_stale_parts"] = remove_stale_parts(out, part_paths, Path(summary_out).parent / PARTS_MANIFEST)
    else:
        raise ValueError(f"output.layout must be single or per_shard, not {s.layout!r}")
    summary["empty_files"] = [p for p in order if p not in with_records and p not in rejected_files]
    write_table(index_out, pa.concat_tables(
        table.set_column(0, "doc_id", pa.array(corpus_doc_ids(table.column(0).to_numpy(), indices), pa.int64()))
        for table, indices in zip(index, file_indices)).cast(INDEX_SCHEMA))
    records = sorted((int(corpus_doc_ids(np.asarray([local]), indices)[0]), line)
                     for shard_rejected, indices in zip(rejected, file_indices)
                     for local, line in shard_rejected.items())
    files = sorted(rejected_files, key=lambda p: order.get(p, len(order)))
    with atomic_open(rejects_out) as f:  # the unreadable files first, in corpus order, then the records
        f.writelines(rejected_files[p] for p in files)
        f.writelines(_with_doc_id(line, doc_id) for doc_id, line in records)

    summary |= {
        "rejected_files": files,
        "documents_read": read, "documents_scored": scored, "documents_rejected": len(records),
        "documents_truncated": truncated, "output": str(out), "format": s.output_format, "layout": s.layout,
        "rejects": str(rejects_out), "stage_seconds": stage_seconds(benchmarks_dir), "proxy_model": proxy_model,
    }
    by_source = _merged_by_source(stats_paths)
    if by_source:
        summary["mean_score_by_source"] = by_source
    if scorer_metrics:
        summary["scorer_valid_spearman"] = read_json(scorer_metrics)["valid_spearman"]
    if annotation_info:
        summary["annotation"] = read_json(annotation_info)
    summary[provenance.SUMMARY_KEY] = block
    write_json(summary_out, summary)
    return summary


STAGE = Stage(
    help="join the scores with the input into the scored output (or gather a per_shard output's parts)",
    run=gather_scores,
    args=(Arg("--plan"), Arg("--score-paths", "*", required=False), Arg("--reject-paths", "+"),
          Arg("--stats-paths", "*", required=False), Arg("--part-paths", "*", required=False),
          Arg("--part-index-paths", "*", required=False), Arg("--part-stats-paths", "*", required=False),
          Arg("--out"), Arg("--rejects-out"), Arg("--summary-out"), Arg("--index-out"), Arg("--benchmarks-dir"),
          Arg("--output-schema", required=False), Arg("--scorer-metrics", required=False),
          Arg("--annotation-info", required=False), Arg("--proxy-model", required=False),
          Arg("--scorer-dir", required=False)),
    settings=Settings,
    counters={"documents": "documents_read"},
)
