"""Test helpers shared by the test modules: a tiny corpus, config and workflow, the Snakemake
runner, and the parsing of `snakemake -n` plans. Fixtures live in conftest.py."""

from __future__ import annotations

import collections
import json
import re
import random
import shutil
import subprocess
import sys
from pathlib import Path

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


# Rerun reasons that a config edit or a corpus edit must never produce on a copied workflow.
UNEXPECTED_REASONS = ("Code has changed", "Software environment", "Set of input files has changed",
                      "Missing output files", "Incomplete output files")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def copy_workflow(src: Path, tmp_path: Path, name: str = "wf") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    assert (dst / ".snakemake" / "metadata").is_dir()
    return dst


def edit_config(workdir: Path, edit) -> None:
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def set_key(*keys_and_value):
    *keys, value = keys_and_value

    def edit(config):
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return edit


JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def parse_plan(text: str) -> tuple[list[dict], collections.Counter]:
    """The jobs of a `snakemake -n` listing (rule, wildcards, reason) and its first Job stats table."""
    jobs, current = [], None
    for line in text.splitlines():
        match = JOB_HEADER.match(line.rstrip())
        if match:
            current = {"rule": match.group(1), "wildcards": {}, "reason": ""}
            jobs.append(current)
            continue
        if not line.startswith((" ", "\t")):
            current = None  # a job's details are indented under its header
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("wildcards:"):
            pairs = stripped[len("wildcards:"):].strip().split(", ")
            current["wildcards"] = dict(p.split("=", 1) for p in pairs)
        elif stripped.startswith("reason:"):
            current["reason"] = stripped[len("reason:"):].strip()

    stats: collections.Counter = collections.Counter()
    lines = text.splitlines()
    if "Job stats:" in lines:
        i = lines.index("Job stats:") + 3  # title, header, dashes
        while i < len(lines) and lines[i].split() and lines[i].split()[0] != "total":
            rule, count = lines[i].split()
            stats[rule] = int(count)
            i += 1
    return jobs, stats


def plan(workdir: Path, *targets: str) -> list[dict]:
    """The jobs `snakemake -n` plans; checks the listing agrees with its Job stats table."""
    result = snakemake(workdir, "-n", *targets)
    text = result.stdout + "\n" + result.stderr
    jobs, stats = parse_plan(text)
    assert collections.Counter(j["rule"] for j in jobs) == stats, text
    if not jobs:
        assert "Nothing to be done" in text, text
    for job in jobs:
        for unexpected in UNEXPECTED_REASONS:
            assert unexpected not in job["reason"], (job, text)
    return jobs


def rule_counts(jobs: list[dict]) -> dict[str, int]:
    return dict(collections.Counter(j["rule"] for j in jobs))
