"""Tests for the data scorer and the scoring stages: lqs.scorer (save/load, batched scoring),
lqs.batch_scoring and lqs.stages.score_shard, lqs.stages.gather_scores and lqs.stages.train_scorer (docs/stages.md,
docs/maths.md#the-data-scorer)."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import random
import re
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import (
    corpus_settings,
    shard_settings,
    stage_function,
    tokenize_and_score_shard,
    train_tokenizer,
    write_jsonl,
    write_plan,
)
from scipy import stats
from transformers import AutoTokenizer, MistralConfig, MistralModel, XGLMConfig, XGLMModel

import lqs.batch_scoring
import lqs.scorer
import lqs.tokenize
from lqs.batch_scoring import SCORES_SCHEMA
from lqs.corpus import iter_records
from lqs.scorer import ScorerModel, Window, save_scorer, token_budget_batches
from lqs.stages import gather_scores as gather_scores_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage
from lqs.stages import train_scorer as train_scorer_stage
from lqs.tokenize import tokenize_windows

gather_scores = stage_function(gather_scores_stage)
score_shard = tokenize_and_score_shard
tokenize_shard = stage_function(tokenize_shard_stage)
train_scorer = stage_function(train_scorer_stage)

MAX_LENGTH = 16  # the scorer's window length
MAX_CHARS = 100_000

SENTENCES = [
    "The function returns a new list sorted in ascending order.",
    "Open the file, read each line and close the file when done!",
    "A dictionary maps keys to values; keys must be hashable.",
    "Is the iterator exhausted?",
    "Use a context manager to make sure resources are released.",
    "Buy now! Best deals.",
]
WORDS = "alpha beta gamma delta the of and file list key value line open close".split()


def _texts(n: int, seed: int, max_sentences: int = 5) -> list[str]:
    """Texts of very different lengths: a word or two up to several windows."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))))
        else:
            out.append(" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, max_sentences))))
    return out




@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tok")
    path = write_jsonl(d / "train.jsonl", [{"text": t} for t in _texts(60, seed=0)])
    train_tokenizer([str(path)], str(d / "tokenizer"), text_field="text", vocab_size=300, max_chars=MAX_CHARS)
    return str(d / "tokenizer")


def _backbone(kind: str, tokenizer) -> torch.nn.Module:
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    if kind == "xglm":
        return XGLMModel(XGLMConfig(d_model=32, ffn_dim=64, num_layers=1, attention_heads=2,
                                    max_position_embeddings=128, **ids))
    return MistralModel(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                      **ids))


def _save_checkpoint(kind: str, tok_dir: str, out: Path, seed: int = 0) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    model = ScorerModel(_backbone(kind, tokenizer))
    save_scorer(model, tokenizer, out, {"max_length": MAX_LENGTH})
    return out


@pytest.fixture(scope="module")
def scorer_dirs(tok_dir, tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("scorers")
    return {kind: str(_save_checkpoint(kind, tok_dir, d / kind)) for kind in ("xglm", "mistral")}


@pytest.fixture(scope="module")
def scorers(scorer_dirs) -> dict[str, lqs.scorer.Scorer]:
    return {kind: lqs.scorer.load(path, device="cpu") for kind, path in scorer_dirs.items()}


@torch.no_grad()
def _brute_score(scorer: lqs.scorer.Scorer, text: str, max_windows: int | None = None) -> float:
    """The text alone, each window forwarded alone (no padding, no mask), mean-pooled, through
    the head; the token-weighted mean over the windows."""
    windows = tokenize_windows(scorer.tokenizer, [text], scorer.max_length)[0][:max_windows]
    total = weight = 0.0
    for ids in windows:
        hidden = scorer.model.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]
        value = scorer.model.head(hidden.mean(0)).item()
        total += len(ids) * value
        weight += len(ids)
    return total / weight


def _n_windows(scorer, text: str) -> int:
    return len(tokenize_windows(scorer.tokenizer, [text], scorer.max_length)[0])


# ---------------------------------------------------------------- scorer API


def test_checkpoint_layout(scorer_dirs):
    path = Path(scorer_dirs["xglm"])
    for name in ("config.json", "model.safetensors", "head.safetensors", "scorer.json", "tokenizer.json"):
        assert (path / name).exists(), name
    config = json.loads((path / "scorer.json").read_text())
    assert config["max_length"] == MAX_LENGTH and set(config["weights_sha256"]) == {"model.safetensors",
                                                                                  "head.safetensors"}
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))


def test_load_rejects_non_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a scorer checkpoint"):
        lqs.scorer.load(tmp_path, device="cpu")


