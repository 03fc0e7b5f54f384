"""Fetch rules (`fetch_*`): models and tokenizers from the hub, a local directory, or an
architecture config to initialise (DESIGN.md §6). Every result is a local Hugging Face
directory with float32 safetensors weights and a tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lqs import corpus
from lqs.io import atomic_dir

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def resolve_source(source: dict[str, Any]) -> str:
    """A local directory for a {path: ...} or {repo: ..., revision: ...} model source."""
    if "path" in source:
        if not Path(source["path"]).is_dir():
            raise FileNotFoundError(f"model directory not found: {source['path']}")
        return source["path"]
    if "repo" in source:
        from huggingface_hub import snapshot_download

        return snapshot_download(source["repo"], revision=source.get("revision"))
    raise ValueError(f"a model source needs 'path' or 'repo' (got {sorted(source)})")


def train_tokenizer(corpus_paths: Sequence[str], out_dir: str, *, text_field: str, vocab_size: int,
                    max_chars: int, max_docs: int = 100_000) -> None:
    """A byte-level BPE tokenizer trained on the corpus; each sequence starts with <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        for i, record in enumerate(corpus.iter_records(corpus_paths, text_field, max_chars)):
            if i >= max_docs:
                break
            if record.text is not None:
                yield record.text

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    with atomic_dir(out_dir) as tmp:
        PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS).save_pretrained(tmp)


def fetch_tokenizer(source: dict[str, Any], out_dir: str, trust_remote_code: bool = False) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(source), trust_remote_code=trust_remote_code)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)


def build_model(arch: dict[str, Any], tokenizer, causal_lm: bool, seed: int) -> torch.nn.Module:
    """A randomly initialised model from an architecture config sized to the tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    arch = dict(arch)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch, vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    return auto.from_config(config, dtype=torch.float32)


def fetch_model(source: dict[str, Any], out_dir: str, *, causal_lm: bool, tokenizer_dir: str | None = None,
                seed: int = 0, trust_remote_code: bool = False) -> None:
    """Writes a float32 safetensors model directory with its tokenizer: from an architecture
    config ({arch: ...}, with the tokenizer of `tokenizer_dir`), a local directory or a hub repo."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if "arch" in source:
        if tokenizer_dir is None:
            raise ValueError("a model built from an architecture config needs a tokenizer directory")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = build_model(source["arch"], tokenizer, causal_lm, seed)
    else:
        local = resolve_source(source)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or local, trust_remote_code=trust_remote_code)
        auto = AutoModelForCausalLM if causal_lm else AutoModel
        model = auto.from_pretrained(local, dtype=torch.float32, trust_remote_code=trust_remote_code)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

