"""Stage `output_schema`: the one schema of a Parquet output, before any record (docs/stages.md#output_schema).

Only with output.format parquet: the scored output's schema, as a Parquet file without rows.
Every writer of the output (gather_scores' file, each write_part's per_shard part) uses it
exactly, so the parts read as one dataset; a JSONL record that it cannot hold exactly is a bad
record where the output is written (gather_scores, or write_part for a per_shard layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lqs import corpus, output
from lqs.corpus import CorpusReading
from lqs.splits import planned_splits
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    corpus: CorpusReading  # every shard's splits, corpus.text_field, max_chars
    score_field: str  # output.score_field: a record that already has it is a bad record
    extra_fields: Sequence[str]  # output.extra_fields, likewise


def output_schema(plan: str, out: str, settings: Settings) -> dict[str, int]:
    """Writes the corpus's output schema (its columns: the writers add the score and extra fields)
    to `out`, from the corpus of the plan `plan`. A record holding an output field is a bad record
    (gather_scores rejects it), so it adds nothing to the schema."""
    s = settings
    files = list(dict.fromkeys(split.path for split in planned_splits(plan, None, s.corpus.splits_sha256)))
    schema = output.corpus_schema(files, s.corpus.text_field, s.corpus.max_chars,
                                  corpus.output_fields(s.score_field, s.extra_fields))
    output.write_schema(schema, out)
    return {"columns": len(schema)}


STAGE = Stage(
    help="settle the one schema of a Parquet output before any record is written",
    run=output_schema,
    args=(Arg("--plan"), Arg("--out")),
    settings=Settings,
    counters={"columns": "columns"},
)