def test_load_restores_the_saved_weights(tok_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(3)
    model = ScorerModel(_backbone("xglm", tokenizer))
    save_scorer(model, tokenizer, tmp_path / "ckpt", {"max_length": MAX_LENGTH})
    loaded = lqs.scorer.load(tmp_path / "ckpt", device="cpu")
    saved, restored = model.state_dict(), loaded.model.state_dict()
    assert set(saved) == set(restored)
    for name, value in saved.items():
        torch.testing.assert_close(restored[name], value, rtol=0, atol=0, msg=name)
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("kind", ["xglm", "mistral"])
@pytest.mark.parametrize("max_tokens", [16, 48, 16384])
def test_score_matches_brute_force(scorers, kind, max_tokens):
    scorer = scorers[kind]
    texts = _texts(30, seed=1)
    n_windows = [_n_windows(scorer, t) for t in texts]
    assert min(n_windows) == 1 and max(n_windows) >= 3  # short texts and texts of several windows
    lengths = {len(w) for t in texts for w in tokenize_windows(scorer.tokenizer, [t], MAX_LENGTH)[0]}
    assert len(lengths) > 3  # windows of many lengths share batches: padding is exercised
    expected = [_brute_score(scorer, t) for t in texts]
    got = scorer.score(texts, max_tokens=max_tokens)
    assert len(got) == len(texts)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.std(expected) > 1e-3  # the texts do get different scores: the order check means something
    # order does not matter: a permutation of the texts permutes the scores
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(scorer.score([texts[i] for i in perm], max_tokens=max_tokens),
                               [expected[i] for i in perm], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cap", [1, 2])
def test_max_windows_per_doc(scorers, cap):
    scorer = scorers["xglm"]
    texts = _texts(20, seed=2)
    n_windows = [_n_windows(scorer, t) for t in texts]
    assert any(n > cap for n in n_windows) and any(n <= cap for n in n_windows)
    values, truncated = scorer.score_with_truncation(texts, max_tokens=40, max_windows_per_doc=cap)
    assert truncated == [n > cap for n in n_windows]
    np.testing.assert_allclose(values, [_brute_score(scorer, t, cap) for t in texts], rtol=0, atol=1e-5)
    assert scorer.score(texts, max_tokens=40, max_windows_per_doc=cap) == values
    uncapped, flags = scorer.score_with_truncation(texts, max_tokens=40)
    assert not any(flags)
    np.testing.assert_allclose(uncapped, [_brute_score(scorer, t) for t in texts], rtol=0, atol=1e-5)


def _brute_causal_attention(q, k, v, scale: float) -> torch.Tensor:
    """Position by position, in float64: softmax over the scores of the keys up to it."""
    q, k, v = (x.double() for x in (q, k, v))
    out = torch.zeros_like(q)
    for i in range(q.shape[-2]):
        weights = torch.softmax((q[..., i:i + 1, :] * k[..., :i + 1, :]).sum(-1) * scale, dim=-1)
        out[..., i, :] = (weights.unsqueeze(-1) * v[..., :i + 1, :]).sum(-2)
    return out


@pytest.mark.parametrize("block", [1, 4, 10, 16])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 3e-2)])
def test_blockwise_causal_attention_matches_brute_force(block, dtype, atol):
    generator = torch.Generator().manual_seed(block)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=generator).to(dtype) for _ in range(3))
    got = lqs.scorer.blockwise_causal_attention(q, k, v, scale=0.3, block=block)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.double(), _brute_causal_attention(q, k, v, 0.3), rtol=0, atol=atol)


def test_compute_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert lqs.scorer.compute_dtype("auto", cpu) == "fp32"
    assert lqs.scorer.compute_dtype("auto", cuda) == "bf16"
    assert lqs.scorer.compute_dtype("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        lqs.scorer.compute_dtype("fp16", cpu)


@pytest.mark.parametrize("kind", ["xglm", "mistral"])
def test_bf16_scores_agree_with_fp32(scorer_dirs, scorers, kind, monkeypatch):
    blockwise_calls = []
    blockwise = lqs.scorer.blockwise_causal_attention
    monkeypatch.setattr(lqs.scorer, "blockwise_causal_attention",
                        lambda *args, **kwargs: blockwise_calls.append(args[0].shape) or blockwise(*args, **kwargs))
    bf16 = lqs.scorer.load(scorer_dirs[kind], device="cpu", dtype="bf16")
    texts = _texts(30, seed=5)
    expected = np.array([_brute_score(scorers[kind], t) for t in texts])
    got = np.array(bf16.score(texts, max_tokens=48))
    assert not np.array_equal(got, expected)  # bf16 did run
    assert np.abs(got - expected).max() < 0.05 * np.std(expected)
    assert stats.spearmanr(got, expected).statistic > 0.98
    # XGLM's causal attention takes the blockwise bf16 path on a CPU; Mistral keeps transformers' SDPA.
    assert bool(blockwise_calls) == (kind == "xglm")


def test_score_edge_cases(scorers):
    scorer = scorers["xglm"]
    assert scorer.score([]) == []
    with pytest.raises(ValueError, match="text 1: empty text"):
        scorer.score(["fine", ""])
    with pytest.raises(ValueError, match="text 3 has no tokens"):  # windows() takes what it is given
        scorer.windows(["fine", ""], first=2)
    texts = _texts(5, seed=8)
    expected = scorer.score(texts)
    assert scorer.score(iter(texts)) == expected  # any iterable in order: a generator, a tuple
    assert scorer.score(tuple(texts)) == expected


@pytest.mark.parametrize("texts, message", [
    ("a whole document", "not a single str: pass [text] to score one text"),
    (b"bytes", "not a single bytes"),
    ({"a text": 1}, "not dict"),
    ({"a text"}, "not set"),
    (7, "not int"),
])
def test_score_refuses_what_is_not_a_list_of_texts(scorers, texts, message):
    """A bare string would otherwise be scored character by character; a set has no order."""
    with pytest.raises(TypeError, match=re.escape(message)):
        scorers["xglm"].score(texts)


def test_score_refuses_exactly_what_the_workflow_rejects(scorers, tok_dir, tmp_path):
    """The texts as a corpus through tokenize_shard (on_bad_record: skip): the API names, by
    index and with the same reason, exactly the records the workflow rejects."""
    good = _texts(4, seed=9)
    texts = [good[0], "", " \n\t ", 3, None, good[1], "caf\ud800e", "x" * (MAX_CHARS + 1), good[2], ["a"]]
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in texts])
    _tokenize_one(path, tok_dir, str(tmp_path / "tok.parquet"), str(tmp_path / "rejects.jsonl"), text_field="text",
                  max_length=24, on_bad_record="skip", max_chars=MAX_CHARS)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    offsets = _offsets(path.read_text().splitlines())
    assert [r["doc_id"] for r in rejects] == [offsets[i] for i in (1, 2, 3, 4, 6, 7, 9)]

    with pytest.raises(ValueError) as raised:
        scorers["xglm"].score(texts, max_chars=MAX_CHARS)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("7 of 10 texts cannot be scored (the workflow rejects such records): text 1: ")
    named = re.findall(r"text (\d+): ([^;]+)", message)
    assert [int(i) for i, _ in named] == [1, 2, 3, 4, 6]  # the first five, then a count
    assert message.endswith("; and 2 more")
    for (_, reason), reject in zip(named, rejects):  # the workflow's reason, with "text" for "text field 'text'"
        assert reason == reject["reason"].replace("text field 'text'", "text")
    assert "empty text" in message and "is not a string (got int)" in message and "lone UTF-16 surrogate" in message
    # what is left is scored
    kept = [t for i, t in enumerate(texts) if offsets[i] not in {r["doc_id"] for r in rejects}]
    assert kept == [good[0], good[1], good[2]]
    assert len(scorers["xglm"].score(kept, max_chars=MAX_CHARS)) == 3
    with pytest.raises(ValueError, match=r"1 of 1 texts .*text 0: text longer than corpus.max_chars \(11 > 10 "):
        scorers["xglm"].score(["x" * 11], max_chars=10)


