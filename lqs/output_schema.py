"""Stage `output_schema` (output.format parquet): the one schema of the scored output, settled
before any record is written, as a Parquet file without rows.

Every writer of the output (gather_scores' file, each score_shard's per_shard part) uses it
exactly, so the parts read as one dataset; tokenize_shard rejects a JSONL record that it cannot
hold exactly, so no later stage meets one (lqs.output: corpus_schema, fitting).
"""

from __future__ import annotations

from collections.abc import Sequence

from lqs import corpus, output


def output_schema(corpus_paths: Sequence[str], out: str, *, text_field: str, max_chars: int,
                  score_field: str = "score", extra_fields: Sequence[str] = ()) -> dict[str, int]:
    """Writes the corpus's output schema (its columns: the writers add the score and extra fields)
    to `out`. It reads the records as tokenize_shard does (a record holding an output field is
    a bad record there), so that it settles the schema of exactly the records scored."""
    schema = output.corpus_schema(corpus_paths, text_field, max_chars, corpus.output_fields(score_field, extra_fields))
    output.write_schema(schema, out)
    return {"columns": len(schema)}
