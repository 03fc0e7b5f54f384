"""Stage `output_schema`: the one schema of a Parquet output, before any record (docs/stages.md#output_schema).

Only with output.format parquet: the scored output's schema, as a Parquet file without rows.
Every writer of the output (gather_scores' file, each score_shard's per_shard part) uses it
exactly, so the parts read as one dataset; tokenize_shard rejects a JSONL record that it cannot
hold exactly, so no later stage meets one (lqs.output: corpus_schema, fitting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lqs import corpus, output
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    text_field: str  # corpus.text_field
    max_chars: int  # corpus.max_chars
    score_field: str  # output.score_field: a record that already has it is a bad record
    extra_fields: Sequence[str]  # output.extra_fields, likewise


def output_schema(corpus_paths: Sequence[str], out: str, settings: Settings) -> dict[str, int]:
    """Writes the corpus's output schema (its columns: the writers add the score and extra fields)
    to `out`. It reads the records as tokenize_shard does (a record holding an output field is
    a bad record there), so that it settles the schema of exactly the records scored."""
    s = settings
    schema = output.corpus_schema(corpus_paths, s.text_field, s.max_chars,
                                  corpus.output_fields(s.score_field, s.extra_fields))
    output.write_schema(schema, out)
    return {"columns": len(schema)}


STAGE = Stage(
    help="settle the one schema of a Parquet output before any record is written",
    run=output_schema,
    args=(Arg("corpus_paths", "+"), Arg("--out")),
    settings=Settings,
    counters={"columns": "columns"},
)