def test_token_budget_batches():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(0, 60))]
        windows = [Window(doc=i, ids=[0] * n) for i, n in enumerate(lengths)]
        budget = rng.randint(1, 120)
        batches = list(token_budget_batches(windows, budget))
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(windows)))  # every index exactly once
        assert all(batches)
        for batch in batches:
            longest = max(lengths[i] for i in batch)
            assert len(batch) * longest <= budget or len(batch) == 1  # only a lone over-long window exceeds
        # longest first: length-bucketed, so a batch holds windows of similar length
        assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
        # greedy: the next window would not have fitted into the previous batch
        for prev, _ in zip(batches, batches[1:]):
            assert (len(prev) + 1) * max(lengths[i] for i in prev) > budget


# ---------------------------------------------------------------- score_shard + gather_scores


def _corpus_lines() -> list[str]:
    """Raw JSONL lines with formatting that must survive byte for byte, a bad line, and sources."""
    texts = _texts(14, seed=4)
    lines = []
    for i, text in enumerate(texts):
        source = ("web", "books", "code")[i % 3]
        lines.append(json.dumps({"id": i, "text": text, "source": source, "meta": {"n": i}}))
    lines[1] = '{"id":1,  "weight": 1.50, "text": ' + json.dumps(texts[1]) + ', "source": "web", "u": "caf\\u00e9"}'
    lines[2] = '{"text": "naïve café, résumé ünïcode.", "source": "books", "big": 1e400, "x": [1.0, 2.00]}  '
    lines[5] = '{"text": "this line is broken'
    lines[8] = json.dumps({"id": 8, "text": texts[8]})  # no source
    lines[9] = json.dumps({"id": 9, "text": texts[9], "source": 7})  # a non-string source
    return lines


def _tokenize_one(path, tok_dir: str, tokenized: str, rejects: str, **settings):
    """tokenize_shard on the corpus of one file, as one shard: (its plan file, the plan)."""
    plan_path, corpus_plan = write_plan(Path(tokenized).parent, [path])
    tokenize_shard(plan_path, "0", tok_dir, str(tokenized), str(rejects), **shard_settings(corpus_plan), **settings)
    return plan_path, corpus_plan


def _offsets(lines: list[str]) -> list[int]:
    """The byte offset of each line of a JSONL file of `lines`: its doc id, the file the first."""
    return np.cumsum([0] + [len(line.encode()) + 1 for line in lines])[:-1].tolist()


def _run_pipeline(tmp_path: Path, corpus_paths: list[str], tok_dir: str, scorer_dir: str, num_shards,
                  max_windows_per_doc=None, score_field="score") -> tuple[dict, dict[str, Path]]:
    """tokenize_shard, score_shard for every planned shard, then gather_scores (output.layout single:
    the output's fields are gather's)."""
    plan_path, corpus_plan = write_plan(tmp_path, corpus_paths, num_shards)
    score_paths, reject_paths, stats_paths = [], [], []
    for shard in (s.key for s in corpus_plan.shards):
        tokenized, rejects = tmp_path / f"tok-{shard}.parquet", tmp_path / f"rejects-{shard}.jsonl"
        scores, stats = tmp_path / f"scores-{shard}.parquet", tmp_path / f"scores-{shard}.json"
        tokenize_shard(plan_path, shard, tok_dir, str(tokenized), str(rejects), **shard_settings(corpus_plan, shard),
                       text_field="text", max_length=24, on_bad_record="skip", max_chars=MAX_CHARS, batch_docs=4)
        counts = score_shard(plan_path, corpus_plan, shard, str(tokenized), scorer_dir, str(scores),
                             text_field="text", max_chars=MAX_CHARS, max_tokens=40,
                             max_windows_per_doc=max_windows_per_doc, chunk_docs=3, device="cpu",
                             stats_out=str(stats))
        assert counts["scored"] == pq.read_table(scores).num_rows
        score_paths.append(str(scores))
        stats_paths.append(str(stats))
        reject_paths.append(str(rejects))
    out = {"out": tmp_path / "scored.jsonl", "rejects": tmp_path / "rejects.jsonl",
           "summary": tmp_path / "summary.json", "index": tmp_path / "index.parquet"}
    summary = gather_scores(plan_path, score_paths, reject_paths, str(out["out"]), str(out["rejects"]),
                            str(out["summary"]), str(out["index"]), **corpus_settings(corpus_plan),
                            on_bad_record="skip",
                            text_field="text", max_chars=MAX_CHARS,
                            score_field=score_field, stats_paths=stats_paths)
    return summary, out


