"""Stage `fetch_scorer_base`: the scorer's backbone, built or fetched (docs/stages.md#fetch_scorer_base)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lqs.models import fetch_model
from lqs.stage import MODELS, Arg, Stage


@dataclass(frozen=True)
class Settings:
    source: dict[str, Any]  # models.scorer
    causal_lm: bool  # False: the backbone without an LM head (set by the rule)
    seed: int  # scorer.seed: initialises an architecture-config scorer
    trust_remote_code: bool  # models.trust_remote_code


def fetch_scorer_base(out_dir: str, settings: Settings, tokenizer_dir: str | None = None) -> None:
    """The scorer base as a float32 safetensors directory (lqs.models.fetch_model); an
    architecture-config scorer takes the tokenizer of `tokenizer_dir`, a fetched one keeps its own."""
    s = settings
    fetch_model(s.source, out_dir, causal_lm=s.causal_lm, tokenizer_dir=tokenizer_dir, seed=s.seed,
                trust_remote_code=s.trust_remote_code)


STAGE = Stage(
    help="build or fetch the scorer's base model as a float32 safetensors directory",
    run=fetch_scorer_base,
    args=(Arg("--tokenizer-dir", required=False), Arg("--out-dir")),
    settings=Settings,
    preload=MODELS,
)
