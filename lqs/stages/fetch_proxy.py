"""Stage `fetch_proxy`: the proxy LM from a repo or local directory (docs/stages.md#pretrain_proxy--fetch_proxy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lqs.models import fetch_model
from lqs.stage import MODELS, Arg, Stage


@dataclass(frozen=True)
class Settings:
    source: dict[str, Any]  # models.proxy
    causal_lm: bool  # True: the proxy is a causal LM (set by the rule)
    trust_remote_code: bool  # models.trust_remote_code


def fetch_proxy(tokenizer_dir: str, out_dir: str, settings: Settings) -> None:
    """θ_0 as a float32 safetensors directory with the tokenizer of `tokenizer_dir` (lqs.models.fetch_model)."""
    s = settings
    fetch_model(s.source, out_dir, causal_lm=s.causal_lm, tokenizer_dir=tokenizer_dir,
                trust_remote_code=s.trust_remote_code)


STAGE = Stage(
    help="build or fetch the proxy LM as a float32 safetensors directory",
    run=fetch_proxy,
    args=(Arg("--tokenizer-dir"), Arg("--out-dir")),
    settings=Settings,
    preload=MODELS,
)