@pytest.mark.parametrize("num_shards", [1, 3])
def test_score_and_gather_jsonl(tok_dir, scorer_dirs, scorers, tmp_path, num_shards):
    lines = _corpus_lines()
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    summary, out = _run_pipeline(tmp_path, [str(path)], tok_dir, scorer_dirs["xglm"], num_shards)
    scorer = scorers["xglm"]

    good = [i for i, line in enumerate(lines) if i != 5]
    out_lines = out["out"].read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(out_lines) == len(good)  # one line per accepted input document, in input order
    expected_scores = {}
    for i, line in zip(good, out_lines):
        assert line.endswith("\n") and "\n" not in line[:-1]
        original = json.loads(lines[i])
        parsed = json.loads(line)
        assert list(parsed)[-1] == "score"
        assert {k: v for k, v in parsed.items() if k != "score"} == original
        assert parsed["score"] == pytest.approx(_brute_score(scorer, original["text"]), abs=1e-5)
        # the original bytes are kept: the input line with the field inserted before its last }
        end = lines[i].rindex("}")
        assert line == f'{lines[i][:end]}, "score": {parsed["score"]!r}{lines[i][end:]}\n'
        expected_scores[i] = parsed["score"]
    assert '"weight": 1.50' in out_lines[1] and '"u": "caf\\u00e9"' in out_lines[1]
    assert '"big": 1e400' in out_lines[2] and "naïve café" in out_lines[2]

    # the scores of every shard, in doc-id order, with the truncation flag; a doc id: the line's offset
    offsets = _offsets(lines)
    line_of = {offset: i for i, offset in enumerate(offsets)}
    shard_rows = [{**r, "doc_id": line_of[r["doc_id"]]}
                  for p in sorted(tmp_path.glob("scores-*.parquet")) for r in pq.read_table(p).to_pylist()]
    for p in tmp_path.glob("scores-*.parquet"):
        schema = pq.read_schema(p)
        assert schema.equals(SCORES_SCHEMA)
        assert [(f.name, f.type) for f in schema] == [
            ("doc_id", pa.int64()), ("score", pa.float64()), ("truncated", pa.bool_()),
            ("n_tokens", pa.int64()), ("n_windows", pa.int64()), ("fingerprint", pa.int64()),
            ("source", pa.string())]
    assert sorted(r["doc_id"] for r in shard_rows) == good
    for row in shard_rows:  # what the score was computed on: the document's windows
        windows = scorer.windows([json.loads(lines[row["doc_id"]])["text"]])[0]
        assert (row["n_tokens"], row["n_windows"]) == (sum(len(w.ids) for w in windows), len(windows))
    assert {r["doc_id"]: r["score"] for r in shard_rows} == expected_scores
    assert not any(r["truncated"] for r in shard_rows)
    source_of = {i: json.loads(lines[i]).get("source") for i in good}  # a record's source, if a string
    source_of = {i: s if isinstance(s, str) else None for i, s in source_of.items()}
    assert {r["doc_id"]: r["source"] for r in shard_rows} == source_of
    # gather's index of the output: its documents in order, with the corpus's ids, scores and sources
    index = pq.read_table(out["index"]).to_pylist()
    assert index == [{"doc_id": offsets[i], "score": expected_scores[i], "source": source_of[i]} for i in good]

    rejects = [json.loads(x) for x in out["rejects"].read_text(encoding="utf-8").splitlines()]
    assert len(rejects) == 1
    assert rejects[0]["doc_id"] == offsets[5] and rejects[0]["line"] == 6 and rejects[0]["file"] == str(path)
    assert rejects[0]["record"] == lines[5] and "invalid JSON" in rejects[0]["reason"]

    on_disk = json.loads(out["summary"].read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["documents_read"] == len(lines)
    assert summary["documents_scored"] == len(good) and summary["documents_rejected"] == 1
    assert summary["documents_read"] == summary["documents_scored"] + summary["documents_rejected"]
    assert summary["documents_truncated"] == 0
    by_source = defaultdict(list)
    for i in good:
        source = json.loads(lines[i]).get("source")
        if isinstance(source, str):
            by_source[source].append(_brute_score(scorer, json.loads(lines[i])["text"]))
    assert set(summary["mean_score_by_source"]) == {"web", "books", "code"}
    for source, values in by_source.items():
        assert summary["mean_score_by_source"][source] == pytest.approx(np.mean(values), abs=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))


