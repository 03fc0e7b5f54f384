"""The Hugging Face model/data path (docs/configuration.md#models, docs/reliability.md), offline.

A local Hugging Face cache (the `models--org--name` / `datasets--org--name` layout that
huggingface_hub reads: refs/, snapshots/<commit>/, blobs/) is filled with tiny models and a tiny
LIMA-shaped data set written by the libraries themselves (save_pretrained, Dataset.to_json), and
read under HF_HUB_OFFLINE=1 through the same fetch code the workflow runs. Access errors (gated,
missing, bad revision) come from huggingface_hub itself: its HTTP client is swapped for one whose
transport answers like the Hub does (status + X-Error-Code), in-process and — through a
sitecustomize.py on PYTHONPATH — in the workflow's subprocesses. The cache layout and the fake
Hub live in fake_hub.py. No network is used.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from fake_hub import FAKE_TOKEN, HUB_MOCK, add_to_hub_cache
from helpers import (
    GOOD,
    ROOT,
    lqs_main,
    make_workflow,
    snakemake,
    stage_function,
    tiny_config,
    tiny_corpus,
    train_tokenizer,
    write_jsonl,
)
from safetensors import safe_open

from lqs import models
from lqs.hub import HubAccessError
from lqs.stages import fetch_scorer as fetch_scorer_stage
from lqs.stages import fetch_target as fetch_target_stage
from lqs.stages import fetch_tokenizer as fetch_tokenizer_stage
from lqs.stages import prepare_target as prepare_target_stage

fetch_scorer = stage_function(fetch_scorer_stage)
fetch_target = stage_function(fetch_target_stage)
fetch_tokenizer = stage_function(fetch_tokenizer_stage)
prepare_target = stage_function(prepare_target_stage)

MISTRAL = "test-org/tiny-mistral"  # the proxy's role: Mistral causal LM (as Data-Selection/BSL-160M)
FAIRSEQ = "test-org/tiny-fairseq-dense"  # the scorer base: an XGLM causal-LM checkpoint, pickled weights
SCORER = "test-org/tiny-lqs-scorer"  # a trained scorer checkpoint (scorer.checkpoint)
LIMA = "GAIR/lima"  # the target set, a data set repo
LIMA_TRAIN = [{"conversations": [f"Question {i}?\nMore.", GOOD[i % len(GOOD)]], "source": "test"}
              for i in range(10)]
LIMA_TEST = [{"conversations": [f"Test question {i}?"], "source": "test"} for i in range(3)]


# ----------------------------------------------------------------------------------------------
# a Hugging Face cache filled with tiny models and the target set (add_to_hub_cache: fake_hub.py)


def mistral(tokenizer, seed: int):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                           tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return MistralForCausalLM(config).eval()


def xglm_config(tokenizer):
    from transformers import XGLMConfig

    return XGLMConfig(vocab_size=len(tokenizer), d_model=32, ffn_dim=64, num_layers=1, attention_heads=2,
                      max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


class Hub:
    """The filled cache: HF_HOME, and the originals to compare fetched copies with."""

    def __init__(self, root: Path):
        from transformers import AutoTokenizer, XGLMForCausalLM, XGLMModel

        from lqs.scorer import ScorerModel, save_scorer

        self.root = root
        self.home = root / "hf_home"
        self.cache = self.home / "hub"
        build = root / "build"
        corpus = write_jsonl(build / "corpus.jsonl", tiny_corpus(60))
        self.tokenizer_dir = build / "tokenizer"
        train_tokenizer([str(corpus)], str(self.tokenizer_dir), text_field="text", vocab_size=300,
                        max_chars=10**6)
        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)

        # the proxy: main and a pinned tag v1 are different commits with different weights
        self.mistral = {}
        for ref, seed in (("v1", 1), ("main", 2)):
            model = mistral(self.tokenizer, seed)
            model.save_pretrained(build / f"mistral-{ref}")
            self.tokenizer.save_pretrained(build / f"mistral-{ref}")
            commit = add_to_hub_cache(self.cache, MISTRAL, build / f"mistral-{ref}", refs=(ref,))
            self.mistral[ref] = (model, commit)

        # the scorer base, as fairseq-dense ships it: XGLMForCausalLM with a pytorch_model.bin
        torch.manual_seed(3)
        self.fairseq = XGLMForCausalLM(xglm_config(self.tokenizer)).eval()
        (build / "fairseq").mkdir()
        self.fairseq.config.save_pretrained(build / "fairseq")
        torch.save(self.fairseq.state_dict(), build / "fairseq" / "pytorch_model.bin")
        self.tokenizer.save_pretrained(build / "fairseq")
        add_to_hub_cache(self.cache, FAIRSEQ, build / "fairseq")

        # a trained scorer checkpoint, as train_scorer writes it
        torch.manual_seed(4)
        self.scorer = ScorerModel(XGLMModel(xglm_config(self.tokenizer))).eval()
        self.scorer_dir = build / "scorer"
        self.scorer_dir.mkdir()
        save_scorer(self.scorer, self.tokenizer, self.scorer_dir, {"max_length": 32, "pooling": "mean"})
        add_to_hub_cache(self.cache, SCORER, self.scorer_dir)

        # the LIMA-shaped target set: train/test JSONL written by `datasets` (and a loading script,
        # which must never run)
        import datasets

        datasets.disable_progress_bars()
        lima = build / "lima"
        datasets.Dataset.from_list(LIMA_TRAIN).to_json(lima / "train.jsonl")
        datasets.Dataset.from_list(LIMA_TEST).to_json(lima / "test.jsonl")
        (lima / "lima.py").write_text("raise SystemExit('a data set script was run')\n")
        add_to_hub_cache(self.cache, LIMA, lima, repo_type="dataset")

    def env(self, offline: bool = True, **extra: str) -> dict[str, str]:
        """A subprocess environment reading this cache (HF_HOME), with a fake HF_TOKEN."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
        env.update(HF_HOME=str(self.home), HF_HUB_OFFLINE="1" if offline else "0", HF_TOKEN=FAKE_TOKEN,
                   HF_HUB_DISABLE_TELEMETRY="1", **extra)
        return env


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Hub:
    return Hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def offline(hub, monkeypatch, tmp_path) -> Hub:
    """In-process: HF_HOME is the filled cache and HF_HUB_OFFLINE=1, as the environment (for
    what reads it at call time) and as the libraries' constants (read once, at import)."""
    import datasets
    from huggingface_hub import constants

    _use_env(monkeypatch, hub, offline=True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    assert constants.HF_HUB_OFFLINE
    return hub


def _use_env(monkeypatch, hub: Hub, offline: bool) -> None:
    from huggingface_hub import constants

    for key, value in hub.env(offline=offline).items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HOME", str(hub.home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


# ----------------------------------------------------------------------------------------------
# the fake Hub (HUB_MOCK: fake_hub.py), in-process


@pytest.fixture
def mock_hub(hub, monkeypatch, tmp_path):
    """In-process: the fake Hub (HUB_MOCK), online (HF_HUB_OFFLINE unset), HF_TOKEN set. Yields a
    function that reads the log of the requests about repos (huggingface_hub 2.4 also asks
    /api/agent-harnesses, without the token, which is not ours to check)."""
    import huggingface_hub
    from huggingface_hub.utils._http import default_client_factory

    _use_env(monkeypatch, hub, offline=False)
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv("LQS_MOCK_LOG", str(log))
    monkeypatch.setenv("LQS_MOCK_GATED", "org/gated,org/gated-data")
    monkeypatch.setenv("LQS_MOCK_MISSING", "org/missing")
    monkeypatch.setenv("LQS_MOCK_BAD_REVISIONS", "no-such-revision")
    namespace: dict = {}
    exec(HUB_MOCK, namespace)  # installs the mock (LQS_MOCK_LOG is set)
    try:
        yield lambda: [r for r in log.read_text().splitlines()
                       if r.split()[1].startswith(("/api/models/", "/api/datasets/"))]
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


def assert_access_message(message: str, repo: str, page: str) -> None:
    assert f"'{repo}'" in message, message
    assert page in message, message
    assert "hf auth login" in message and "HF_TOKEN" in message, message
    assert FAKE_TOKEN not in message


# ----------------------------------------------------------------------------------------------
# models in their paper roles, from the cache, offline


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _safetensors_dtypes(directory: Path) -> set[str]:
    dtypes = set()
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes


def test_proxy_mistral_and_its_tokenizer_fetched_offline(offline, tmp_path):
    from transformers import AutoTokenizer

    from lqs.proxy import load_proxy

    fetch_tokenizer(str(tmp_path / "tokenizer"), source={"repo": MISTRAL})
    models.fetch_model({"repo": MISTRAL}, str(tmp_path / "proxy"), causal_lm=True,
                       tokenizer_dir=str(tmp_path / "tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer.get_vocab() == offline.tokenizer.get_vocab()
    assert not (tmp_path / "tokenizer" / "model.safetensors").exists()  # the tokenizer fetch skips weights

    proxy_dir = tmp_path / "proxy"
    assert json.loads((proxy_dir / "config.json").read_text())["model_type"] == "mistral"
    assert _safetensors_dtypes(proxy_dir) == {"F32"}
    assert (proxy_dir / "tokenizer.json").is_file()
    proxy = load_proxy(str(proxy_dir))  # the trajectory / grad_stats loader (safetensors only)
    assert type(proxy).__name__ == "MistralForCausalLM"
    original, _ = offline.mistral["main"]
    for name, value in _state(original).items():
        assert torch.equal(proxy.state_dict()[name], value), name
    ids = torch.tensor([tokenizer("Open the file and read each line.")["input_ids"]])
    with torch.no_grad():
        loss = proxy(input_ids=ids, labels=ids).loss
        assert torch.isfinite(loss)
        assert loss == pytest.approx(float(original(input_ids=ids, labels=ids).loss), rel=1e-5)


def test_pinned_revision_tag_and_commit(offline, tmp_path):
    from lqs.proxy import load_proxy

    model_v1, commit_v1 = offline.mistral["v1"]
    for revision in ("v1", commit_v1):
        out = tmp_path / revision
        models.fetch_model({"repo": MISTRAL, "revision": revision}, str(out), causal_lm=True)
        fetched = load_proxy(str(out)).state_dict()
        assert all(torch.equal(fetched[k], v) for k, v in _state(model_v1).items())
        main, _ = offline.mistral["main"]
        assert not torch.equal(fetched["lm_head.weight"], main.lm_head.weight)

    with pytest.raises(HubAccessError) as error:  # offline, a revision that was never cached
        models.fetch_model({"repo": MISTRAL, "revision": "v2"}, str(tmp_path / "v2"), causal_lm=True)
    assert "revision 'v2'" in str(error.value)
    assert_access_message(str(error.value), MISTRAL, f"https://huggingface.co/{MISTRAL}")
    assert not (tmp_path / "v2").exists()


def test_scorer_base_xglm_from_a_pickled_causal_lm_checkpoint(offline, tmp_path):
    from lqs.scorer import ScorerModel, load_backbone

    out = tmp_path / "scorer_base"
    models.fetch_model({"repo": FAIRSEQ}, str(out), causal_lm=False)
    assert sorted(p.name for p in out.glob("*.bin")) == []  # re-written as safetensors
    assert _safetensors_dtypes(out) == {"F32"}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "xglm"

    backbone = load_backbone(str(out))  # the train_scorer loader (safetensors only)
    assert type(backbone).__name__ == "XGLMModel"
    fetched = backbone.state_dict()
    pretrained = {k: v for k, v in _state(offline.fairseq.model).items() if k in fetched}
    assert len(pretrained) == len([k for k in fetched if "embed_positions" not in k])  # nothing re-initialised
    for name, value in pretrained.items():
        assert torch.equal(fetched[name], value), name

    scorer = ScorerModel(backbone).eval()
    enc = offline.tokenizer(["A dictionary maps keys to values.", "Buy now!"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out_scores = scorer(enc["input_ids"], enc["attention_mask"])
    assert out_scores.shape == (2,) and torch.isfinite(out_scores).all()


@pytest.mark.parametrize("where", ["hub", "local"])
def test_scorer_checkpoint_fetched(offline, tmp_path, where):
    from lqs.scorer import load

    source = {"repo": SCORER} if where == "hub" else {"path": str(offline.scorer_dir)}
    out = tmp_path / "scorer"
    fetch_scorer(str(out), source=source)
    assert {"scorer.json", "head.safetensors", "config.json", "model.safetensors", "tokenizer.json"} <= \
        {p.name for p in out.iterdir()}
    assert not (out / "metrics.json").exists()
    # a hub checkpoint's copy records the repo and the commit it was fetched at (the provenance blocks')
    commit = (offline.cache / f"models--{SCORER.replace('/', '--')}" / "refs" / "main").read_text()
    assert json.loads((out / "scorer.json").read_text()).get("source") == \
        ({"repo": SCORER, "revision": commit} if where == "hub" else None)
    texts = ["Use a context manager to release resources.", "abc def ghi " * 20]
    assert load(str(out), device="cpu").score(texts) == \
        pytest.approx(load(str(offline.scorer_dir), device="cpu").score(texts), abs=1e-5)


def test_not_a_scorer_checkpoint(offline, tmp_path):
    with pytest.raises(ValueError, match=r"'test-org/tiny-mistral' is not a scorer checkpoint.*scorer\.json"):
        fetch_scorer(str(tmp_path / "scorer"), source={"repo": MISTRAL})


def test_local_directories_accepted_where_a_repo_id_is(offline, tmp_path):
    local = offline.scorer_dir
    models.fetch_model({"path": str(local)}, str(tmp_path / "a"), causal_lm=False)
    models.fetch_model({"repo": str(local)}, str(tmp_path / "b"), causal_lm=False)
    fetch_tokenizer(str(tmp_path / "t"), source={"repo": str(local)})
    assert (tmp_path / "a" / "model.safetensors").is_file() and (tmp_path / "b" / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        models.fetch_model({"path": str(tmp_path / "nowhere")}, str(tmp_path / "c"), causal_lm=False)


# ----------------------------------------------------------------------------------------------
# pickle weights: refused unopened in a local directory; from the hub, tensors only


class _Planted:
    """A pickle that runs a command when unpickled (it must never be)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_model_dir(hub: Hub, path: Path, planted: Path | None = None) -> Path:
    """A Mistral model directory as older checkpoints ship it: config, tokenizer and a
    pytorch_model.bin (the model's state dict, or a planted pickle), no safetensors."""
    model, _ = hub.mistral["main"]
    model.save_pretrained(path)
    hub.tokenizer.save_pretrained(path)
    (path / "model.safetensors").unlink()
    with open(path / "pytorch_model.bin", "wb") as f:
        if planted is None:
            torch.save(model.state_dict(), f)
        else:
            pickle.dump(_Planted(planted), f)
    return path


def _fetch_error(source: dict, out: Path, fetch: str) -> str:
    with pytest.raises(ValueError) as error:
        if fetch == "model":
            models.fetch_model(source, str(out), causal_lm=True)
        else:
            fetch_scorer(str(out), source=source)
    assert not out.exists()
    return str(error.value)


@pytest.mark.parametrize("fetch", ["model", "scorer"])
@pytest.mark.parametrize("key", ["path", "repo"])
def test_local_pickle_weights_are_refused_unopened(hub, tmp_path, key, fetch):
    model_dir, marker = tmp_path / "model", tmp_path / "pickle-ran"
    _pickled_model_dir(hub, model_dir)
    benign = _fetch_error({key: str(model_dir)}, tmp_path / "out", fetch)
    shutil.rmtree(model_dir)
    _pickled_model_dir(hub, model_dir, planted=marker)
    malicious = _fetch_error({key: str(model_dir)}, tmp_path / "out", fetch)
    assert not marker.exists(), "the planted pickle was executed"
    assert malicious == benign  # refused before anything reads the file: whatever it holds
    assert benign.startswith(f"model '{model_dir}': its pickle weights (pytorch_model.bin) are refused "
                             "(a local directory must have safetensors")
    assert "Convert them once to safetensors" in benign


def test_the_conversion_the_refusal_gives_works(hub, tmp_path):
    from lqs.proxy import load_proxy

    model_dir = _pickled_model_dir(hub, tmp_path / "model")
    message = _fetch_error({"path": str(model_dir)}, tmp_path / "out", "model")
    [command] = re.findall(r'`python -c "(.*?)"`', message)
    exec(command, {})  # what the user is told to run, in a Python they trust
    models.fetch_model({"path": f"{model_dir}-safetensors"}, str(tmp_path / "out"), causal_lm=True)
    fetched = _state(load_proxy(str(tmp_path / "out")))
    for name, value in _state(hub.mistral["main"][0]).items():
        assert torch.equal(fetched[name], value), name


def test_hub_pickle_holding_more_than_tensors_is_refused(offline, tmp_path):
    marker = tmp_path / "pickle-ran"
    planted = _pickled_model_dir(offline, tmp_path / "build", planted=marker)
    add_to_hub_cache(offline.cache, "test-org/planted", planted)
    message = _fetch_error({"repo": "test-org/planted"}, tmp_path / "out", "model")
    assert not marker.exists(), "the planted pickle was executed"
    assert message.startswith("model 'test-org/planted': its pickle weights (pytorch_model.bin) are refused "
                              "(they hold more than tensors")


def test_cli_refuses_a_local_pickle_in_one_line(hub, tmp_path, caplog):
    model_dir = _pickled_model_dir(hub, tmp_path / "model", planted=tmp_path / "pickle-ran")
    settings = {"source": {"path": str(model_dir)}, "causal_lm": True, "trust_remote_code": False}
    code, _ = lqs_main(caplog, "fetch-proxy", "--tokenizer-dir", model_dir, "--out-dir", tmp_path / "out",
                       "--settings", json.dumps(settings))
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "fetch-proxy failed: model" in errors[0] and "are refused" in errors[0]
    assert "\n" not in errors[0] and not (tmp_path / "pickle-ran").exists()


# ----------------------------------------------------------------------------------------------
# the target set


def test_target_from_hub_dataset_offline(offline, tmp_path):
    from lqs.target import target_texts

    out = tmp_path / "source.parquet"
    assert fetch_target(LIMA, str(out), split="train") == len(LIMA_TRAIN)
    assert pq.read_table(out).to_pylist() == LIMA_TRAIN
    tokenizer_dir = str(offline.tokenizer_dir)
    n = prepare_target(str(out), tokenizer_dir, str(tmp_path / "tokens.parquet"), text_field="text", max_length=16)
    assert n == len(LIMA_TRAIN)
    assert all(len(ids) <= 16 for ids in pq.read_table(tmp_path / "tokens.parquet")["input_ids"].to_pylist())
    # the hub id given directly goes through the same fetch code; turns joined by newlines
    texts = target_texts(LIMA, split="train")
    assert texts[0] == "Question 0? More.\n" + GOOD[0]
    assert target_texts(LIMA, split="test") == [r["conversations"][0] for r in LIMA_TEST]
    with pytest.raises(ValueError, match=r"GAIR/lima \[validation\].*Unknown split"):
        fetch_target(LIMA, str(tmp_path / "v.parquet"), split="validation")


def test_target_local_file_and_directory(offline, tmp_path):
    from lqs.target import target_texts

    directory = tmp_path / "lima"
    write_jsonl(directory / "train.jsonl", LIMA_TRAIN)
    write_jsonl(directory / "test.jsonl", LIMA_TEST)
    assert target_texts(str(directory), split="train") == target_texts(str(directory / "train.jsonl")) == \
        target_texts(LIMA, split="train")


# ----------------------------------------------------------------------------------------------
# access errors: one clear error, from the fetch, before any download


@pytest.mark.parametrize("call, repo, page", [
    (lambda out: models.fetch_model({"repo": "org/not-cached"}, out, causal_lm=True), "org/not-cached",
     "https://huggingface.co/org/not-cached"),
    (lambda out: fetch_tokenizer(out, source={"repo": "org/not-cached", "revision": "v3"}), "org/not-cached",
     "https://huggingface.co/org/not-cached"),
    (lambda out: fetch_scorer(out, source={"repo": "org/not-cached"}), "org/not-cached",
     "https://huggingface.co/org/not-cached"),
    (lambda out: fetch_target("org/no-data", out), "org/no-data",
     "https://huggingface.co/datasets/org/no-data"),
], ids=["model", "tokenizer", "scorer", "dataset"])
def test_offline_and_not_cached(offline, tmp_path, call, repo, page):
    with pytest.raises(HubAccessError) as error:
        call(str(tmp_path / "out"))
    assert isinstance(error.value, RuntimeError)  # what the CLI reports without a traceback
    assert "HF_HUB_OFFLINE" in str(error.value)
    assert_access_message(str(error.value), repo, page)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("call, repo, page, words", [
    (lambda out: models.fetch_model({"repo": "org/gated"}, out, causal_lm=True), "org/gated",
     "https://huggingface.co/org/gated", "is gated"),
    (lambda out: fetch_tokenizer(out, source={"repo": "org/missing"}), "org/missing",
     "https://huggingface.co/org/missing", "does not exist"),
    (lambda out: models.fetch_model({"repo": MISTRAL, "revision": "no-such-revision"}, out, causal_lm=True),
     MISTRAL, f"https://huggingface.co/{MISTRAL}", "revision 'no-such-revision' does not exist"),
    (lambda out: fetch_target("org/gated-data", out), "org/gated-data",
     "https://huggingface.co/datasets/org/gated-data", "is gated"),
], ids=["gated-model", "missing-repo", "missing-revision", "gated-dataset"])
def test_hub_access_errors(mock_hub, tmp_path, call, repo, page, words):
    with pytest.raises(HubAccessError) as error:
        call(str(tmp_path / "out"))
    assert words in str(error.value)
    assert_access_message(str(error.value), repo, page)
    assert not (tmp_path / "out").exists()
    requests = mock_hub()
    kind = "datasets" if "datasets" in page else "models"
    assert requests[0] == f"GET /api/{kind}/{repo}/auth-check auth=env-token"  # checked first, with HF_TOKEN


def test_online_fetch_checks_access_then_uses_the_cache(mock_hub, tmp_path):
    """Online, with the Hub unreachable after the access check: the download falls back to the cache."""
    models.fetch_model({"repo": MISTRAL}, str(tmp_path / "proxy"), causal_lm=True)
    assert (tmp_path / "proxy" / "model.safetensors").is_file()
    assert mock_hub()[0] == f"GET /api/models/{MISTRAL}/auth-check auth=env-token"


def test_cli_reports_access_error_and_exits_1(offline, tmp_path, caplog):
    settings = json.dumps({"source": {"repo": "org/not-cached"}, "causal_lm": False, "seed": 0,
                           "trust_remote_code": False})
    code, log = lqs_main(caplog, "fetch-scorer-base", "--out-dir", tmp_path / "out", "--settings", settings)
    assert code == 1, log
    assert "fetch-scorer-base failed" in log
    assert_access_message(log, "org/not-cached", "https://huggingface.co/org/not-cached")


# ----------------------------------------------------------------------------------------------
# the workflow


def hub_workflow(workdir: Path, **models_and_more) -> Path:
    """The tiny workflow (conftest) with some of its config replaced."""
    write_jsonl(workdir / "data" / "corpus.jsonl", tiny_corpus(24))
    write_jsonl(workdir / "data" / "target.jsonl", LIMA_TRAIN)
    config = tiny_config("data/corpus.jsonl", "data/target.jsonl")
    for section, value in models_and_more.items():
        config[section] = {**config.get(section, {}), **value}
    return make_workflow(workdir, config)


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
            and needle.encode() in p.read_bytes()]


def plan_counts(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The first Job stats table of a run or dry-run (the jobs it planned), with its total."""
    output = result.stdout + "\n" + result.stderr
    lines = output.splitlines()
    assert "Job stats:" in lines, output
    counts, i = {}, lines.index("Job stats:") + 3
    while lines[i].split():
        rule, count = lines[i].split()
        counts[rule] = int(count)
        i += 1
        if rule == "total":
            break
    return counts


@pytest.mark.workflow
def test_gated_proxy_fails_in_fetch_before_any_gpu_job(hub, tmp_path):
    """As in config/paper.yaml, the tokenizer is the proxy's own: the first fetch fails."""
    workdir = hub_workflow(tmp_path / "wf", models={"tokenizer": {}, "proxy": {"repo": "org/gated"}})
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HUB_MOCK)
    log = tmp_path / "requests.log"
    env = hub.env(offline=False, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]),  # this checkout's lqs
                  LQS_MOCK_LOG=str(log), LQS_MOCK_GATED="org/gated")
    result = snakemake(workdir, env=env, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Error in rule fetch_tokenizer" in output

    fetch_log = (workdir / "results" / "logs" / "fetch_tokenizer.log").read_text()
    assert "Traceback" not in fetch_log
    assert_access_message(fetch_log, "org/gated", "https://huggingface.co/org/gated")
    assert "is gated" in fetch_log
    assert "GET /api/models/org/gated/auth-check auth=env-token" in log.read_text().splitlines()

    results = workdir / "results"
    assert not (results / "models").exists()
    for later in ("annotation", "scorer", "scores", "proxy"):  # trajectory, grad_stats, train_scorer, ...
        assert not (results / later).exists(), later
    assert not (workdir / "scored.jsonl").exists()
    ran = {p.parent.name for p in (results / "benchmarks").glob("*/*.tsv")}
    assert not ran & {"trajectory", "grad_stats", "train_scorer", "score_shard", "sample_proxy", "lqs_labels"}
    # HF_TOKEN was used (the access check carried it) but is nowhere to be seen
    assert FAKE_TOKEN not in output
    assert files_containing(workdir, FAKE_TOKEN) == []


@pytest.mark.workflow
def test_hub_fetch_rules_offline(hub, tmp_path):
    """Proxy, tokenizer, scorer base and target set from the hub cache, through the fetch rules."""
    workdir = hub_workflow(tmp_path / "wf", models={"tokenizer": {}, "proxy": {"repo": MISTRAL},
                                                    "scorer": {"repo": FAIRSEQ}},
                           target={"source": LIMA, "split": "train"})
    env = hub.env()
    targets = ["results/models/proxy", "results/models/scorer_base", "results/target/source.parquet"]
    result = snakemake(workdir, *targets, env=env)
    assert plan_counts(result) == {"fetch_tokenizer": 1, "fetch_proxy": 1, "fetch_scorer_base": 1,
                                   "fetch_target": 1, "total": 4}
    results = workdir / "results"
    assert json.loads((results / "models" / "proxy" / "config.json").read_text())["model_type"] == "mistral"
    assert json.loads((results / "models" / "scorer_base" / "config.json").read_text())["model_type"] == "xglm"
    assert _safetensors_dtypes(results / "models" / "proxy") == {"F32"}
    assert _safetensors_dtypes(results / "models" / "scorer_base") == {"F32"}
    assert pq.read_table(results / "target" / "source.parquet").to_pylist() == LIMA_TRAIN  # for prepare_target
    assert "Traceback" not in (results / "logs" / "fetch_target.log").read_text()
    assert FAKE_TOKEN not in result.stdout + result.stderr
    assert files_containing(workdir, FAKE_TOKEN) == []


@pytest.mark.workflow
def test_scorer_checkpoint_workflow_offline(hub, tmp_path):
    """scorer.checkpoint: fetch it, tokenize with its tokenizer, score, gather; nothing else. The
    Snakefile always loads the demo config (with its models); an override that gives only
    corpus.path and scorer.checkpoint runs the checkpoint's scoring and nothing of the demo's."""
    workdir = make_workflow(tmp_path, yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    write_jsonl(workdir / "data" / "corpus.jsonl", tiny_corpus(24))
    (workdir / "mine.yaml").write_text(yaml.safe_dump({"corpus": {"path": "data/corpus.jsonl"},
                                                       "scorer": {"checkpoint": SCORER}}))
    env = hub.env()
    result = snakemake(workdir, "--configfile", "mine.yaml", env=env)
    # every rule is defined; those of the proxy, annotation and scorer training are not in the DAG
    assert plan_counts(result) == {"fetch_scorer": 1, "fetch_tokenizer": 1, "tokenize_shard": 2,
                                   "tokenize_scorer_shard": 2, "score_shard": 2, "gather_scores": 1,
                                   "select_order": 1, "all": 1, "total": 11}  # the demo's 2 shards

    results = workdir / "results"
    scored = [json.loads(line) for line in (workdir / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [d["id"] for d in tiny_corpus(24)]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["documents_scored"] == 24
    commit = (hub.cache / f"models--{SCORER.replace('/', '--')}" / "refs" / "main").read_text()
    scorer = summary["provenance"]["scorer"]  # the provenance block names the hub repo and commit
    assert (scorer["repo"], scorer["revision"]) == (SCORER, commit)
    assert "scorer_valid_spearman" not in summary and "annotation" not in summary
    assert summary["proxy_model"] is None
    # no labels, so no fidelity to measure: null, not an error
    assert json.loads((results / "selection" / "summary.json").read_text())["scorer_fidelity"] is None
    assert not (results / "annotation").exists() and not (results / "models" / "proxy").exists()
    # the corpus was tokenized with the checkpoint's own tokenizer
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(results / "models" / "tokenizer").get_vocab() == \
        AutoTokenizer.from_pretrained(hub.scorer_dir).get_vocab()
    # its scores are the checkpoint's
    from lqs.scorer import load

    expected = load(str(hub.scorer_dir), device="cpu").score([d["text"] for d in tiny_corpus(24)], max_tokens=65536)
    assert [r["score"] for r in scored] == pytest.approx(expected, abs=1e-4)
    assert files_containing(workdir, FAKE_TOKEN) == []


PAPER_PLAN = {"fetch_tokenizer": 1, "fetch_proxy": 1, "fetch_scorer_base": 1, "fetch_target": 1,
              "prepare_target": 1, "tokenize_shard": 64, "sample_proxy": 1, "trajectory": 1,
              "grad_stats": 10 * 16, "lqs_labels": 1, "train_scorer": 1, "tokenize_scorer_shard": 64,
              "score_shard": 64, "gather_scores": 1, "select_order": 1, "all": 1}


@pytest.mark.parametrize("checkpoint", [None, "org/lqs-scorer"])
@pytest.mark.workflow
def test_paper_config_plans_without_network(tmp_path, checkpoint):
    for name in ("Snakefile", "rules", "envs", "config"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    write_jsonl(tmp_path / "data" / "corpus.jsonl", tiny_corpus(6))
    override = {"corpus": {"path": "data/corpus.jsonl"}}
    if checkpoint:
        override["scorer"] = {"checkpoint": checkpoint}
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty_hf_home"))
    result = snakemake(tmp_path, "-n", "--configfile", "config/paper.yaml", "override.yaml", env=env)
    counts = plan_counts(result)
    assert counts.pop("total") == sum(counts.values())
    if checkpoint is None:
        assert counts == PAPER_PLAN
    else:
        assert counts == {"fetch_scorer": 1, "fetch_tokenizer": 1, "tokenize_shard": 64,
                          "tokenize_scorer_shard": 64, "score_shard": 64, "gather_scores": 1, "select_order": 1,
                          "all": 1}
    # every fetch job has a high priority: it is scheduled before anything else that is ready
    jobs = collections.Counter(line.split()[1].rstrip(":") for line in result.stdout.splitlines()
                               if line.startswith(("rule ", "localrule ")))
    assert jobs == collections.Counter(counts)
    fetches = [block for block in result.stdout.split("\n\n") if "rule fetch_" in block]
    assert fetches and all("priority: 100" in block for block in fetches)
    if checkpoint is None:  # the hub target set reaches prepare_target as a fetched local file
        prepare = next(block for block in result.stdout.split("[") if "rule prepare_target:" in block)
        assert "input: results/target/source.parquet, results/models/tokenizer" in prepare, prepare
    assert not (tmp_path / "empty_hf_home").exists()
