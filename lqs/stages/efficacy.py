"""Stage `efficacy`: the efficacy experiment's runs -> its table, figure and report caption
(docs/stages.md#the-efficacy-experiment)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from lqs import provenance
from lqs.classifier import METADATA_KEY
from lqs.efficacy import ARMS, CURVE_SCHEMA, DECOMPOSITION, caption, paired_difference
from lqs.io import atomic_open, parquet_file, read_parquet, write_json, write_table
from lqs.stage import Arg, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    seeds: int  # efficacy.seeds
    arms: Sequence[str]  # efficacy.arms
    # efficacy.*, target.eval_fraction and target.seed, selection.*, ordering.*: recorded in summary.json
    settings: dict[str, Any]
    config_sha256: str | None  # the provenance block's: the efficacy digest (rules/common.smk CONFIG_DIGESTS)


def _mean_std(values: pd.Series) -> dict[str, float | None]:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None}


def efficacy(run_paths: Sequence[str], target_eval: str, corpus_eval: str, summary_out: str, curves_out: str,
             plot_out: str, settings: Settings, caption_template: str | None = None, caption_out: str | None = None,
             classifier: str | None = None, selection_summary: str | None = None) -> dict:
    """summary.json, curves.parquet and curves.png from the runs' final evaluations, and with
    `caption_out` the report's caption: `caption_template`'s text (report/efficacy.rst) and a
    paragraph stating the measured differences (lqs.efficacy.caption, also the summary's
    `caption`). Each non-conventional arm is compared with conventional (vs_conventional), and
    the arms of lqs.efficacy.DECOMPOSITION's comparisons that both ran with each other
    (decomposition), paired by seed: the mean of the per-seed differences, its standard error,
    degrees of freedom and 95% interval from Student's t (null for one seed), and the seeds each
    arm won. `classifier`: efficacy_classifier's order.parquet, whose counts and CPU seconds the
    summary records."""
    from lqs.report import plot_efficacy

    seeds = settings.seeds
    unknown = sorted(set(settings.arms) - set(ARMS))
    if unknown:
        raise ValueError(f"efficacy.arms: unknown arm {unknown[0]!r} (one of {', '.join(ARMS)})")
    arm_names = [arm for arm in ARMS if arm in settings.arms]
    curves = pd.concat([read_parquet(p).to_pandas() for p in run_paths], ignore_index=True)
    info = [json.loads(parquet_file(p).schema_arrow.metadata[b"efficacy"]) for p in run_paths]
    curves = curves.sort_values(["arm", "seed", "step"], ignore_index=True)
    missing = {(a, s) for a in arm_names for s in range(seeds)} - set(zip(curves["arm"], curves["seed"]))
    if missing:
        raise ValueError(f"no curve for arm, seed {sorted(missing)[0]} in {', '.join(run_paths)}")
    final = curves.groupby(["arm", "seed"]).tail(1).set_index(["arm", "seed"])
    arms = {}
    for arm in arm_names:
        runs = final.loc[arm]
        runs_info = [i for i in info if i["arm"] == arm]
        arms[arm] = {"target_loss": _mean_std(runs["target_loss"]), "corpus_loss": _mean_std(runs["corpus_loss"]),
                     "tokens": int(runs["tokens_seen"].iloc[0]), "epochs": max(i["epochs"] for i in runs_info),
                     "steps": {"min": min(i["steps"] for i in runs_info), "max": max(i["steps"] for i in runs_info)}}
    # each arm's final losses over seeds 0 … seeds-1, in that order: the pairs of paired_difference
    target = {arm: final.loc[arm]["target_loss"].loc[range(seeds)].to_numpy() for arm in arm_names}
    corpus = {arm: final.loc[arm]["corpus_loss"].loc[range(seeds)].to_numpy() for arm in arm_names}
    vs = {arm: paired_difference(arm, "conventional", target, corpus)
          for arm in arm_names if arm != "conventional" and "conventional" in arm_names}
    decomposition = {name: paired_difference(arm, other, target, corpus) for name, arm, other in DECOMPOSITION
                     if arm in arm_names and other in arm_names}
    summary = {"arms": arms, "vs_conventional": vs, "decomposition": decomposition}
    summary |= {"seeds": seeds, "budget": info[0]["budget"],
                "eval": {"target_samples": parquet_file(target_eval).metadata.num_rows,
                         "corpus_documents": parquet_file(corpus_eval).metadata.num_rows}}
    if classifier is not None:
        summary["classifier"] = json.loads(parquet_file(classifier).schema_arrow.metadata[METADATA_KEY])
    summary["caption"] = caption(summary)
    summary["settings"] = settings.settings
    write_table(curves_out, pa.Table.from_pandas(curves, schema=CURVE_SCHEMA, preserve_index=False))
    plot_efficacy(curves, summary, Path(plot_out))
    if caption_out is not None:
        text = Path(caption_template).read_text(encoding="utf-8").rstrip() + "\n\n" if caption_template else ""
        with atomic_open(caption_out) as f:
            f.write(text + summary["caption"] + "\n")
    # provenance: the selection summary's scorer and corpus, with this summary's configuration digest
    summary[provenance.SUMMARY_KEY] = provenance.derived(
        provenance.read_summary_block(selection_summary) if selection_summary else None, settings.config_sha256)
    write_json(summary_out, summary)
    for arm in arm_names:
        a = arms[arm]
        log.info("%-17s target %.4f ± %s, corpus %.4f ± %s", arm, a["target_loss"]["mean"], a["target_loss"]["std"],
                 a["corpus_loss"]["mean"], a["corpus_loss"]["std"])
    log.info("%s", summary["caption"])
    return summary


STAGE = Stage(
    help="the efficacy experiment's table, figure and report caption",
    run=efficacy,
    args=(Arg("run_paths", "+"), Arg("--target-eval"), Arg("--corpus-eval"), Arg("--summary-out"), Arg("--curves-out"),
          Arg("--plot-out"), Arg("--caption-template", required=False), Arg("--caption-out", required=False),
          Arg("--classifier", required=False), Arg("--selection-summary", required=False)),
    settings=Settings,
)
