"""benchmarks/gpu.sh's paper slice: config/paper.yaml with benchmarks/paper_slice.yaml merged in
(two --configfile files, merged as the workflow merges them: docs/configuration.md) is a valid
configuration that keeps every paper setting the slice does not shorten and builds the paper's
model shapes. The slice itself runs end to end in `bash benchmarks/gpu.sh --cpu-smoke`."""

from __future__ import annotations

import json

import yaml
from helpers import ROOT, benchmark

from lqs import config as lqs_config

PAPER, SLICE, SMOKE = (str(p) for p in (ROOT / "config" / "paper.yaml", ROOT / "benchmarks" / "paper_slice.yaml",
                                        ROOT / "benchmarks" / "paper_slice_smoke.yaml"))


def merged_config(*paths: str) -> dict:
    """The configuration the workflow resolves from config/config.yaml and these --configfile
    files, in order (rules/common.smk), before the schema's defaults."""
    from snakemake.utils import update_config

    overrides = [yaml.safe_load(open(path)) for path in paths]
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for override in overrides:
        update_config(config, json.loads(json.dumps(override)))
    lqs_config.replace_model_sources(config, overrides)
    return config


def workflow_errors(config: dict) -> list[str]:
    """The errors the workflow reports for this resolved configuration (rules/common.smk)."""
    from snakemake.utils import validate

    errors = lqs_config.schema_errors(config, yaml.safe_load((ROOT / "lqs" / "schema.yaml").read_text()))
    if errors:
        return errors
    validate(config, str(ROOT / "lqs" / "schema.yaml"))
    return lqs_config.consistency_errors(config)


def leaves(config: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in config.items():
        out |= leaves(value, prefix + (key,)) if isinstance(value, dict) and value else {prefix + (key,): value}
    return out


def test_the_paper_slice_is_paper_yaml_shortened_with_the_papers_model_shapes():
    paper, slice_ = (yaml.safe_load(open(p)) for p in (PAPER, SLICE))
    merged = merged_config(PAPER, SLICE)
    assert workflow_errors(merged) == []
    assert workflow_errors(merged_config(PAPER, SLICE, SMOKE)) == []

    # every paper setting the slice leaves alone is the paper's, GPU settings included
    changed = {key for key in leaves(slice_)} | {key for key in leaves(paper) if key[:1] == ("models",)}
    kept = {key: value for key, value in leaves(paper).items() if key not in changed}
    assert kept and all(leaves(merged)[key] == value for key, value in kept.items())
    assert {k: merged["annotation"][k] for k in ("tf32", "stats_dtype", "stats_micro_batch", "micro_batch")} == {
        "tf32": True, "stats_dtype": "bf16", "stats_micro_batch": 16, "micro_batch": 8}
    assert merged["models"]["proxy"].keys() == merged["models"]["scorer"].keys() == {"arch"}

    # the models at the sizes the GPU benchmarks measure (BSL-160M's and fairseq-dense-125M's shapes)
    proxy = dict(benchmark("annotation").PRESETS["paper-160m"]["model"])
    assert merged["models"]["tokenizer"] == {"vocab_size": proxy.pop("vocab_size")}
    assert proxy.items() <= merged["models"]["proxy"]["arch"].items()
    scorer = {k: v for k, v in benchmark("inference").PRESETS["xglm-125m"].items() if k != "docs"}
    assert scorer.items() <= merged["models"]["scorer"]["arch"].items()
