"""Stage `write_part`: one corpus shard's records + its scores -> its part of the scored output
(output.layout per_shard; docs/stages.md#write_part).

A CPU job per shard, after score_shard: it streams the shard's records once, in input order,
joining each with its score (lqs.scored_records, as gather_scores does for layout single), into
`<output.path>/part-{key}.<ext>`. Scoring never reads the corpus nor depends on an output setting,
so that editing output.* rewrites the parts and rescores nothing. Beside the part it writes the
shard's written documents (doc_id, score, source), its rejects (tokenization's and the output's)
and its counts, which gather_scores gathers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lqs import output, provenance, scored_records, sources
from lqs.corpus import CorpusReading
from lqs.io import atomic_open, write_json, write_table
from lqs.splits import planned_splits
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    corpus: CorpusReading  # the shard's splits, corpus.text_field, max_chars
    on_bad_record: str  # corpus.on_bad_record: a record the output cannot take
    output_format: str  # output.format
    score_field: str  # output.score_field
    extra_fields: Sequence[str]  # output.extra_fields
    # the provenance block's (lqs.provenance): the scored output's configuration digest
    # (rules/common.smk CONFIG_DIGESTS) and the versions of the shard's remote corpus files
    config_sha256: str | None
    corpus_versions: Mapping[str, str]


def write_part(plan: str, shard: str, scores: str, rejects: str, out: str, index_out: str, rejects_out: str,
               stats_out: str, settings: Settings, scorer_dir: str | None = None,
               output_schema: str | None = None) -> dict[str, int]:
    """Writes the scored records of shard `shard` of the corpus plan `plan` (its scores: score_shard's
    `scores`; tokenization's rejects: `rejects`) to the part `out`, in input order: a Parquet part
    with the whole corpus's schema, the output_schema stage's file `output_schema`, so that every
    part has the same one, and the provenance block of the scorer `scorer_dir` and the shard's
    files in its metadata. Its documents (shard doc ids, INDEX_SCHEMA) go to `index_out`, its
    rejects, tokenization's and the output's, to `rejects_out` (by doc id), its counts to `stats_out`."""
    s = settings
    splits = planned_splits(plan, shard, s.corpus.splits_sha256)
    files: dict[str, str] = {}
    rejected = scored_records.read_rejects(rejects, files)
    metadata = None
    if s.output_format == "parquet":
        corpus_paths = list(dict.fromkeys(map(sources.source_name, (split.path for split in splits))))
        metadata = provenance.parquet_metadata(provenance.block(  # the weights as they scored the shard
            s.config_sha256, scorer_dir, [sources.CorpusFile(p, s.corpus_versions.get(p)) for p in corpus_paths],
            scorer_digests=scored_records.scorer_digests(scores)))
    schema = output.read_schema(output_schema) if output_schema else None
    written = scored_records.write_scored(
        [splits], [scores], [rejected], out, reading=s.corpus, output_format=s.output_format,
        score_field=s.score_field, extra_fields=s.extra_fields,
        on_bad_record=s.on_bad_record, input_schema=schema, metadata=metadata)
    write_table(index_out, written.index_table())
    with atomic_open(rejects_out) as f:  # the unreadable files first, then the records in input order
        f.writelines(files.values())
        f.writelines(rejected[doc_id] for doc_id in sorted(rejected))
    counts = {"read": written.read, "scored": written.scored, "truncated": written.truncated}
    write_json(stats_out, {"shard": shard, **counts, "files_with_records": sorted(written.files_with_records)})
    return counts


STAGE = Stage(
    help="write one corpus shard's scored records, its part of a per_shard output (a CPU job)",
    run=write_part,
    args=(Arg("--plan"), Arg("--shard"), Arg("--scores"), Arg("--rejects"), Arg("--out"), Arg("--index-out"),
          Arg("--rejects-out"), Arg("--stats-out"), Arg("--scorer-dir", required=False),
          Arg("--output-schema", required=False)),
    settings=Settings,
    counters={"documents": "scored"},
)
