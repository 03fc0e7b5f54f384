"""Stage `fetch_target`: one split of a hub data set, the target set -> Parquet (docs/stages.md#fetch_target)."""

from __future__ import annotations

from dataclasses import dataclass

from lqs.stage import Arg, Stage
from lqs.target import fetch_split


@dataclass(frozen=True)
class Settings:
    split: str  # target.split
    revision: str | None  # target.revision


def fetch_target(source: str, out: str, settings: Settings) -> int:
    """Writes one split of the target set's hub data set repo (or a local data directory) to `out`
    as Parquet, for prepare_target. Returns its number of records."""
    return fetch_split(source, out, split=settings.split, revision=settings.revision)


STAGE = Stage(
    help="download one split of a hub data set (the target set) as Parquet",
    run=fetch_target,
    args=(Arg("source"), Arg("--out")),
    settings=Settings,
)
