"""Stage `gather_scores`: input records + shard scores -> scored.jsonl, rejects, summary.

Streams the input once, in order, pulling each document's score from its shard's (doc-id
ordered) score file, so memory does not grow with the corpus. A JSONL line is copied byte for
byte with only the score field inserted before its final `}`; a Parquet row is written as a
JSON object by corpus.json_line (corpus.PARQUET_TO_JSON).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from lqs import corpus, sources
from lqs.io import atomic_open, parquet_batches, read_json, write_json


def _scores(path: str) -> Iterator[tuple[int, float, bool]]:
    for batch in parquet_batches(path, columns=["doc_id", "score", "truncated"]):
        yield from zip(*(batch.column(c).to_pylist() for c in ("doc_id", "score", "truncated")))


def output_line(record: corpus.Record, field: str, score: float) -> str:
    """The output line of a scored record. A JSONL line is the input line with `, "<field>":
    <score>` inserted before its final `}` (a scored object has its text field, so is never
    empty) and its own line end (a last line without one gets a newline); a Parquet row is one
    line of JSON."""
    if field in record.fields:
        raise ValueError(f"{record.where}: the record already has a field {field!r}; choose "
                         "another output.score_field")
    if record.raw is None:
        return corpus.json_line({**record.fields, field: score}) + "\n"
    end = record.raw.rindex("}")
    member = f", {json.dumps(field)}: {json.dumps(score, allow_nan=False)}"
    return record.raw[:end] + member + record.raw[end:] + (record.eol or "\n")


def stage_seconds(benchmarks_dir: str | None) -> dict[str, float]:
    """Wall seconds per rule, summed over its jobs, from the Snakemake benchmark files
    <benchmarks_dir>/<rule>/<job>.tsv of the jobs that ran before this one."""
    seconds: dict[str, float] = defaultdict(float)
    for path in sorted(Path(benchmarks_dir).glob("*/*.tsv")) if benchmarks_dir else []:
        if path.parent.name == "gather_scores":  # this job's own, from an earlier run
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                seconds[Path(path).parent.name] += float(row["s"])
    return {k: round(v, 3) for k, v in sorted(seconds.items())}


def gather_scores(corpus_paths: Sequence[str], score_paths: Sequence[str], reject_paths: Sequence[str],
                  out: str, rejects_out: str, summary_out: str, *, num_shards: int | str,
                  text_field: str, max_chars: int, score_field: str, benchmarks_dir: str | None = None,
                  scorer_metrics: str | None = None, annotation_info: str | None = None,
                  proxy_model: str | None = None) -> dict:
    rejected = {}
    for path in reject_paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                rejected[entry["doc_id"]] = line
    shard_scores = [_scores(p) for p in score_paths]
    read = scored = truncated = 0
    by_source: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    with_records = set()
    with atomic_open(out) as f:
        for record in corpus.iter_records(corpus_paths, text_field, max_chars, num_shards=num_shards):
            read += 1
            with_records.add(record.path)
            if record.doc_id in rejected:
                continue
            shard = corpus.shard_of(record.doc_id, num_shards)
            doc_id, score, was_truncated = next(shard_scores[shard], (None, None, None))
            if doc_id != record.doc_id:
                raise RuntimeError(f"{record.where}: document {record.doc_id} is neither scored nor "
                                   f"rejected (shard {shard} has {doc_id} next); rerun its shard")
            f.write(output_line(record, score_field, score))
            scored += 1
            truncated += bool(was_truncated)
            if isinstance(record.fields.get("source"), str):
                by_source[record.fields["source"]][0] += score
                by_source[record.fields["source"]][1] += 1
    if any(next(s, None) is not None for s in shard_scores):
        raise RuntimeError("score shards hold documents the corpus does not have; rerun scoring")
    if scored + len(rejected) != read:
        raise RuntimeError(f"read {read} documents but scored {scored} and rejected {len(rejected)}")
    with atomic_open(rejects_out) as f:
        f.writelines(rejected[k] for k in sorted(rejected))

    summary = {
        "documents_read": read, "documents_scored": scored, "documents_rejected": len(rejected),
        "documents_truncated": truncated, "output": str(out), "rejects": str(rejects_out),
        "empty_files": [p for p in map(sources.source_name, corpus_paths) if p not in with_records],
        "stage_seconds": stage_seconds(benchmarks_dir), "proxy_model": proxy_model,
    }
    if by_source:
        summary["mean_score_by_source"] = {k: total / n for k, (total, n) in sorted(by_source.items())}
    if scorer_metrics:
        summary["scorer_valid_spearman"] = read_json(scorer_metrics)["valid_spearman"]
    if annotation_info:
        summary["annotation"] = read_json(annotation_info)
    write_json(summary_out, summary)
    return summary
