"""What the fetch stages (lqs/stages/fetch_*.py) share: model sources (a Hugging Face Hub repo, a
local directory, or an architecture config to initialise; docs/configuration.md#models) and
`fetch_model`, which writes one as a local Hugging Face directory with float32 safetensors weights
and a tokenizer (stages fetch_proxy and fetch_scorer_base).

Hub access goes through lqs.hub: before downloading, each fetch checks access (`auth_check`) so
that a gated or missing repo fails in a CPU fetch job, before any GPU job, with a `HubAccessError`
that names the repo, the page where access is requested and how to log in.
"""

from __future__ import annotations

import json
import logging
import math
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


# ----------------------------------------------------------------------------------------------
# untrusted checkpoint files, checked before anything is allocated by what they say

SAFETENSORS_HEADER_MAX = 100 * 2**20  # bytes: a real header is a few MB at most
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                           "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# What a scorer or proxy can need, at most: a config beyond these is damaged or hostile (a
# max_position_embeddings of 2e9 makes XGLM allocate a 512 GB sinusoidal table).
CONFIG_BOUNDS = {"positions": 1_048_576, "width": 65_536, "vocab": 4_194_304, "layers": 1_024, "ffn": 262_144,
                 "heads": 1_024}
CONFIG_KEYS = {"positions": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"),
               "width": ("hidden_size", "d_model", "n_embd", "dim"),
               "vocab": ("vocab_size",),
               "layers": ("num_hidden_layers", "num_layers", "n_layer", "n_layers"),
               "ffn": ("intermediate_size", "ffn_dim", "n_inner", "hidden_dim"),
               "heads": ("num_attention_heads", "attention_heads", "n_head", "num_key_value_heads")}
# The parameters a config implies (embeddings, position table, layers) may exceed what its
# safetensors files hold by this factor, plus a fixed slack for tiny models' position tables.
PARAMETER_FACTOR, PARAMETER_SLACK = 4, 2**24


def json_object_file(path: Path) -> dict:
    """A JSON object file; anything else is a ValueError naming the file."""
    try:
        value = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the checkpoint is damaged") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(value).__name__}: the checkpoint is damaged")
    return value


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Checks a safetensors file's header before any library reads it: its length (at most
    SAFETENSORS_HEADER_MAX, within the file), a JSON object of tensors each with a known dtype,
    a shape of whole numbers and data offsets inside the file whose length is the shape's bytes.
    Returns each tensor's shape; a damaged file is a ValueError naming it."""
    size = path.stat().st_size

    def damaged(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid safetensors file ({why}): the checkpoint is damaged")

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise damaged(f"{size} bytes, shorter than the header's length field")
        length = int.from_bytes(prefix, "little")
        if length > SAFETENSORS_HEADER_MAX or 8 + length > size:
            raise damaged(f"a header of {length} bytes in a file of {size}; at most "
                          f"{SAFETENSORS_HEADER_MAX} and within the file")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise damaged("its header is not JSON") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    data, shapes = size - 8 - length, {}
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        shape, offsets = (tensor.get(key) if isinstance(tensor, dict) else None for key in ("shape", "data_offsets"))
        if not (isinstance(tensor, dict) and tensor.get("dtype") in SAFETENSORS_DTYPE_BYTES
                and isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
                and all(type(n) is int and n >= 0 for n in (*shape, *offsets))):
            raise damaged(f"tensor {name!r} has no known dtype, shape and data_offsets")
        begin, end = offsets
        if not begin <= end <= data or end - begin != math.prod(shape) * SAFETENSORS_DTYPE_BYTES[tensor["dtype"]]:
            raise damaged(f"tensor {name!r}: data_offsets {offsets} do not hold its shape {shape} of "
                          f"{tensor['dtype']} within the {data} data bytes")
        shapes[name] = shape
    return shapes


def config_sizes(path: Path) -> dict[str, int]:
    """The sizes a model's config.json sets (CONFIG_KEYS: positions, width, vocab, layers, ffn,
    heads), each checked to be a whole number within CONFIG_BOUNDS; ValueError naming the file
    and key otherwise."""
    config, sizes = json_object_file(path), {}
    for size, keys in CONFIG_KEYS.items():
        for key in keys:
            value = config.get(key)
            if value is None:
                continue
            if type(value) is not int or not 0 < value <= CONFIG_BOUNDS[size]:
                raise ValueError(f"{path}: {key} is {value!r}; a model lqs loads has a whole number from 1 to "
                                 f"{CONFIG_BOUNDS[size]:,} there: the checkpoint is damaged or not one lqs can use")
            sizes[size] = max(sizes.get(size, 0), value)
    return sizes


def check_model_files(directory: str | Path) -> dict[str, int]:
    """A local model directory's config.json and safetensors headers checked before a loader
    allocates what they say: the config's sizes within CONFIG_BOUNDS, every safetensors header
    sound, and the parameters the config implies (embeddings, a position table, the layers'
    matrices) at most PARAMETER_FACTOR times the elements the weights hold (plus PARAMETER_SLACK).
    Returns the config's sizes (config_sizes)."""
    directory = Path(directory)
    config = directory / "config.json"
    if not config.is_file():
        raise ValueError(f"{directory} has no config.json: not a Hugging Face model directory")
    sizes = config_sizes(config)
    stored = sum(math.prod(shape) for file in sorted(directory.glob("*.safetensors"))
                 for shape in safetensors_shapes(file).values())
    width = sizes.get("width", 0)
    implied = width * (sizes.get("vocab", 0) + sizes.get("positions", 0)) + sizes.get("layers", 0) * (
        4 * width * width + 3 * width * sizes.get("ffn", 4 * width))
    if stored and implied > PARAMETER_FACTOR * stored + PARAMETER_SLACK:  # no safetensors: a hub pickle
        raise ValueError(f"{config} implies about {implied:,} parameters, but the safetensors weights beside it "
                         f"hold {stored:,}: the config is damaged or does not belong to these weights")
    return sizes


def check_weight_shapes(directory: str | Path, auto, trust_remote_code: bool = False) -> None:
    """Each weight of the directory's safetensors files that the model (`auto`: a transformers
    Auto class, built from config.json on the meta device: nothing allocated) has, with the
    model's shape: else one line naming the file and the tensor, where transformers would end in
    its advice to pass ignore_mismatched_sizes. Call after check_model_files."""
    from transformers import AutoConfig

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    prefix = f"{model.base_model_prefix}."
    for file in sorted(directory.glob("*.safetensors")):
        for name, shape in safetensors_shapes(file).items():
            key = name if name in expected or not name.startswith(prefix) else name[len(prefix):]
            if key in expected and expected[key] != shape:
                raise ValueError(f"{file}: tensor {name!r} has shape {shape}, but {directory / 'config.json'} makes "
                                 f"it {expected[key]}: the weights and the config do not belong together")


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
        check_model_files(snapshot)  # before transformers allocates what its config says
        check_weight_shapes(snapshot, auto, trust_remote_code)
        try:
            model = auto.from_pretrained(snapshot, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                         use_safetensors=True if local_source(source) else None)
        except pickle.UnpicklingError:  # the weights-only unpickler met more than tensors
            raise ValueError(pickle_refusal(source["repo"], snapshot, sorted(
                p.name for p in Path(snapshot).glob("pytorch_model*.bin")), "they hold more than tensors")) from None
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
