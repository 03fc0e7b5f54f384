"""Stage `lqs_labels`: LQS or PDS labels from the per-sample statistics (docs/stages.md#lqs_labels).

The formulas are lqs.labels's (docs/maths.md#labels-lqs-and-pds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from lqs.io import write_json, write_table
from lqs.labels import normalize, raw_scores, read_stats, split
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    lr: float  # annotation.lr: η
    steps: int  # annotation.steps (recorded in the info file)
    interval: int  # annotation.interval (recorded in the info file)
    score: str  # annotation.score: lqs or pds
    normalize: str  # annotation.normalize
    valid_size: float  # scorer.valid_size: the validation split, a count or a fraction
    seed: int  # scorer.seed: the draw of the validation split


def lqs_labels(stats_paths: Sequence[str], out: str, settings: Settings, info_out: str | None = None) -> dict[str, int]:
    """Writes labels.parquet (sample_id, raw γ, normalised score, split) and, to `info_out`,
    the annotation settings the labels were made with. Returns the samples labelled."""
    s = settings
    sample_ids, annotated, arrays = read_stats(stats_paths)
    raw = raw_scores(arrays["grad_norm"], arrays["dot"], arrays["lambda_norm"], s.lr, s.score)
    write_table(out, pa.table({
        "sample_id": pa.array(sample_ids, pa.int64()), "raw": raw,
        "score": normalize(raw, s.normalize),
        "split": pa.array(split(len(raw), s.valid_size, s.seed), pa.string())}))
    if info_out:
        write_json(info_out, {"lr": s.lr, "steps": s.steps, "interval": s.interval, "score": s.score,
                              "normalize": s.normalize, "annotated_steps": annotated,
                              "proxy_samples": len(raw)})
    return {"samples": len(raw)}


STAGE = Stage(
    help="LQS or PDS labels from the per-sample statistics",
    run=lqs_labels,
    args=(Arg("stats_paths", "+"), Arg("--out"), Arg("--info-out", required=False)),
    settings=Settings,
    counters={"samples": "samples"},
)
