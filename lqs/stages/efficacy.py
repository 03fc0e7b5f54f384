"""Stage `efficacy`: the efficacy experiment's runs -> its table and figure (docs/stages.md#the-efficacy-experiment)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from lqs.efficacy import ARMS, CURVE_SCHEMA
from lqs.io import parquet_file, read_parquet, write_json, write_table
from lqs.stage import Arg, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    seeds: int  # efficacy.seeds
    # efficacy.*, target.eval_fraction and target.seed, selection.*, ordering.*: recorded in summary.json
    settings: dict[str, Any]


def _mean_std(values: pd.Series) -> dict[str, float | None]:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None}


def _stderr(values: pd.Series) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def efficacy(run_paths: Sequence[str], target_eval: str, corpus_eval: str, summary_out: str, curves_out: str,
             plot_out: str, settings: Settings) -> dict:
    """summary.json, curves.parquet and curves.png from the runs' final evaluations. Differences
    to conventional are paired by seed: mean of the per-seed differences, standard error
    std(ddof=1) / √seeds (null for one seed)."""
    from lqs.report import plot_efficacy

    seeds = settings.seeds
    curves = pd.concat([read_parquet(p).to_pandas() for p in run_paths], ignore_index=True)
    info = [json.loads(parquet_file(p).schema_arrow.metadata[b"efficacy"]) for p in run_paths]
    curves = curves.sort_values(["arm", "seed", "step"], ignore_index=True)
    missing = {(a, s) for a in ARMS for s in range(seeds)} - set(zip(curves["arm"], curves["seed"]))
    if missing:
        raise ValueError(f"no curve for arm, seed {sorted(missing)[0]} in {', '.join(run_paths)}")
    final = curves.groupby(["arm", "seed"]).tail(1).set_index(["arm", "seed"])
    arms = {}
    for arm in ARMS:
        runs = final.loc[arm]
        runs_info = [i for i in info if i["arm"] == arm]
        arms[arm] = {"target_loss": _mean_std(runs["target_loss"]), "corpus_loss": _mean_std(runs["corpus_loss"]),
                     "tokens": int(runs["tokens_seen"].iloc[0]), "epochs": max(i["epochs"] for i in runs_info),
                     "steps": {"min": min(i["steps"] for i in runs_info), "max": max(i["steps"] for i in runs_info)}}
    vs = {}
    for arm in ARMS[1:]:
        diff = final.loc[arm] - final.loc["conventional"]  # aligned on seed: paired differences
        vs[arm] = {"target_loss_diff": float(diff["target_loss"].mean()), "stderr": _stderr(diff["target_loss"]),
                   "corpus_loss_diff": float(diff["corpus_loss"].mean()), "corpus_stderr": _stderr(diff["corpus_loss"])}
    summary = {"arms": arms, "vs_conventional": vs, "seeds": seeds, "budget": info[0]["budget"],
               "eval": {"target_samples": parquet_file(target_eval).metadata.num_rows,
                        "corpus_documents": parquet_file(corpus_eval).metadata.num_rows},
               "settings": settings.settings}
    write_table(curves_out, pa.Table.from_pandas(curves, schema=CURVE_SCHEMA, preserve_index=False))
    plot_efficacy(curves, summary, Path(plot_out))
    write_json(summary_out, summary)
    for arm in ARMS:
        a = arms[arm]
        log.info("%-13s target %.4f ± %s, corpus %.4f ± %s%s", arm, a["target_loss"]["mean"], a["target_loss"]["std"],
                 a["corpus_loss"]["mean"], a["corpus_loss"]["std"],
                 f", vs conventional {vs[arm]['target_loss_diff']:+.4f} ± {vs[arm]['stderr']}" if arm in vs else "")
    return summary


STAGE = Stage(
    help="the efficacy experiment's table and figure",
    run=efficacy,
    args=(Arg("run_paths", "+"), Arg("--target-eval"), Arg("--corpus-eval"), Arg("--summary-out"), Arg("--curves-out"),
          Arg("--plot-out")),
    settings=Settings,
)
