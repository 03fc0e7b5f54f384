"""An untrusted checkpoint decides nothing before it is checked (issue 29, defects 4 and 5, and
the checkpoint rough edges): scorer.json and config.json are checked (types, known pooling,
max_length within the positions, sizes a scorer can need, the parameters the config implies
against the weights stored), safetensors headers are read and bounded before a library reads
them, and wrong-shape weights are named by lqs; every failure is one line naming the file."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import score_error as lqs_score
from helpers import tiny_corpus, tiny_scorer, write_jsonl
from safetensors.torch import save_file
from transformers import MistralConfig, MistralForCausalLM

from lqs import models, scorer


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return tiny_scorer(tmp_path_factory.mktemp("scorer"))


@pytest.fixture
def checkpoint(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ckpt"))


def _edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


def _score(caplog, checkpoint: Path, tmp_path: Path) -> tuple[int, str]:
    src = write_jsonl(tmp_path / "in.jsonl", tiny_corpus(4))
    return lqs_score(caplog, src, "--scorer", checkpoint, "--out", tmp_path / "out.jsonl")


def test_the_tiny_checkpoint_itself_is_accepted(checkpoint, caplog, tmp_path):
    assert _score(caplog, checkpoint, tmp_path) == (0, "")


@pytest.mark.parametrize("value", [2_000_000_000, 2e9, "64", -1])
def test_positions_beyond_any_scorer_are_refused_before_allocation(checkpoint, caplog, tmp_path, value):
    # XGLM builds a sinusoidal table of max_position_embeddings x d_model: 2e9 would be 512 GB
    _edit_json(checkpoint / "config.json", max_position_embeddings=value)
    start = time.perf_counter()
    code, error = _score(caplog, checkpoint, tmp_path)
    assert code == 1 and f"{checkpoint / 'config.json'}: max_position_embeddings is {value!r}" in error
    assert "1,048,576" in error and time.perf_counter() - start < 30


def test_a_config_implying_far_more_parameters_than_stored_is_refused(checkpoint, caplog, tmp_path):
    _edit_json(checkpoint / "config.json", max_position_embeddings=1_000_000, d_model=4096)
    code, error = _score(caplog, checkpoint, tmp_path)
    assert code == 1 and f"{checkpoint / 'config.json'} implies about" in error and "parameters" in error


@pytest.mark.parametrize("damage, why", [
    (lambda data: (10**12).to_bytes(8, "little") + data[8:], "a header of 1000000000000 bytes"),
    (lambda data: (200 * 2**20).to_bytes(8, "little") + data[8:], "at most 104857600"),
    (lambda data: data[:8] + data[8:].replace(b'"data_offsets":[0,', b'"data_offsets":[9,', 1), "data_offsets"),
    (lambda data: data[:20], "a header of"),
    (lambda data: data[:8] + b"[" + data[9:], "not JSON"),
], ids=["huge length", "over 100 MB", "offsets", "truncated", "not json"])
def test_a_damaged_safetensors_header_is_one_line_naming_the_file(checkpoint, caplog, tmp_path, damage, why):
    for name in ("model.safetensors", "head.safetensors"):
        ckpt = Path(shutil.copytree(checkpoint, tmp_path / name))
        path = ckpt / name
        path.write_bytes(damage(path.read_bytes()))
        code, error = _score(caplog, ckpt, tmp_path)
        assert code == 1 and f"{path} is not a valid safetensors file" in error and why in error, error


def test_offsets_past_the_file_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"data_offsets":[0,16]', b'"data_offsets":[0,99]'))
    with pytest.raises(ValueError, match="do not hold its shape"):
        models.safetensors_shapes(path)


@pytest.mark.parametrize("content, why", [
    ("[1, 2]", "must hold a JSON object, not list"),
    ("{not json", "is not valid JSON"),
    ('{"max_length": "32"}', "max_length must be a whole number of at least 1, not '32'"),
    ('{"max_length": 32, "pooling": "cls"}', "pooling 'cls' is not one lqs scores with (mean)"),
    ('{"max_length": 32, "weights_sha256": ["x"]}', "weights_sha256 must map file names"),
], ids=["list", "malformed", "max_length type", "unknown pooling", "digests"])
def test_a_bad_scorer_json_is_one_line_naming_it(checkpoint, caplog, tmp_path, content, why):
    (checkpoint / "scorer.json").write_text(content)
    code, error = _score(caplog, checkpoint, tmp_path)
    assert code == 1 and str(checkpoint / "scorer.json") in error and why in error, error


def test_max_length_beyond_the_positions_is_refused(checkpoint, caplog, tmp_path):
    _edit_json(checkpoint / "scorer.json", max_length=65)  # the backbone has 64 positions
    code, error = _score(caplog, checkpoint, tmp_path)
    assert code == 1 and f"{checkpoint / 'scorer.json'}: max_length 65 is beyond the 64 positions" in error


def test_wrong_shape_weights_get_lqs_own_message(checkpoint, caplog, tmp_path):
    _edit_json(checkpoint / "config.json", ffn_dim=96)  # config.json is not among the digested files
    code, error = _score(caplog, checkpoint, tmp_path)
    assert code == 1 and "ignore_mismatched_sizes" not in error
    assert f"{checkpoint / 'model.safetensors'}: tensor 'layers.0.fc1.bias' has shape [64], but" in error
    assert "config.json makes it [96]" in error


def test_a_wrong_shape_head_is_refused(checkpoint, caplog, tmp_path):
    save_file({"weight": torch.zeros(1, 16), "bias": torch.zeros(1)}, str(checkpoint / "head.safetensors"))
    _edit_json(checkpoint / "scorer.json", weights_sha256=scorer.weights_digests(checkpoint))
    code, error = _score(caplog, checkpoint, tmp_path)
    assert code == 1 and f"{checkpoint / 'head.safetensors'}: the head must be a weight of shape [1, 32]" in error


def test_a_fetched_model_directory_is_checked_before_loading(tmp_path, tok_dir):
    model = tmp_path / "proxy"
    MistralForCausalLM(MistralConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
                       ).save_pretrained(model)
    _edit_json(model / "config.json", vocab_size=10**9)
    with pytest.raises(ValueError, match=r"proxy/config.json: vocab_size is 1000000000; .* 1 to 4,194,304"):
        models.fetch_model({"path": str(model)}, str(tmp_path / "out"), causal_lm=True, tokenizer_dir=tok_dir)
    _edit_json(model / "config.json", vocab_size=300, intermediate_size=48)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'model.layers.0.mlp.down_proj.weight' has "
                                         r"shape \[32, 64\], but .* makes it \[32, 48\]"):
        models.fetch_model({"path": str(model)}, str(tmp_path / "out"), causal_lm=True, tokenizer_dir=tok_dir)
    assert not (tmp_path / "out").exists()
