"""Stage `train_tokenizer`: corpus -> a byte-level BPE tokenizer (docs/stages.md#train_tokenizer--fetch_tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass

from lqs import corpus
from lqs.corpus import CorpusReading
from lqs.io import atomic_dir
from lqs.splits import planned_splits
from lqs.stage import TOKENIZERS, Arg, Stage

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
MAX_DOCS = 100_000  # the corpus's first records the tokenizer is trained on


@dataclass(frozen=True)
class Settings:
    corpus: CorpusReading  # every shard's splits, corpus.text_field, max_chars
    vocab_size: int  # models.tokenizer.vocab_size
    on_bad_record: str  # corpus.on_bad_record: for a corpus file it cannot read


def train_tokenizer(plan: str, out_dir: str, settings: Settings, *,
                    max_docs: int = MAX_DOCS) -> None:
    """A byte-level BPE tokenizer trained on the corpus's first `max_docs` records; each sequence
    starts with <s>. The first stage to open the corpus: a file it cannot read stops it
    (`on_bad_record: error`) or is passed over (`skip`). Bad records are tokenize_shard's to report."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    s = settings

    def texts():
        read = 0
        for record in s.corpus.records(planned_splits(plan, None, s.corpus.splits_sha256)):
            if record.doc_id is None:  # an unreadable file
                corpus.check(record, s.on_bad_record)
                continue
            if read == max_docs:
                break
            read += 1
            if record.text is not None:
                yield record.text

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=s.vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    with atomic_dir(out_dir) as tmp:
        PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS).save_pretrained(tmp)


STAGE = Stage(
    help="train a byte-level BPE tokenizer on the corpus",
    run=train_tokenizer,
    args=(Arg("--plan"), Arg("--out-dir")),
    settings=Settings,
    preload=TOKENIZERS,
)
