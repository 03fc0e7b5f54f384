"""Fetch rules (`fetch_*`): models, tokenizers and scorer checkpoints from the Hugging Face Hub,
a local directory, or an architecture config to initialise (docs/configuration.md#models). Every result is a
local Hugging Face directory with float32 safetensors weights and a tokenizer.

Hub access goes through lqs.hub: before downloading, each fetch checks access (`auth_check`) so
that a gated or missing repo fails in a CPU fetch job, before any GPU job, with a `HubAccessError`
that names the repo, the page where access is requested and how to log in.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lqs import corpus
from lqs.hub import hub_snapshot
from lqs.io import atomic_dir
from lqs.tokenize import load_tokenizer

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# What a tokenizer needs from a model repo (not the weights).
TOKENIZER_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
# Weights for other frameworks, or in formats transformers does not load: never downloaded.
FOREIGN_WEIGHTS = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.gguf", "*.ckpt",
                   "*.pt", "*.pth", "*.mlmodel", "onnx/*", "coreml/*", "openvino/*"]


def pickle_refusal(name: str, directory: str, files: list[str], why: str) -> str:
    return (f"model {name!r}: its pickle weights ({', '.join(files)}) are refused ({why}; unpickling a file can "
            "run any code). Convert them once to safetensors where you trust the file, e.g. `python -c "
            "\"from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; "
            f"d = '{directory}'; M.from_pretrained(d).save_pretrained(d + '-safetensors'); "
            "T.from_pretrained(d).save_pretrained(d + '-safetensors')\"` (AutoModel for a model without an "
            "LM head), and give the new directory as the model's path")


def refuse_local_pickles(source: dict[str, Any]) -> None:
    """A local model directory must hold safetensors weights: pickle weights are refused before
    anything opens them (as the loaders of every later stage do, with use_safetensors)."""
    local = local_source(source)
    if local is None or not Path(local).is_dir() or any(Path(local).glob("*.safetensors")):
        return  # a hub repo, a missing directory (resolve_source says so), or safetensors
    pickles = sorted(p.name for p in Path(local).glob("pytorch_model*.bin"))
    if pickles:
        raise ValueError(pickle_refusal(local, local, pickles, "a local directory must have safetensors"))


def local_source(source: dict[str, Any]) -> str | None:
    """The local directory a model source names ({path: ...}, or a {repo: ...} that is a directory)."""
    if "path" in source:
        return source["path"]
    if "repo" in source and Path(source["repo"]).is_dir():
        return source["repo"]
    return None


def resolve_source(source: dict[str, Any], *, allow_patterns: list[str] | None = None,
                   ignore_patterns: list[str] | None = None) -> str:
    """A local directory for a {path: ...} or {repo: ..., revision: ...} model source."""
    local = local_source(source)
    if local is not None:
        if not Path(local).is_dir():
            raise FileNotFoundError(f"model directory not found: {local}")
        return local
    if "repo" in source:
        return hub_snapshot(source["repo"], revision=source.get("revision"), allow_patterns=allow_patterns,
                            ignore_patterns=ignore_patterns)
    raise ValueError(f"a model source needs 'path' or 'repo' (got {sorted(source)})")


def train_tokenizer(corpus_paths: Sequence[str], out_dir: str, *, text_field: str, vocab_size: int,
                    max_chars: int, max_docs: int = 100_000, on_bad_record: str = "error") -> None:
    """A byte-level BPE tokenizer trained on the corpus's first `max_docs` records; each sequence
    starts with <s>. The first stage to open the corpus: a file it cannot read stops it
    (`on_bad_record: error`) or is passed over (`skip`). Bad records are tokenize_shard's to report."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        read = 0
        for record in corpus.iter_records(corpus_paths, text_field, max_chars):
            if record.doc_id is None:  # an unreadable file
                corpus.check(record, on_bad_record)
                continue
            if read == max_docs:
                break
            read += 1
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
    patterns = TOKENIZER_FILES + (["*.py"] if trust_remote_code else [])
    tokenizer = load_tokenizer(resolve_source(source, allow_patterns=patterns), trust_remote_code)
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
    config ({arch: ...}, with the tokenizer of `tokenizer_dir`), a local directory or a hub repo.

    A local directory must have safetensors weights (pickles are refused unopened). A hub repo
    without them is read through torch's weights-only unpickler, which builds tensors and
    nothing else, and written as safetensors here, once: no later stage reads a pickle."""
    from transformers import AutoModel, AutoModelForCausalLM

    if "arch" in source:
        if tokenizer_dir is None:
            raise ValueError("a model built from an architecture config needs a tokenizer directory")
        tokenizer = load_tokenizer(tokenizer_dir)
        model = build_model(source["arch"], tokenizer, causal_lm, seed)
    else:
        refuse_local_pickles(source)
        snapshot = resolve_source(source, ignore_patterns=FOREIGN_WEIGHTS)
        tokenizer = load_tokenizer(tokenizer_dir or snapshot, trust_remote_code)
        auto = AutoModelForCausalLM if causal_lm else AutoModel
        try:
            model = auto.from_pretrained(snapshot, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                         use_safetensors=True if local_source(source) else None)
        except pickle.UnpicklingError:  # the weights-only unpickler met more than tensors
            raise ValueError(pickle_refusal(source["repo"], snapshot, sorted(
                p.name for p in Path(snapshot).glob("pytorch_model*.bin")), "they hold more than tensors")) from None
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def fetch_scorer(source: dict[str, Any], out_dir: str, trust_remote_code: bool = False) -> None:
    """A pretrained scorer checkpoint (`scorer.checkpoint`: a hub repo or a local directory, as
    written by train_scorer) loaded and written again as `out_dir`: float32 safetensors backbone,
    its tokenizer, head.safetensors and scorer.json. Loading it here, on the CPU, means a
    checkpoint that is not one, or whose weights are not those it was saved with (lqs.scorer
    check_weights), fails before any scoring job starts; the copy records its own digests."""
    from lqs import scorer as scorer_lib

    refuse_local_pickles(source)
    local = resolve_source(source, ignore_patterns=FOREIGN_WEIGHTS)
    name = source.get("repo") or source.get("path")
    missing = [f for f in (scorer_lib.SCORER_CONFIG, scorer_lib.HEAD_FILE) if not (Path(local) / f).is_file()]
    if missing:
        raise ValueError(f"scorer.checkpoint {name!r} is not a scorer checkpoint: it has no "
                         f"{' or '.join(missing)} (a checkpoint has scorer.json, head.safetensors, the "
                         "backbone's config and safetensors weights, and its tokenizer)")
    loaded = scorer_lib.load(local, device="cpu", trust_remote_code=trust_remote_code)
    with atomic_dir(out_dir) as tmp:
        scorer_lib.save_scorer(loaded.model, loaded.tokenizer, tmp, loaded.config)
