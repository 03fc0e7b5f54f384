"""What the fetch stages (lqs/stages/fetch_*.py) share: model sources (a Hugging Face Hub repo, a
local directory, or an architecture config to initialise; docs/configuration.md#models) and
`fetch_model`, which writes one as a local Hugging Face directory with float32 safetensors weights
and a tokenizer (stages fetch_proxy and fetch_scorer_base).

Hub access goes through lqs.hub: before downloading, each fetch checks access (`auth_check`) so
that a gated or missing repo fails in a CPU fetch job, before any GPU job, with a `HubAccessError`
that names the repo, the page where access is requested and how to log in.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from lqs.hub import hub_snapshot
from lqs.io import atomic_dir
from lqs.tokenize import load_tokenizer

log = logging.getLogger(__name__)

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