def test_score_and_gather_truncation(tok_dir, scorer_dirs, scorers, tmp_path):
    lines = _corpus_lines()
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    summary, out = _run_pipeline(tmp_path, [str(path)], tok_dir, scorer_dirs["mistral"], 2, max_windows_per_doc=1)
    scorer = scorers["mistral"]
    texts = [json.loads(line)["text"] for i, line in enumerate(lines) if i != 5]
    n_windows = [_n_windows(scorer, t) for t in texts]
    assert 0 < sum(n > 1 for n in n_windows) < len(texts)
    assert summary["documents_truncated"] == sum(n > 1 for n in n_windows)
    scores = [json.loads(x)["score"] for x in out["out"].read_text().splitlines()]
    np.testing.assert_allclose(scores, [_brute_score(scorer, t, 1) for t in texts], rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_shards", [1, 2, "per_file"])
def test_score_and_gather_parquet_and_several_files(tok_dir, scorer_dirs, scorers, tmp_path, num_shards):
    rows = [{"text": t, "source": ("web", "books")[i % 2], "n": i, "f": i / 4} for i, t in enumerate(_texts(9, seed=6))]
    rows[3]["text"] = "   "  # rejected: empty text
    first = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), first, row_group_size=4)
    second_lines = [json.dumps({"text": t, "source": "code"}) for t in _texts(5, seed=7)]
    second_lines[2] = "[1, 2]"  # rejected: not an object
    second = write_jsonl(tmp_path / "b.jsonl", second_lines)
    summary, out = _run_pipeline(tmp_path, [str(first), str(second)], tok_dir, scorer_dirs["xglm"], num_shards)
    scorer = scorers["xglm"]
    expected = [r for i, r in enumerate(rows) if i != 3] + [json.loads(x) for i, x in enumerate(second_lines) if i != 2]
    got = [json.loads(x) for x in out["out"].read_text(encoding="utf-8").splitlines()]
    assert len(got) == len(expected)
    for record, original in zip(got, expected):
        assert {k: v for k, v in record.items() if k != "score"} == original
        assert record["score"] == pytest.approx(_brute_score(scorer, original["text"]), abs=1e-5)
    rejects = [json.loads(x) for x in out["rejects"].read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [(str(first), 4), (str(second), 3)]
    assert rejects[0]["record"] == rows[3]
    assert summary["documents_read"] == len(rows) + len(second_lines)
    assert (summary["documents_scored"], summary["documents_rejected"]) == (len(expected), 2)


def test_record_with_the_score_field_is_rejected_not_overwritten(tok_dir, scorer_dirs, tmp_path):
    """A record that already has the score field is a bad record (output.layout single: gather_scores
    rejects it; never overwritten); with another score field name it is scored and keeps its own field."""
    lines = _corpus_lines()
    lines[7] = json.dumps({"text": "an already scored document.", "score": 0.5})
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    summary, out = _run_pipeline(tmp_path, [str(path)], tok_dir, scorer_dirs["xglm"], 2)
    rejects = {r["line"]: r["reason"] for r in map(json.loads, out["rejects"].read_text().splitlines())}
    assert "'score'" in rejects[8] and "output.score_field" in rejects[8]
    assert all('"an already scored document."' not in line for line in out["out"].read_text().splitlines())
    summary, out = _run_pipeline(tmp_path, [str(path)], tok_dir, scorer_dirs["xglm"], 2, score_field="lqs")
    assert 8 not in {r["line"] for r in map(json.loads, out["rejects"].read_text().splitlines())}
    assert json.loads(out["out"].read_text().splitlines()[6])["score"] == 0.5
    assert summary["documents_scored"] == len(lines) - 1


def test_gather_detects_missing_scores(tok_dir, scorer_dirs, tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", _corpus_lines())
    summary, out = _run_pipeline(tmp_path, [str(path)], tok_dir, scorer_dirs["xglm"], 2)
    scores = tmp_path / "scores-1.parquet"
    table = pq.read_table(scores)
    pq.write_table(table.slice(0, table.num_rows - 1), scores)  # a score lost
    out2 = tmp_path / "again.jsonl"
    plan_path, corpus_plan = write_plan(tmp_path, [path], 2)  # _run_pipeline's
    with pytest.raises(RuntimeError, match="neither scored nor rejected"):
        gather_scores(plan_path, [str(tmp_path / "scores-0.parquet"), str(scores)],
                      [str(tmp_path / "rejects-0.jsonl"), str(tmp_path / "rejects-1.jsonl")], str(out2),
                      str(tmp_path / "r2.jsonl"), str(tmp_path / "s2.json"), str(tmp_path / "i2.parquet"),
                      **corpus_settings(corpus_plan),
                      on_bad_record="skip", text_field="text", max_chars=MAX_CHARS, score_field="score")
    assert not out2.exists() and not (tmp_path / "s2.json").exists() and not (tmp_path / "i2.parquet").exists()


@pytest.mark.parametrize("batch_rows", [1, 3, 1000])
def test_accepted_documents_stream_in_order(tok_dir, tmp_path, batch_rows):
    path = write_jsonl(tmp_path / "corpus.jsonl", _corpus_lines())
    tokenized = tmp_path / "tok.parquet"
    plan_path, corpus_plan = _tokenize_one(path, tok_dir, str(tokenized), str(tmp_path / "rejects.jsonl"),
                                           text_field="text", max_length=24, on_bad_record="skip",
                                           max_chars=MAX_CHARS, batch_docs=4)
    column = pq.read_table(tokenized)["doc_id"].to_numpy()
    assert len(column) > len(np.unique(column))  # documents of several windows: batches split them
    got = list(lqs.batch_scoring.accepted_documents(str(tokenized), batch_rows=batch_rows))
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in got]), np.unique(column))
    fingerprints = {r.doc_id: r.fingerprint for r in iter_records([str(path)])}
    assert np.concatenate([f for _, f in got]).tolist() == [fingerprints[i] for i in np.unique(column).tolist()]
    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(pq.read_table(tokenized).take(np.random.default_rng(0).permutation(len(column))), shuffled)
    with pytest.raises(RuntimeError, match="shuffled.parquet: document ids are not in input order"):
        list(lqs.batch_scoring.accepted_documents(str(shuffled), batch_rows=batch_rows))


