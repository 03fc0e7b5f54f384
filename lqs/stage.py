"""What a stage declares beside its entry function, and the pipeline's stages in order.

A stage is one module `lqs/stages/<rule>.py`, named as its Snakemake rule; its command is the
rule's name with dashes (`lqs tokenize-shard`). The module ends with `STAGE = Stage(...)`: the
entry function, the file arguments the rule passes, the `Settings` dataclass that `--settings`
(the rule's params, a JSON object) is read into, the counters of its stats line, what it
preloads and whether it runs distributed. `lqs.cli` builds the commands from these
declarations and `lqs.report` orders stages by `PIPELINE`: adding a stage is one module, one
rule and its name here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The rules, in the order the pipeline runs them (the report lists stages in this order).
PIPELINE = ("demo_data", "train_tokenizer", "fetch_tokenizer", "fetch_proxy", "fetch_scorer_base", "fetch_scorer",
            "fetch_target", "pretrain_proxy", "output_schema", "tokenize_shard", "prepare_target", "sample_proxy",
            "trajectory", "grad_stats", "lqs_labels", "train_scorer", "tokenize_scorer_shard", "score_shard",
            "write_part", "gather_scores", "select_order", "fetch_eval_source", "prepare_eval_source",
            "efficacy_corpus_eval", "efficacy_classifier", "efficacy_train", "efficacy", "plots")

# The libraries a stage's function imports when called (transformers' tokenizers, with torch, and
# its model code: 3-4 s on a CPU): imported before the stage's clock starts, like its module.
TOKENIZERS = ("transformers.models.auto.tokenization_auto",)
MODELS = (*TOKENIZERS, "transformers.modeling_utils")


@dataclass(frozen=True)
class Arg:
    """A file argument as the rule passes it: positional ("corpus_paths") or a flag ("--out");
    nargs "+" or "*" for lists; `type` int for numbers (a shard); `required` for flags."""

    name: str
    nargs: str | None = None
    type: type = str
    required: bool = True

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Stage:
    """A stage's declaration. `counters`: {unit: the key of the dict `run` returns, or None where
    it returns that one count}; the first unit is the stage's throughput. A stage without
    counters reports its seconds only. `settings`: the dataclass `run(..., settings=...)` takes,
    or None for a stage without configuration."""

    help: str
    run: Callable[..., Any]
    args: tuple[Arg, ...]
    settings: type | None = None
    counters: Mapping[str, str | None] = field(default_factory=dict)
    preload: tuple[str, ...] = ()
    distributed: bool = False


def command(rule: str) -> str:
    return rule.replace("_", "-")


def load(rule: str) -> Stage:
    """The declaration of a rule's stage (importing its module and what the module imports)."""
    return importlib.import_module(f"lqs.stages.{rule}").STAGE
