"""Stage `prepare_target`: the target set -> proxy-tokenizer ids, J's part and a held-out part
(docs/stages.md#prepare_target)."""

from __future__ import annotations

from dataclasses import dataclass

from lqs.stage import TOKENIZERS, Arg, Stage
from lqs.target import tokenize_target


@dataclass(frozen=True)
class Settings:
    text_field: str  # target.text_field
    max_length: int  # target.max_length
    split: str  # target.split
    revision: str | None  # target.revision
    max_samples: int | None  # target.max_samples
    eval_fraction: float  # target.eval_fraction
    seed: int  # target.seed


def prepare_target(source: str, tokenizer_dir: str, out: str, settings: Settings, eval_out: str | None = None) -> int:
    """Writes tokens.parquet (input_ids, J's part) and, with `eval_out`, the held-out part (empty
    when eval_fraction is 0): each text's first window of max_length. The target set is the
    source's first max_samples records. Returns the number of J's samples."""
    s = settings
    return tokenize_target(source, tokenizer_dir, out, text_field=s.text_field, max_length=s.max_length, split=s.split,
                           revision=s.revision, max_samples=s.max_samples, eval_out=eval_out,
                           eval_fraction=s.eval_fraction, seed=s.seed)


STAGE = Stage(
    help="tokenize the target set",
    run=prepare_target,
    args=(Arg("source"), Arg("--tokenizer-dir"), Arg("--out"), Arg("--eval-out", required=False)),
    settings=Settings,
    counters={"samples": None},
    preload=TOKENIZERS,
)
