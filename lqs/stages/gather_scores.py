"""Stage `gather_scores`: input records + shard scores -> the scored output, rejects, summary
(docs/stages.md#gather_scores).

Layout single: streams the input once, in order, pulling each document's score from its shard's
(doc-id ordered) score file, so memory does not grow with the corpus, into one file in
output.format (lqs.output: a JSONL line copied byte for byte with the new fields inserted before
its final `}`; a Parquet row as JSON by corpus.PARQUET_TO_JSON, or as a Parquet row). Layout
per_shard: the score jobs wrote the parts; this job only counts, and never reads the corpus.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lqs import corpus, output, provenance, sources
from lqs.batch_scoring import INDEX_SCHEMA
from lqs.corpus import CorpusReading
from lqs.io import atomic_open, benchmark_seconds, parquet_batches, parquet_file, read_json, write_json, write_table
from lqs.splits import FILE_BITS, POSITION_MASK, Shard, corpus_doc_ids, corpus_file_indices, planned_shards
from lqs.stage import Arg, Stage

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["doc_id", "score", "truncated", "n_tokens", "n_windows", "fingerprint", "source"]


def _scores(path: str) -> Iterator[tuple]:
    """(doc_id, score, truncated, n_tokens, n_windows, fingerprint, source) of each document of a score shard."""
    corpus.require_fingerprints(path)
    for batch in parquet_batches(path, columns=SCORE_COLUMNS):
        yield from zip(*(batch.column(c).to_pylist() for c in SCORE_COLUMNS))


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


def _changed_since_rejected(record: corpus.Record, entry_line: str) -> bool:
    """Whether `record` differs from the record its rejects entry (a JSON line) holds: a bad
    record fixed since, its file's mtime kept, would otherwise stay out of the output silently
    while the rejects show a line the corpus no longer has."""
    entry, now = json.loads(entry_line), json.loads(corpus.json_line(record.reject_entry()))
    return (entry.get("record"), entry.get("record_base64")) != (now.get("record"), now.get("record_base64"))


def _write_single(shards: Sequence[Shard], score_paths, rejected, out, index, *, reading: CorpusReading,
                  output_format, score_field, extra_fields, on_bad_record, input_schema=None, metadata=None):
    """Streams the corpus once, shard by shard in input order, joining each document's values from
    its shard's (doc-id ordered) score file, into one output file. A scored record that the output
    cannot take (it already has a field the output adds, or a Parquet output cannot hold it
    exactly) is a bad record here: an error, or (skip) added to `rejected`, the shard's rejects by
    local doc id. Each written document's corpus doc id, score and source are appended to the lists
    of `index` (file_indices: the shards' corpus_file_indices, ids, scores, sources). (read,
    scored, truncated, files with records)"""
    file_indices, ids, index_scores, index_sources = index
    read = scored = truncated = 0
    with_records = set()
    names = ["score", *extra_fields]  # the score files' columns, written as score_field and extra_fields
    added = corpus.output_fields(score_field, extra_fields)
    columns_type = None if input_schema is None else output.columns_of(input_schema)
    with output.ScoredWriter(out, output_format, [score_field, *extra_fields], input_schema, metadata) as writer:
        chunk, columns = [], {name: [] for name in names}
        for shard, score_path, shard_rejected, indices in zip(shards, score_paths, rejected, file_indices):
            shard_scores = _scores(score_path)
            for record in reading.records(shard.splits, require_records=False):
                if record.doc_id is None:  # an unreadable file, no documents: tokenize_shard listed it in the rejects
                    continue
                read += 1
                with_records.add(record.path)
                if record.doc_id in shard_rejected:
                    if _changed_since_rejected(record, shard_rejected[record.doc_id]):
                        raise RuntimeError(f"{record.where}: the corpus changed since it was tokenized (this record "
                                           f"differs from the one rejected then); {corpus.RETOKENIZE}")
                    continue
                doc_id, score, was_truncated, n_tokens, n_windows, fingerprint, source = next(shard_scores,
                                                                                              (None,) * 7)
                if doc_id != record.doc_id:
                    raise RuntimeError(f"{record.where}: this document is neither scored nor rejected ({score_path} "
                                       f"has doc id {doc_id} next, not {record.doc_id}); rerun its shard")
                if record.error is not None or record.fingerprint != fingerprint:
                    raise RuntimeError(f"{record.where}: the corpus changed since it was scored (this record differs "
                                       f"from the one scored in {score_path}); {corpus.RETOKENIZE}")
                error = corpus.output_field_error(record.fields, added)
                if not error and columns_type is not None and record.raw is not None:
                    if reason := output.misfit(record.fields, columns_type):
                        error = f"{reason}; {corpus.setting('format')} jsonl keeps every record as it is"
                if error:
                    bad = dataclasses.replace(record, error=error)
                    corpus.check(bad, on_bad_record)  # raises under on_bad_record: error
                    shard_rejected[record.doc_id] = corpus.json_line(bad.reject_entry()) + "\n"
                    continue
                values = dict(score=score, truncated=bool(was_truncated), n_tokens=n_tokens, n_windows=n_windows)
                ids.append(int(indices[doc_id >> FILE_BITS]) << FILE_BITS | doc_id & POSITION_MASK)
                index_scores.append(score)
                index_sources.append(source)
                chunk.append(record)
                for name in names:
                    columns[name].append(values[name])
                if len(chunk) == 4096:
                    writer.write(chunk, dict(zip(writer.fields, columns.values())))
                    chunk, columns = [], {name: [] for name in names}
                scored += 1
                truncated += bool(was_truncated)
            if next(shard_scores, None) is not None:
                raise RuntimeError(f"{score_path} holds documents the corpus does not have; rerun scoring")
        writer.write(chunk, dict(zip(writer.fields, columns.values())))
    return read, scored, truncated, with_records


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
                  stats_paths: Sequence[str] = (), part_paths: Sequence[str] = (), benchmarks_dir: str | None = None,
                  scorer_metrics: str | None = None, annotation_info: str | None = None,
                  proxy_model: str | None = None, output_schema: str | None = None,
                  scorer_dir: str | None = None) -> dict:
    """layout single: the corpus of the plan `plan` and the scores (`score_paths`, one per shard, in
    the plan's order) into one output file `out`. layout per_shard: the score jobs wrote
    `part_paths` (in the directory `out`) themselves; only the counts are gathered here, from the
    score shards and rejects, and the corpus is not read again. `output_schema`: the output_schema
    stage's file, for a Parquet output (without it, as outside the workflow, the schema is settled
    here, by the same function, from the corpus). The provenance block of the corpus files (given
    with either layout: per_shard only sizes them), the scorer `scorer_dir` and the configuration
    digest goes into the summary and a Parquet output's metadata. `index_out`: the scored output's
    documents in storage order (doc_id, score, source: batch_scoring.INDEX_SCHEMA), which
    select_order and the report read. Doc ids in the rejects and the index are the corpus's
    (lqs.splits)."""
    s = settings
    shards = planned_shards(plan, s.corpus.splits_sha256)
    if len(shards) != len(score_paths) or len(shards) != len(reject_paths):
        raise ValueError(f"{len(shards)} shards planned, but {len(score_paths)} score and {len(reject_paths)} rejects "
                         "files given")
    corpus_paths = list(dict.fromkeys(sources.source_name(x.path) for shard in shards for x in shard.splits))
    block = provenance.block(s.config_sha256, scorer_dir,
                             [sources.CorpusFile(p, s.corpus_versions.get(p)) for p in corpus_paths])
    # rejects lines: of records by shard and local doc id; of unreadable files (doc_id null) by file,
    # as every shard that opened one lists it
    rejected: list[dict[int, str]] = [{} for _ in shards]
    rejected_files = {}
    for shard_rejected, path in zip(rejected, reject_paths):
        with open(path, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                if entry["doc_id"] is None:
                    rejected_files[entry["file"]] = line
                else:
                    shard_rejected[entry["doc_id"]] = line
    order = {p: i for i, p in enumerate(corpus_paths)}
    file_indices = corpus_file_indices([shard.files for shard in shards])
    index: tuple[list, list, list, list] = (file_indices, [], [], [])
    summary: dict = {}
    if not any(map(len, rejected)) and not any(parquet_file(p).metadata.num_rows for p in score_paths):
        # before anything is written: a finished output is kept, not replaced by an empty one
        raise ValueError(f"every corpus file is empty (no records){' or unreadable' if rejected_files else ''}: "
                         f"{', '.join(corpus_paths)}")
    if s.layout == "single":
        input_schema = None
        if s.output_format == "parquet":
            input_schema = output.read_schema(output_schema) if output_schema else output.corpus_schema(
                corpus_paths, s.corpus.text_field, s.corpus.max_chars,
                corpus.output_fields(s.score_field, s.extra_fields))
        read, scored, truncated, with_records = _write_single(
            shards, score_paths, rejected, out, index, reading=s.corpus, output_format=s.output_format,
            score_field=s.score_field, extra_fields=s.extra_fields,
            on_bad_record=s.on_bad_record, input_schema=input_schema, metadata=provenance.parquet_metadata(block))
        if scored + sum(map(len, rejected)) != read:
            raise RuntimeError(f"read {read} documents but scored {scored} and rejected {sum(map(len, rejected))}")
        summary["empty_files"] = [p for p in order if p not in with_records and p not in rejected_files]
    elif s.layout == "per_shard":
        missing = [p for p in part_paths if not Path(p).is_file()]
        if missing:
            raise RuntimeError(f"the score jobs' part files are missing: {', '.join(missing)}; rerun their shards")
        shard_stats = [read_json(p) for p in stats_paths]  # what each score job counted
        scored, truncated = (sum(stats[k] for stats in shard_stats) for k in ("scored", "truncated"))
        read = scored + sum(map(len, rejected))
        summary["parts"] = [str(p) for p in part_paths]
        for path, indices in zip(score_paths, file_indices):  # the parts hold every scored document
            for batch in parquet_batches(path, columns=["doc_id", "score", "source"]):
                index[1].extend(corpus_doc_ids(batch.column(0).to_numpy(), indices).tolist())
                index[2].extend(batch.column(1).to_pylist())
                index[3].extend(batch.column(2).to_pylist())
        summary["removed_stale_parts"] = remove_stale_parts(out, part_paths, Path(summary_out).parent / PARTS_MANIFEST)
    else:
        raise ValueError(f"output.layout must be single or per_shard, not {s.layout!r}")
    write_table(index_out, pa.table([pa.array(index[1], pa.int64()), pa.array(index[2], pa.float64()),
                                     pa.array(index[3], pa.string())], schema=INDEX_SCHEMA))
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
    help="join the scores with the input into the scored output (or count a per_shard output's parts)",
    run=gather_scores,
    args=(Arg("--plan"), Arg("--score-paths", "+"), Arg("--reject-paths", "+"),
          Arg("--stats-paths", "*", required=False), Arg("--part-paths", "*", required=False), Arg("--out"),
          Arg("--rejects-out"), Arg("--summary-out"), Arg("--index-out"), Arg("--benchmarks-dir"),
          Arg("--output-schema", required=False), Arg("--scorer-metrics", required=False),
          Arg("--annotation-info", required=False), Arg("--proxy-model", required=False),
          Arg("--scorer-dir", required=False)),
    settings=Settings,
    counters={"documents": "documents_read"},
)