def test_score_shard_on_pretokenized_windows_gives_the_in_process_scores(tok_dir, scorer_dirs, scorers, tmp_path):
    """score_shard reads windows tokenized beforehand (tokenize_scorer_shard); its scores, flags
    and counts are those of Scorer.score_with_truncation, which tokenizes as it goes (lqs score)."""
    lines = _corpus_lines()
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    tokenized = tmp_path / "tok.parquet"
    plan_path, corpus_plan = _tokenize_one(path, tok_dir, str(tokenized), str(tmp_path / "rejects.jsonl"),
                                           text_field="text", max_length=24, on_bad_record="skip",
                                           max_chars=MAX_CHARS, batch_docs=4)
    out = tmp_path / "scores.parquet"
    score_shard(plan_path, corpus_plan, "0", str(tokenized), scorer_dirs["xglm"], str(out), max_tokens=40,
                max_windows_per_doc=2, chunk_docs=3, device="cpu", dtype="fp32")
    table = pq.read_table(out).to_pydict()
    texts = [json.loads(line)["text"] for i, line in enumerate(lines) if i != 5]  # line 5: the bad record
    scores, truncated = scorers["xglm"].score_with_truncation(texts, max_tokens=40, max_windows_per_doc=2,
                                                              chunk_docs=3)
    assert table["doc_id"] == [offset for i, offset in enumerate(_offsets(lines)) if i != 5]
    assert table["score"] == pytest.approx(scores, rel=1e-6, abs=1e-6) and table["truncated"] == truncated
    assert any(truncated) and not all(truncated)
    windows = scorers["xglm"].windows(texts, 2)[0]
    assert table["n_tokens"] == [sum(len(w.ids) for w in windows if w.doc == d) for d in range(len(texts))]
    assert table["n_windows"] == [sum(w.doc == d for w in windows) for d in range(len(texts))]


def test_score_shard_logs_the_time_split_and_tokens(tok_dir, scorer_dirs, scorers, tmp_path, caplog):
    lines = _corpus_lines()
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    tokenized = tmp_path / "tok.parquet"
    plan_path, corpus_plan = _tokenize_one(path, tok_dir, str(tokenized), str(tmp_path / "rejects.jsonl"),
                                           text_field="text", max_length=24, on_bad_record="skip",
                                           max_chars=MAX_CHARS, batch_docs=4)
    with caplog.at_level("INFO", logger="lqs.stages.score_shard"):
        counts = score_shard(plan_path, corpus_plan, "0", str(tokenized), scorer_dirs["xglm"],
                             str(tmp_path / "scores.parquet"),
                             text_field="text", max_chars=MAX_CHARS, max_tokens=40,
                             max_windows_per_doc=None, chunk_docs=3, device="cpu")
    texts = [json.loads(line)["text"] for i, line in enumerate(lines) if i != 5]  # line 5: the bad record
    tokens = sum(len(w.ids) for w in scorers["xglm"].windows(texts)[0])
    assert counts == {"scored": len(texts), "truncated": 0, "tokens": tokens}
    message = caplog.messages[-1]
    assert f"{len(texts)} documents, {tokens} tokens in" in message, message
    seconds = {part: float(x) for part, x in re.findall(r"(read|tokenize|model|write) ([0-9.]+) s", message)}
    wall = float(re.search(r"tokens in ([0-9.]+) s", message).group(1))
    assert set(seconds) == {"read", "model", "write"}, message  # tokenized beforehand, on a CPU node
    assert seconds["model"] > 0 and all(0 <= x <= wall + 0.1 for x in seconds.values()), message
    assert re.search(r"[0-9]+ tokens/s end to end", message) and "TFLOP/s" in message


def test_tokenizer_processes_give_the_windows_of_this_process(scorer_dirs, scorers):
    scorer, texts = scorers["xglm"], _texts(12, seed=7)
    with lqs.scorer.tokenizer_processes(scorer_dirs["xglm"], 1) as pool:  # spawned: its own tokenizer
        windows, truncated, seconds = pool.submit(lqs.scorer.windows_in_worker, scorer.max_length, texts, 2).result()
        assert (windows, truncated) == scorer.windows(texts, 2) and seconds > 0
        with pytest.raises(ValueError, match="text 8 has no tokens"):  # numbered from `first`
            pool.submit(lqs.scorer.windows_in_worker, scorer.max_length, ["fine", "", "also"], None, 7).result()


def test_in_order_keeps_order_and_submits_ahead():
    submitted, futures = [], {}

    def submit(i: int):
        submitted.append(i)
        futures[i] = concurrent.futures.Future()
        futures[i].set_result(i * i)
        return futures[i]

    got = []
    for i, value in lqs.batch_scoring.in_order(iter(range(6)), submit, depth=2):
        assert submitted == list(range(min(6, i + 3)))  # up to 2 submitted beyond the one in use
        got.append((i, value))
    assert got == [(i, i * i) for i in range(6)]
    assert list(lqs.batch_scoring.in_order(iter([]), submit, depth=2)) == []


