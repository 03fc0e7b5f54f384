"""Stage `select_order`: scored output -> the training set, in training order (docs/stages.md#select_order).

Selection and ordering (lqs.select, docs/maths.md#selection-and-ordering) see the documents in
input order whatever the layout; the chosen records are copied unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lqs import provenance
from lqs.fidelity import selection_fidelity
from lqs.io import write_json, write_table
from lqs.select import ORDER_SCHEMA, document_tokens, order, read_scored_records, select, write_selected
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    selection: Mapping[str, Any]  # selection.* but path (method, ratio, threshold, temperature, seed)
    ordering: Mapping[str, Any]  # ordering.* (method, folds, seed)
    score_field: str  # output.score_field
    output_format: str  # output.format
    layout: str  # output.layout
    config_sha256: str | None  # the selection's configuration digest (rules/common.smk CONFIG_DIGESTS)


def select_order(scored: str | Sequence[str], shard_paths: Sequence[str], out: str, order_out: str,
                 summary_out: str, settings: Settings, scorer_dir: str | None = None,
                 scores_summary: str | None = None) -> dict:
    """`scored`: the scored output's file, or (layout per_shard) its parts in shard order.
    `scorer_dir`: the trained scorer, whose fidelity at this selection's cut the summary reports
    (lqs.fidelity.selection_fidelity); none for a pretrained one (scorer.checkpoint), which has no
    labels: the summary's scorer_fidelity is null. `scores_summary`: gather_scores' summary.json,
    whose provenance block's scorer and corpus the selection's block (in its summary and a Parquet
    training set's metadata) repeats."""
    s = settings
    block = provenance.derived(provenance.read_summary_block(scores_summary) if scores_summary else None,
                               s.config_sha256)
    paths = [scored] if isinstance(scored, str) else list(scored)
    records = read_scored_records(paths, s.score_field, s.output_format)
    scores = records.scores
    doc_ids, tokens = document_tokens(shard_paths, by_shard=s.layout == "per_shard")
    where = paths[0] if len(paths) == 1 else f"the {len(paths)} parts of {os.path.dirname(paths[0]) or '.'}"
    if len(scores) != len(doc_ids):
        unit = "lines" if s.output_format != "parquet" else "rows"
        raise RuntimeError(f"{where} has {len(scores)} {unit} but the tokenized corpus has "
                           f"{len(doc_ids)} documents; rerun gather_scores")
    if len(scores) == 0:
        raise ValueError(f"{where} has no documents (every one was rejected?): nothing to select")
    # Selection and ordering see the documents in input order whatever the layout (a per_shard
    # output stores them shard after shard): ties and Gumbel noise fall the same way.
    by_doc = np.argsort(doc_ids, kind="stable")
    chosen, cutoff = select(scores[by_doc], **s.selection)
    chosen = by_doc[chosen[order(scores[by_doc][chosen], **s.ordering)]]  # storage positions, training order

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
    args=(Arg("--scored", "+"), Arg("--shard-paths", "+"), Arg("--out"), Arg("--order-out"), Arg("--summary-out"),
          Arg("--scorer-dir", required=False), Arg("--scores-summary", required=False)),
    settings=Settings,
    counters={"documents": "documents_scored", "tokens": "tokens_scored"},
)
