"""Stage `select_order`: scored output -> the training set, in training order (docs/stages.md#select_order).

Selection and ordering (lqs.select, docs/maths.md#selection-and-ordering) see the documents in
input order, with their scores from gather_scores' index; the scored output is opened only to
copy the chosen records, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lqs import provenance
from lqs.fidelity import selection_fidelity
from lqs.io import read_parquet, write_json, write_table
from lqs.select import ORDER_SCHEMA, document_tokens, order, scored_records, select, write_selected
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    selection: Mapping[str, Any]  # selection.* but path (method, ratio, threshold, temperature, seed)
    ordering: Mapping[str, Any]  # ordering.* (method, folds, seed)
    score_field: str  # output.score_field
    output_format: str  # output.format
    config_sha256: str | None  # the selection's configuration digest (rules/common.smk CONFIG_DIGESTS)


def select_order(scored: str | Sequence[str], scores_index: str, shard_paths: Sequence[str], out: str,
                 order_out: str, summary_out: str, settings: Settings, scorer_dir: str | None = None,
                 scores_summary: str | None = None) -> dict:
    """`scored`: the scored output's file, or (layout per_shard) its parts in shard order, which
    `scores_index` (gather_scores': doc ids and scores in the same order) indexes.
    `scorer_dir`: the trained scorer, whose fidelity at this selection's cut the summary reports
    (lqs.fidelity.selection_fidelity); none for a pretrained one (scorer.checkpoint), which has no
    labels: the summary's scorer_fidelity is null. `scores_summary`: gather_scores' summary.json,
    whose provenance block's scorer and corpus the selection's block (in its summary and a Parquet
    training set's metadata) repeats."""
    s = settings
    block = provenance.derived(provenance.read_summary_block(scores_summary) if scores_summary else None,
                               s.config_sha256)
    paths = [scored] if isinstance(scored, str) else list(scored)
    index = read_parquet(scores_index, ["doc_id", "score"])
    indexed, scores = index["doc_id"].to_numpy(), index["score"].to_numpy()
    if len(scores) == 0:
        raise ValueError(f"{scores_index} indexes no document (every one was rejected?): nothing to select")
    if (indexed[1:] <= indexed[:-1]).any():
        raise RuntimeError(f"{scores_index}: documents not in input order; rerun gather_scores")
    tokenized, tokenized_counts = document_tokens(shard_paths)
    at = np.minimum(np.searchsorted(tokenized, indexed), len(tokenized) - 1)
    if len(tokenized) == 0 or (tokenized[at] != indexed).any():
        raise RuntimeError(f"{scores_index} indexes documents the tokenized corpus does not have; rerun gather_scores")
    doc_ids, tokens = indexed, tokenized_counts[at]
    del tokenized, tokenized_counts, at  # memory per document is what bounds this stage
    records = scored_records(paths, s.output_format, len(scores))
    chosen, cutoff = select(scores, **s.selection)
    chosen = chosen[order(scores[chosen], **s.ordering)]  # positions, in training order

    write_selected(records, chosen, out, provenance.parquet_metadata(block))
    write_table(order_out, pa.table([doc_ids[chosen], scores[chosen], tokens[chosen]], schema=ORDER_SCHEMA))

    summary = {
        "documents_scored": len(scores), "documents_selected": len(chosen),
        "tokens_scored": int(tokens.sum()), "tokens_selected": int(tokens[chosen].sum()),
        "score_cutoff": cutoff, "lowest_selected_score": float(scores[chosen].min()),
        "selection": s.selection, "ordering": s.ordering, "output": str(out), "order": str(order_out),
        "scorer_fidelity": None if scorer_dir is None else selection_fidelity(
            scorer_dir, s.selection, len(scores), len(chosen)),
        provenance.SUMMARY_KEY: block,
    }
    write_json(summary_out, summary)
    return summary


STAGE = Stage(
    help="select the training set from the scored output and write it in training order",
    run=select_order,
    args=(Arg("--scored", "+"), Arg("--scores-index"),
          Arg("--shard-paths", "+"), Arg("--out"), Arg("--order-out"), Arg("--summary-out"),
          Arg("--scorer-dir", required=False), Arg("--scores-summary", required=False)),
    settings=Settings,
    counters={"documents": "documents_scored", "tokens": "tokens_scored"},
)