def test_split_counts_time_per_part():
    split = lqs.batch_scoring.Split()
    with split("a"):
        time.sleep(0.02)
    assert list(split.iterate("b", (time.sleep(0.01) or i for i in range(3)))) == [0, 1, 2]
    assert 0.02 <= split.seconds["a"] < 1 and 0.03 <= split.seconds["b"] < 1


def test_forward_flops_count_every_product(scorers):
    """2 FLOPs per weight of every linear layer call (counted by hooks on a real forward) plus
    causal attention written out per query position."""
    for scorer in scorers.values():
        backbone, lengths, counted = scorer.model.backbone, [5, 16], 0
        cfg = backbone.config

        def count(module, args, output):
            nonlocal counted
            counted += 2 * args[0].shape[:-1].numel() * module.in_features * module.out_features

        handles = [m.register_forward_hook(count) for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for n in lengths:
                backbone(input_ids=torch.randint(3, 100, (1, n)))
        for h in handles:
            h.remove()
        attention = sum(4 * cfg.hidden_size * (i + 1) for n in lengths for i in range(n)) * cfg.num_hidden_layers
        assert scorer.forward_flops(lengths) == counted + attention
    assert scorer.max_tokens == lqs.scorer.CPU_MAX_TOKENS  # a CPU: cache-sized batches


def test_chunked():
    assert list(lqs.batch_scoring.chunked(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(lqs.batch_scoring.chunked(iter([]), 3)) == []


def test_prefetched_computes_the_next_item_while_the_current_one_is_used():
    started = [threading.Event() for _ in range(4)]
    workers = set()

    def work(i: int) -> int:
        workers.add(threading.current_thread())
        started[i].set()
        return i * i

    got = []
    for value in lqs.scorer.prefetched(iter(range(4)), work):
        i = len(got)
        if i + 1 < 4:  # while the caller holds item i, item i+1 is already being computed
            assert started[i + 1].wait(timeout=10)
        got.append(value)
    assert got == [0, 1, 4, 9]
    assert threading.main_thread() not in workers
    assert list(lqs.scorer.prefetched(iter([]), work)) == []


def test_prefetched_raises_the_workers_error_in_order():
    def work(i: int) -> int:
        if i == 2:
            raise ValueError("bad item 2")
        return i

    got = []
    with pytest.raises(ValueError, match="bad item 2"):
        for value in lqs.scorer.prefetched(iter(range(5)), work):
            got.append(value)
    assert got == [0, 1]


@pytest.mark.parametrize("change, found", [("drop", 12), ("empty", 3)])
def test_scoring_detects_a_corpus_changed_since_tokenization(tok_dir, scorer_dirs, tmp_path, change, found):
    """Scoring that reads the corpus again (a scorer with a tokenizer of its own: here a copy of
    the tokenized shard that names none) stops at the change; scoring that cuts its windows from
    the tokenized shard reads no record, and the output's writer stops at it."""
    lines = _corpus_lines()
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    tokenized = tmp_path / "tok.parquet"
    plan_path, corpus_plan = _tokenize_one(path, tok_dir, str(tokenized), str(tmp_path / "rejects.jsonl"),
                                           text_field="text", max_length=24, on_bad_record="skip",
                                           max_chars=MAX_CHARS, batch_docs=4)
    table = pq.read_table(tokenized)
    anonymous = tmp_path / "anonymous.parquet"
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                  if k != lqs.tokenize.TOKENIZER_METADATA}), anonymous)
    # the last document removed (12 found), or the fourth made a bad record (scoring stops there)
    write_jsonl(path, lines[:-1] if change == "drop" else lines[:3] + ['{"text": " "}'] + lines[4:])
    out = tmp_path / "scores.parquet"
    settings = dict(text_field="text", max_chars=MAX_CHARS, max_tokens=40, max_windows_per_doc=None, chunk_docs=3,
                    device="cpu")
    with pytest.raises(RuntimeError, match=f"shard 0: tokenization accepted 13 documents but {found} were found"):
        score_shard(plan_path, corpus_plan, "0", str(anonymous), scorer_dirs["xglm"], str(out), **settings)
    assert not out.exists() and not list(tmp_path.glob(".scores*"))
    score_shard(plan_path, corpus_plan, "0", str(tokenized), scorer_dirs["xglm"], str(out), **settings)
    assert pq.read_table(out).num_rows == 13
    error = "holds documents the corpus does not have" if change == "drop" else "the corpus changed since it was scored"
    with pytest.raises(RuntimeError, match=error):
        gather_scores(plan_path, [str(out)], [str(tmp_path / "rejects.jsonl")], str(tmp_path / "scored.jsonl"),
                      str(tmp_path / "r.jsonl"), str(tmp_path / "s.json"), str(tmp_path / "i.parquet"),
                      **corpus_settings(corpus_plan), text_field="text", max_chars=MAX_CHARS, score_field="score",
                      output_format="jsonl", on_bad_record="error")
    assert not (tmp_path / "scored.jsonl").exists()


# ---------------------------------------------------------------- train_scorer


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(3, 60))
        a = rng.integers(0, 6, n).astype(float)  # many ties
        b = a + rng.integers(-3, 4, n)
        assert lqs.scorer.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        c = rng.normal(size=n)
        assert lqs.scorer.spearman(c, b) == pytest.approx(stats.spearmanr(c, b).statistic, abs=1e-12)
    assert lqs.scorer.spearman(np.ones(5), np.arange(5.0)) == 0.0
    assert lqs.scorer.spearman(np.arange(5.0), np.arange(5.0)[::-1]) == pytest.approx(-1.0)


