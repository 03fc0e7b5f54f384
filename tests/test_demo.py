"""Tests for lqs.demo and the stage demo_data: the offline demo corpus and LIMA-shaped target set."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import stage_function

from lqs import demo
from lqs.stages import demo_data as demo_data_stage

demo_data = stage_function(demo_data_stage)

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"python_docs", "shuffled_words", "boilerplate", "random_chars"}
# The rule's settings by default: lqs/schema.yaml's demo.num_docs, num_target and seed.
DEFAULTS = {key: value["default"] for key, value in yaml.safe_load(
    (REPO_ROOT / "lqs" / "schema.yaml").read_text())["properties"]["demo"]["properties"].items()}


def _read_jsonl(path: Path) -> list[dict]:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    assert "\r" not in text
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _build(tmp_path: Path, name: str = "out", **kwargs):
    corpus, target = tmp_path / name / "corpus.jsonl", tmp_path / name / "target.jsonl"
    counts = demo_data(corpus, target, **(DEFAULTS | kwargs))
    return counts, corpus, target


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default")
    counts, corpus, target = _build(tmp)
    return counts, _read_jsonl(corpus), _read_jsonl(target)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    _, c1, t1 = _build(tmp_path, "a", num_docs=500, num_target=50, seed=3)
    _, c2, t2 = _build(tmp_path, "b", num_docs=500, num_target=50, seed=3)
    _, c3, t3 = _build(tmp_path, "c", num_docs=500, num_target=50, seed=4)
    assert c1.read_bytes() == c2.read_bytes()
    assert t1.read_bytes() == t2.read_bytes()
    assert c1.read_bytes() != c3.read_bytes()
    assert t1.read_bytes() != t3.read_bytes()


def test_identical_across_processes_and_hash_seeds(tmp_path):
    _, corpus, target = _build(tmp_path, "here", num_docs=300, num_target=30, seed=7)
    out = tmp_path / "there"
    code = (
        "import sys; from lqs.stages.demo_data import Settings, demo_data; "
        "demo_data(sys.argv[1], sys.argv[2], Settings(num_docs=300, num_target=30, seed=7))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(
        [sys.executable, "-c", code, str(out / "c.jsonl"), str(out / "t.jsonl")],
        check=True, env=env, cwd=REPO_ROOT, timeout=60,
    )
    assert (out / "c.jsonl").read_bytes() == corpus.read_bytes()
    assert (out / "t.jsonl").read_bytes() == target.read_bytes()


def test_source_mix(default_build):
    counts, corpus, _ = default_build
    assert set(counts) == SOURCES
    assert collections.Counter(r["source"] for r in corpus) == counts
    assert all(counts[s] > 0 for s in SOURCES)
    assert counts["python_docs"] > sum(counts.values()) / 2
    low = [counts[s] for s in ("shuffled_words", "boilerplate", "random_chars")]
    assert max(low) - min(low) <= 1
    assert len(corpus) == sum(counts.values()) <= DEFAULTS["num_docs"]


def test_corpus_records_are_well_formed(default_build):
    _, corpus, _ = default_build
    ids = [r["id"] for r in corpus]
    assert len(set(ids)) == len(ids)
    assert ids == [f"demo-{i:05d}" for i in range(len(ids))]
    for r in corpus:
        assert set(r) == {"id", "text", "source"}
        assert isinstance(r["text"], str) and r["text"].strip()
    for r in corpus:
        if r["source"] == "python_docs":
            name, sep, doc = r["text"].partition("\n\n")
            assert sep and "\n" not in name and len(doc) >= demo.MIN_DOC_CHARS
    docs = [r["text"] for r in corpus if r["source"] == "python_docs"]
    assert len(set(docs)) == len(docs)
    lengths = [len(r["text"]) for r in corpus]
    assert max(lengths) > 5 * min(lengths)  # lengths vary
    sources = [r["source"] for r in corpus[:100]]
    assert len(set(sources)) == 4  # shuffled, not grouped by source


def test_target_is_lima_shaped_and_disjoint_from_corpus(default_build):
    _, corpus, target = default_build
    assert 0 < len(target) <= DEFAULTS["num_target"]
    corpus_names = {r["text"].split("\n", 1)[0] for r in corpus if r["source"] == "python_docs"}
    corpus_bodies = {r["text"].split("\n\n", 1)[1] for r in corpus if r["source"] == "python_docs"}
    names = []
    for r in target:
        assert set(r) == {"conversations", "source"}
        assert r["source"] == "python_docs_qa"
        conv = r["conversations"]
        assert isinstance(conv, list) and len(conv) == 2
        assert all(isinstance(turn, str) and turn.strip() for turn in conv)
        match = re.search(r"`([^`]+)`", conv[0])
        assert match and conv[0].rstrip().endswith(("?", "."))
        names.append(match.group(1))
        assert conv[1] not in corpus_bodies
    assert len(set(names)) == len(names)
    assert not set(names) & corpus_names
    assert len({r["conversations"][0].replace(n, "") for r, n in zip(target, names)}) > 3  # templates vary


def test_atomic_write_leaves_only_the_outputs(tmp_path):
    corpus = tmp_path / "deep" / "er" / "corpus.jsonl"
    target = tmp_path / "deep" / "er" / "target.jsonl"
    corpus.parent.mkdir(parents=True)
    corpus.write_text("stale\n", encoding="utf-8")
    demo_data(str(corpus), str(target), num_docs=50, num_target=5, seed=0)
    assert sorted(p.name for p in corpus.parent.iterdir()) == ["corpus.jsonl", "target.jsonl"]
    assert len(_read_jsonl(corpus)) == 50


def test_small_and_edge_sizes(tmp_path):
    counts, corpus, target = _build(tmp_path, "zero", num_docs=0, num_target=0)
    assert sum(counts.values()) == 0
    assert corpus.read_bytes() == b"" and target.read_bytes() == b""
    counts, corpus, target = _build(tmp_path, "tiny", num_docs=7, num_target=10**6)
    assert len(_read_jsonl(corpus)) == sum(counts.values()) == 7
    target_recs = _read_jsonl(target)
    assert 0 < len(target_recs) < 10**6
    with pytest.raises(ValueError):
        demo_data(tmp_path / "x.jsonl", tmp_path / "y.jsonl", num_docs=-1, num_target=0, seed=0)


def test_too_few_docstrings_shrinks_python_docs_without_repeats(tmp_path, monkeypatch):
    pool = tuple(
        (f"fake.mod.func{i:02d}", "routine", f"Docstring number {i}. " + "Does something useful. " * 4)
        for i in range(30)
    )
    monkeypatch.setattr(demo, "docstrings", lambda: pool)
    counts, corpus, target = _build(tmp_path, num_docs=100, num_target=20)
    corpus_recs, target_recs = _read_jsonl(corpus), _read_jsonl(target)
    assert counts["python_docs"] < 60
    low = [counts["shuffled_words"], counts["boilerplate"], counts["random_chars"]]
    assert sum(low) == 40 and max(low) - min(low) <= 1
    names = [r["text"].split("\n", 1)[0] for r in corpus_recs if r["source"] == "python_docs"]
    assert len(names) == len(set(names)) == counts["python_docs"]
    assert counts["python_docs"] + len(target_recs) <= len(pool)
    target_names = {re.search(r"`([^`]+)`", r["conversations"][0]).group(1) for r in target_recs}
    assert target_recs and not target_names & set(names)


def test_no_docstrings_at_all_still_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "docstrings", lambda: ())
    counts, corpus, target = _build(tmp_path, num_docs=30, num_target=5)
    assert counts["python_docs"] == 0
    assert len(_read_jsonl(corpus)) == sum(counts.values()) == 12
    assert _read_jsonl(target) == []
