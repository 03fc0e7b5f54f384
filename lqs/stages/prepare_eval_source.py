"""Stage `prepare_eval_source`: efficacy.eval_source -> proxy-tokenizer ids, as the target set is tokenized
(docs/stages.md#the-efficacy-experiment)."""

from __future__ import annotations

from dataclasses import dataclass

from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.target import tokenize_target


@dataclass(frozen=True)
class Settings:
    text_field: str  # target.text_field
    max_length: int  # target.max_length
    split: str  # efficacy.eval_split


def prepare_eval_source(source: str, tokenizer_dir: str, out: str, settings: Settings) -> int:
    """Writes the efficacy experiment's target evaluation set (input_ids): each text's first window
    of max_length, all of the source's records (none held out). Returns their number."""
    s = settings
    return tokenize_target(source, tokenizer_dir, out, text_field=s.text_field, max_length=s.max_length, split=s.split)


STAGE = Stage(
    help="tokenize the efficacy evaluation set (efficacy.eval_source) as the target set is",
    run=prepare_eval_source,
    args=(Arg("source"), Arg("--tokenizer-dir"), Arg("--out")),
    settings=Settings,
    counters={"samples": None},
    preload=TOKENIZERS,
)
