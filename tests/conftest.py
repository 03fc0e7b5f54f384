"""Shared fixtures: a tiny LQS workflow in a temporary directory, runnable in about a minute."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

GOOD = [
    "The function returns a new list sorted in ascending order.",
    "Open the file, read each line and close the file when done.",
    "A dictionary maps keys to values; keys must be hashable.",
    "Use a context manager to make sure resources are released.",
    "The parser reads the configuration and reports the first error.",
    "Iterators produce values lazily, one at a time, until exhausted.",
]


def tiny_corpus(n: int = 120, seed: int = 0) -> list[dict]:
    """Documents from three sources, some long enough to need several windows."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        kind = ("good", "noise", "repeat")[i % 3]
        if kind == "good":
            text = " ".join(rng.choice(GOOD) for _ in range(rng.randint(1, 12)))
        elif kind == "noise":
            text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,;") for _ in range(rng.randint(20, 300)))
        else:
            text = "Buy now! Best deals. " * rng.randint(1, 15)
        docs.append({"id": f"doc-{i}", "text": text, "source": kind, "extra": {"n": i}})
    return docs


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def tiny_config(corpus_path: str | list[str], target_path: str) -> dict:
    arch = dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                tie_word_embeddings=False)
    return {
        "device": "cpu",
        "corpus": {"path": corpus_path, "num_shards": 2, "max_length": 32},
        "target": {"source": target_path, "max_length": 32},
        "models": {
            "tokenizer": {"vocab_size": 320},
            "proxy": {"arch": arch},
            "pretrain": {"steps": 10, "batch_size": 8, "lr": 0.003},
            "scorer": {"arch": dict(model_type="xglm", d_model=32, ffn_dim=64, num_layers=1,
                                    attention_heads=2, max_position_embeddings=64)},
        },
        "proxy": {"size": 48, "num_parts": 2},
        "annotation": {"lr": 0.05, "steps": 4, "interval": 2, "batch_size": 4},
        "scorer": {"lr": 0.001, "epochs": 2, "batch_size": 8, "warmup_steps": 2, "max_length": 32,
                   "valid_size": 0.25},
    }


def make_workflow(workdir: Path, config: dict) -> Path:
    """Copies the workflow into `workdir` with `config` as its config/config.yaml."""
    for name in ("Snakefile", "rules", "envs", "config", "report"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args],
                            cwd=workdir, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def tiny_workflow(tmp_path: Path) -> Path:
    """A tiny workflow, not yet run: corpus data/corpus.jsonl, target data/target.jsonl."""
    corpus = write_jsonl(tmp_path / "data" / "corpus.jsonl", tiny_corpus())
    target = write_jsonl(tmp_path / "data" / "target.jsonl",
                         [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
    return make_workflow(tmp_path, tiny_config(str(corpus.relative_to(tmp_path)),
                                               str(target.relative_to(tmp_path))))


@pytest.fixture(scope="session")
def completed_workflow(tmp_path_factory) -> Path:
    """A tiny workflow run to completion once per test session. Tests must not modify it;
    copy it (shutil.copytree) to change anything."""
    workdir = tmp_path_factory.mktemp("completed")
    write_jsonl(workdir / "data" / "corpus.jsonl", tiny_corpus())
    write_jsonl(workdir / "data" / "target.jsonl",
                         [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
    make_workflow(workdir, tiny_config("data/corpus.jsonl", "data/target.jsonl"))
    snakemake(workdir)
    return workdir