def _training_data(tmp_path: Path, n: int = 40) -> tuple[Path, Path, list[str], np.ndarray, np.ndarray]:
    rng = random.Random(8)
    texts = []
    while len(texts) < n:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
        if text not in texts:
            texts.append(text)
    length = np.array([len(t) for t in texts], dtype=float)
    score = (length - length.mean()) / length.std()  # the label: a simple function of the text
    split = np.array(["valid" if i % 4 == 0 else "train" for i in range(n)])
    samples = tmp_path / "samples.parquet"
    pd.DataFrame({"sample_id": np.arange(n) + 100, "doc_id": np.arange(n), "text": texts}).to_parquet(samples)
    labels = tmp_path / "labels.parquet"
    order = rng.sample(range(n), n)  # the labels file in another order: merged by sample_id
    pd.DataFrame({"sample_id": np.arange(n)[order] + 100, "raw": score[order], "score": score[order],
                  "split": split[order]}).to_parquet(labels)
    return samples, labels, texts, score, split


@pytest.fixture(scope="module")
def base_dir(tok_dir, tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("base")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    _backbone("xglm", tokenizer).save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return str(d)


TRAIN_SETTINGS = dict(lr=3e-3, epochs=3, batch_size=8, warmup_steps=2, weight_decay=0.01, clip=1.0,
                      max_length=32, seed=0, device="cpu")


def test_train_scorer(base_dir, tmp_path):
    samples, labels, texts, score, split = _training_data(tmp_path)
    out = tmp_path / "scorer"
    summary = train_scorer(str(samples), str(labels), base_dir, str(out), **TRAIN_SETTINGS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    assert (metrics["train_samples"], metrics["valid_samples"]) == ((split == "train").sum(), (split == "valid").sum())
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert metrics["valid_spearman"] == max(h["valid_spearman"] for h in history)
    best = history[metrics["best_epoch"]]
    assert (best["valid_spearman"], best["valid_mse"]) == (metrics["valid_spearman"], metrics["valid_mse"])
    assert all(np.isfinite(h["train_loss"]) for h in history)

    scorer = lqs.scorer.load(out, device="cpu")
    assert scorer.max_length == TRAIN_SETTINGS["max_length"]
    valid_texts = [t for t, s in zip(texts, split) if s == "valid"]
    assert all(_n_windows(scorer, t) == 1 for t in valid_texts)  # one window: score == the window's output
    pred = np.array(scorer.score(valid_texts))
    np.testing.assert_allclose(pred, [_brute_score(scorer, t) for t in valid_texts], rtol=0, atol=1e-5)
    target = score[split == "valid"]
    assert metrics["valid_spearman"] == pytest.approx(lqs.scorer.spearman(pred, target), abs=1e-9)
    assert metrics["valid_spearman"] == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-9)
    assert metrics["valid_mse"] == pytest.approx(float(np.mean((pred - target) ** 2)), abs=1e-5)
    # beside the checkpoint: its predictions of the validation samples, their labels exactly as given
    valid = pd.read_parquet(out / "valid_predictions.parquet")
    assert valid["sample_id"].tolist() == [i + 100 for i in range(len(texts)) if split[i] == "valid"]
    assert valid["label"].tolist() == target.tolist()  # as the labels file has them, float64
    np.testing.assert_allclose(valid["prediction"], pred, rtol=0, atol=1e-5)  # sample_id order is valid_texts'
    assert lqs.scorer.spearman(valid["prediction"].to_numpy(), valid["label"].to_numpy()) == \
        pytest.approx(metrics["valid_spearman"], abs=1e-12)


def test_train_scorer_keeps_the_best_epoch(base_dir, tmp_path, monkeypatch):
    """With validation Spearman forced to peak at epoch 1, the checkpoint holds epoch 1's weights."""
    samples, labels, *_ = _training_data(tmp_path)
    forced = iter([0.2, 0.9, 0.5])
    states = []
    real_predict = train_scorer_stage.predict

    def recording_predict(model, *args, **kwargs):
        states.append(copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
        return real_predict(model, *args, **kwargs)

    monkeypatch.setattr(train_scorer_stage, "predict", recording_predict)
    monkeypatch.setattr(train_scorer_stage, "spearman", lambda a, b: next(forced))
    out = tmp_path / "scorer"
    summary = train_scorer(str(samples), str(labels), base_dir, str(out), **TRAIN_SETTINGS)
    assert summary["best_epoch"] == 1 and summary["valid_spearman"] == 0.9
    assert len(states) == 3
    loaded = lqs.scorer.load(out, device="cpu").model.state_dict()
    assert any(not torch.equal(states[1][k], states[2][k]) for k in states[1])  # training did change them
    for name, value in loaded.items():
        torch.testing.assert_close(value, states[1][name], rtol=0, atol=0, msg=name)
    # the validation predictions kept are the kept epoch's: the checkpoint's own
    valid = pd.read_parquet(out / "valid_predictions.parquet")
    texts = pd.read_parquet(samples).set_index("sample_id").loc[valid["sample_id"], "text"].tolist()
    np.testing.assert_allclose(valid["prediction"], lqs.scorer.load(out, device="cpu").score(texts), rtol=0, atol=1e-5)
