"""Stage `gather_scores`: input records + shard scores -> the scored output, rejects, summary.

Layout single: streams the input once, in order, pulling each document's score from its shard's
(doc-id ordered) score file, so memory does not grow with the corpus, into one file in
output.format (lqs.output: a JSONL line copied byte for byte with the new fields inserted before
its final `}`; a Parquet row as JSON by corpus.PARQUET_TO_JSON, or as a Parquet row). Layout
per_shard: the score jobs wrote the parts; this job only counts, and never reads the corpus.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from lqs import corpus, output, sources
from lqs.io import atomic_open, benchmark_seconds, parquet_batches, read_json, write_json


SCORE_COLUMNS = ["doc_id", "score", "truncated", "n_tokens", "n_windows"]


def _scores(path: str) -> Iterator[tuple]:
    """(doc_id, score, truncated, n_tokens, n_windows) of each document of a score shard."""
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


def _write_single(corpus_paths, score_paths, rejected, out, *, output_format, num_shards, text_field, max_chars,
                  score_field, extra_fields) -> tuple[int, int, int, set[str]]:
    """Streams the corpus once, in input order, joining each document's values from its shard's
    (doc-id ordered) score file, into one output file. (read, scored, truncated, files with records)"""
    shard_scores = [_scores(p) for p in score_paths]
    read = scored = truncated = 0
    with_records = set()
    input_schema = output.parquet_input_schema(corpus_paths) if output_format == "parquet" else None
    names = ["score", *extra_fields]  # the score files' columns, written as score_field and extra_fields
    with output.ScoredWriter(out, output_format, [score_field, *extra_fields], input_schema) as writer:
        chunk, columns = [], {name: [] for name in names}
        for record in corpus.iter_records(corpus_paths, text_field, max_chars, num_shards=num_shards):
            read += 1
            with_records.add(record.path)
            if record.doc_id in rejected:
                continue
            shard = corpus.shard_of(record.doc_id, num_shards)
            doc_id, score, was_truncated, n_tokens, n_windows = next(shard_scores[shard], (None,) * 5)
            if doc_id != record.doc_id:
                raise RuntimeError(f"{record.where}: document {record.doc_id} is neither scored nor "
                                   f"rejected (shard {shard} has {doc_id} next); rerun its shard")
            values = dict(score=score, truncated=bool(was_truncated), n_tokens=n_tokens, n_windows=n_windows)
            chunk.append(record)
            for name in names:
                columns[name].append(values[name])
            if len(chunk) == 4096:
                writer.write(chunk, dict(zip(writer.fields, columns.values())))
                chunk, columns = [], {name: [] for name in names}
            scored += 1
            truncated += bool(was_truncated)
        writer.write(chunk, dict(zip(writer.fields, columns.values())))
    if any(next(s, None) is not None for s in shard_scores):
        raise RuntimeError("score shards hold documents the corpus does not have; rerun scoring")
    return read, scored, truncated, with_records


def remove_stale_parts(out_dir: str, part_paths: Sequence[str]) -> list[str]:
    """Removes the part files of an earlier run with more shards (or another format) from the
    per_shard output directory: a reader of the directory would take them for this run's."""
    keep = {Path(p).resolve() for p in part_paths}
    stale = sorted(str(p) for p in Path(out_dir).glob("part-*") if p.resolve() not in keep and p.is_file())
    for path in stale:
        Path(path).unlink()
    return stale


def gather_scores(corpus_paths: Sequence[str], score_paths: Sequence[str], reject_paths: Sequence[str],
                  out: str, rejects_out: str, summary_out: str, *, num_shards: int | str,
                  text_field: str, max_chars: int, score_field: str, stats_paths: Sequence[str] = (),
                  output_format: str = "jsonl", layout: str = "single", extra_fields: Sequence[str] = (),
                  part_paths: Sequence[str] = (), benchmarks_dir: str | None = None,
                  scorer_metrics: str | None = None, annotation_info: str | None = None,
                  proxy_model: str | None = None) -> dict:
    """layout single: the corpus and the scores into one output file `out`. layout per_shard: the
    score jobs wrote `part_paths` (in the directory `out`) themselves; only the counts are gathered
    here, from the score shards and rejects, and the corpus is not read again."""
    rejected = {}
    for path in reject_paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                rejected[entry["doc_id"]] = line
    summary: dict = {}
    if layout == "single":
        read, scored, truncated, with_records = _write_single(
            corpus_paths, score_paths, rejected, out, output_format=output_format, num_shards=num_shards,
            text_field=text_field, max_chars=max_chars, score_field=score_field, extra_fields=extra_fields)
        if scored + len(rejected) != read:
            raise RuntimeError(f"read {read} documents but scored {scored} and rejected {len(rejected)}")
        summary["empty_files"] = [p for p in map(sources.source_name, corpus_paths) if p not in with_records]
    elif layout == "per_shard":
        missing = [p for p in part_paths if not Path(p).is_file()]
        if missing:
            raise RuntimeError(f"the score jobs' part files are missing: {', '.join(missing)}; rerun their shards")
        shard_stats = [read_json(p) for p in stats_paths]  # what each score job counted
        scored, truncated = (sum(s[k] for s in shard_stats) for k in ("scored", "truncated"))
        read = scored + len(rejected)
        summary["parts"] = [str(p) for p in part_paths]
        summary["removed_stale_parts"] = remove_stale_parts(out, part_paths)
    else:
        raise ValueError(f"output.layout must be single or per_shard, not {layout!r}")
    with atomic_open(rejects_out) as f:
        f.writelines(rejected[k] for k in sorted(rejected))

    summary |= {
        "documents_read": read, "documents_scored": scored, "documents_rejected": len(rejected),
        "documents_truncated": truncated, "output": str(out), "format": output_format, "layout": layout,
        "rejects": str(rejects_out), "stage_seconds": stage_seconds(benchmarks_dir), "proxy_model": proxy_model,
    }
    by_source = _merged_by_source(stats_paths)
    if by_source:
        summary["mean_score_by_source"] = by_source
    if scorer_metrics:
        summary["scorer_valid_spearman"] = read_json(scorer_metrics)["valid_spearman"]
    if annotation_info:
        summary["annotation"] = read_json(annotation_info)
    write_json(summary_out, summary)
    return summary
