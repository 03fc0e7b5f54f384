"""Stage `fetch_eval_source`: one split of a hub data set, the efficacy experiment's target evaluation set
(efficacy.eval_source) -> Parquet (docs/stages.md#the-efficacy-experiment)."""

from __future__ import annotations

from dataclasses import dataclass

from lqs.stage import Arg, Stage
from lqs.target import fetch_split


@dataclass(frozen=True)
class Settings:
    split: str  # efficacy.eval_split
    revision: str | None  # none in the config: null, the data set's default branch


def fetch_eval_source(source: str, out: str, settings: Settings) -> int:
    """Writes one split of the evaluation set's hub data set repo (or a local data directory) to
    `out` as Parquet, for prepare_eval_source. Returns its number of records."""
    return fetch_split(source, out, split=settings.split, revision=settings.revision)


STAGE = Stage(
    help="download one split of a hub data set (efficacy.eval_source) as Parquet",
    run=fetch_eval_source,
    args=(Arg("source"), Arg("--out")),
    settings=Settings,
)
