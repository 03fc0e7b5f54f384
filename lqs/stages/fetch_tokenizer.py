"""Stage `fetch_tokenizer`: a tokenizer from a repo or directory (docs/stages.md#train_tokenizer--fetch_tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lqs.io import atomic_dir
from lqs.models import resolve_source
from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.tokenize import load_tokenizer

# What a tokenizer needs from a model repo (not the weights).
TOKENIZER_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


@dataclass(frozen=True)
class Settings:
    source: dict[str, Any]  # models.tokenizer's repo or path, else models.proxy, else {path: results/scorer}
    trust_remote_code: bool  # models.trust_remote_code


def fetch_tokenizer(out_dir: str, settings: Settings) -> None:
    patterns = TOKENIZER_FILES + (["*.py"] if settings.trust_remote_code else [])
    tokenizer = load_tokenizer(resolve_source(settings.source, allow_patterns=patterns), settings.trust_remote_code)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)


STAGE = Stage(
    help="copy a tokenizer from a local directory or the hub",
    run=fetch_tokenizer,
    args=(Arg("--out-dir"),),
    settings=Settings,
    preload=TOKENIZERS,
)
