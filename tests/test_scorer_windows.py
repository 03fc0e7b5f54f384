"""The scorer's windows file (lqs.scorer_windows), stage tokenize_scorer_shard, and score_shard's
model-only loop on it: Scorer.score_chunk (its compiled forward: tests/test_compiled.py)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import shard_settings, stage_function, tiny_corpus, tiny_scorer, train_tokenizer, write_jsonl, write_plan

import lqs.scorer
from lqs import scorer_windows
from lqs.scorer import Window, token_budget_batches
from lqs.stages import tokenize_scorer_shard as tokenize_scorer_shard_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage

tokenize_scorer_shard = stage_function(tokenize_scorer_shard_stage)
tokenize_shard = stage_function(tokenize_shard_stage)


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory):
    return tiny_scorer(tmp_path_factory.mktemp("scorer"))


@pytest.fixture(scope="module")
def shard(scorer_dir, tmp_path_factory):
    """A corpus (with a bad record, which tokenization rejects) and its tokenized shard."""
    root = tmp_path_factory.mktemp("shard")
    records = tiny_corpus(30, seed=3)
    records[4] = {"id": "bad", "text": "   "}
    corpus = write_jsonl(root / "corpus.jsonl", records)
    plan_path, plan = write_plan(root, [corpus])
    tokenize_shard(plan_path, "0", str(scorer_dir), str(root / "tok.parquet"), str(root / "rejects.jsonl"),
                   max_length=32, on_bad_record="skip", **shard_settings(plan))
    return corpus, root / "tok.parquet", records


def _windows(scorer_dir, shard, out, **settings):
    corpus, tokenized, _ = shard
    plan_path, plan = write_plan(tokenized.parent, [corpus])
    settings = {"max_length": None, "chunk_docs": 8, "max_windows_per_doc": None} | shard_settings(plan) | settings
    return tokenize_scorer_shard(plan_path, "0", str(tokenized), str(scorer_dir), str(out), **settings)


def test_the_windows_are_the_scorers_longest_first_in_chunks_of_documents(scorer_dir, shard, tmp_path):
    _, _, records = shard
    counts = _windows(scorer_dir, shard, tmp_path / "w.parquet", max_windows_per_doc=2)
    scorer = lqs.scorer.load(scorer_dir, "cpu")
    # (doc id, record): a doc id is the byte offset of the record's line (one file)
    offsets = np.cumsum([0] + [len(json.dumps(r).encode()) + 1 for r in records])
    accepted = [(int(offsets[i]), r) for i, r in enumerate(records) if i != 4]
    file = pq.ParquetFile(tmp_path / "w.parquet")
    assert file.num_row_groups == -(-len(accepted) // 8)  # chunk_docs documents per row group
    meta = json.loads(file.schema_arrow.metadata[scorer_windows.METADATA_KEY])
    assert meta["max_length"] == 32 == scorer.max_length and meta["max_windows_per_doc"] == 2
    rows = 0
    for group, chunk in zip(range(file.num_row_groups), scorer_windows.read_chunks(str(tmp_path / "w.parquet"))):
        table = file.read_row_group(group).to_pydict()
        lengths = [len(ids) for ids in table["input_ids"]]
        assert lengths == sorted(lengths, reverse=True)
        mine = accepted[group * 8:(group + 1) * 8]
        assert chunk.doc_ids.tolist() == [i for i, _ in mine]
        windows, truncated = scorer.windows([r["text"] for _, r in mine], 2)
        # the same windows as the in-process tokenizer's, each with its document and index in it
        index = {}
        expected = [(mine[w.doc][0], index.setdefault(w.doc, []).append(w) or len(index[w.doc]) - 1, w.ids)
                    for w in windows]
        assert sorted(zip(table["doc_id"], table["window"], table["input_ids"])) == sorted(expected)
        assert chunk.truncated.tolist() == truncated
        assert chunk.sources == [r["source"] for _, r in mine]
        assert chunk.fingerprints.tolist() == list(dict.fromkeys(
            f for f in pq.read_table(shard[1]).to_pydict()["fingerprint"]))[group * 8:(group + 1) * 8]
        rows += len(lengths)
    # cut from the tokenized shard, which the scorer's tokenizer made: no text tokenized
    assert counts == {"documents": len(accepted), "windows": rows, "tokens": counts["tokens"], "texts_tokenized": 0}


def _with_eos(scorer_dir, out):
    """The scorer's tokenizer adding </s> after each window too, with the scorer's scorer.json."""
    from tokenizers import processors

    tokenizer = lqs.tokenize.load_tokenizer(scorer_dir)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tokenizer.bos_token_id), ("</s>", tokenizer.eos_token_id)])
    tokenizer.save_pretrained(out)
    (out / "scorer.json").write_text((scorer_dir / "scorer.json").read_text())
    assert lqs.tokenize.special_tokens(lqs.tokenize.load_tokenizer(out)) == (
        [tokenizer.bos_token_id], [tokenizer.eos_token_id])
    return out


@pytest.fixture(scope="module", params=["<s>", "<s> and </s>"])
def long_shard(scorer_dir, tmp_path_factory, request):
    """A corpus of short and long documents (sentence ends, newlines between and inside words,
    non-ASCII, texts longer than kept_text keeps), tokenized by a scorer's tokenizer (the tiny
    scorer's, adding <s>; or one adding </s> too) into windows of another length than the
    scorer's; and a copy of the tokenized shard that does not say which tokenizer made it (as an
    older lqs wrote it)."""
    root = tmp_path_factory.mktemp("long")
    if request.param != "<s>":
        scorer_dir = _with_eos(scorer_dir, root / "with_eos")
    rng = np.random.default_rng(7)
    words = ["alpha", "beta.", "gamma!", "delta\n", "the", "file?", "ünï", "日本", "line \n ", "x" * 30]
    records = [{"text": " ".join(rng.choice(words, size=int(rng.integers(1, 600)))), "source": f"s{i % 3}"}
               for i in range(40)]
    records[5] = {"text": "  "}  # rejected by tokenization
    records[6]["source"] = 3  # not a string: no source
    corpus = write_jsonl(root / "corpus.jsonl", records)
    plan_path, plan = write_plan(root, [corpus])
    tokenized = root / "tok.parquet"
    tokenize_shard(plan_path, "0", str(scorer_dir), str(tokenized), str(root / "rejects.jsonl"),
                   max_length=24, on_bad_record="skip", batch_docs=7, **shard_settings(plan))
    table = pq.read_table(tokenized)
    anonymous = root / "anonymous" / "tok.parquet"
    anonymous.parent.mkdir()
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                  if k != lqs.tokenize.TOKENIZER_METADATA}), anonymous)
    return corpus, tokenized, anonymous, scorer_dir


@pytest.mark.parametrize("max_windows_per_doc", [None, 1, 3])
def test_windows_cut_from_the_tokenized_shard_are_the_texts(long_shard, tmp_path, max_windows_per_doc):
    """The scorer's windows cut from the tokenized shard's ids and window ends (its tokenizer the
    scorer's) are those of the texts tokenized again: the same file, byte for byte in its values;
    cutting them reads no corpus file."""
    corpus, tokenized, anonymous, scorer_dir = long_shard
    plan_path, plan = write_plan(tmp_path, [corpus])
    settings = {"max_length": None, "chunk_docs": 6, "max_windows_per_doc": max_windows_per_doc} | shard_settings(plan)
    from_text = tokenize_scorer_shard(plan_path, "0", str(anonymous), str(scorer_dir), str(tmp_path / "text.parquet"),
                                      **settings)
    hidden = corpus.with_name("moved.jsonl")
    corpus.rename(hidden)  # cutting from ids must not open it
    try:
        from_ids = tokenize_scorer_shard(plan_path, "0", str(tokenized), str(scorer_dir),
                                         str(tmp_path / "ids.parquet"), **settings)
    finally:
        hidden.rename(corpus)
    assert from_text["texts_tokenized"] == from_text["documents"] == 39 and from_ids["texts_tokenized"] == 0
    assert {k: v for k, v in from_ids.items() if k != "texts_tokenized"} == \
        {k: v for k, v in from_text.items() if k != "texts_tokenized"}
    text_file, ids_file = pq.ParquetFile(tmp_path / "text.parquet"), pq.ParquetFile(tmp_path / "ids.parquet")
    assert ids_file.schema_arrow.metadata == text_file.schema_arrow.metadata
    assert ids_file.num_row_groups == text_file.num_row_groups
    for group in range(text_file.num_row_groups):
        assert ids_file.read_row_group(group).equals(text_file.read_row_group(group))
    table = pq.read_table(tmp_path / "ids.parquet")
    assert any(table.column("truncated").to_pylist()) == (max_windows_per_doc is not None)
    assert None in table.column("source").to_pylist()  # the record whose source is not a string


def test_budget_slices_are_the_token_budget_batches_of_sorted_rows():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = np.sort(rng.integers(1, 40, rng.integers(1, 30)))[::-1]
        budget = int(rng.integers(1, 200))
        expected = list(token_budget_batches([Window(0, [0] * n) for n in lengths], budget))
        got = [list(range(a, b)) for a, b, width, rows in scorer_windows.budget_slices(lengths, budget)]
        assert got == expected
        for a, b, width, rows in scorer_windows.budget_slices(lengths, budget, step=16):
            assert width % 16 == 0 and width >= lengths[a] and rows * width <= max(budget, width)
            assert b - a <= rows


def test_padded_rows_hold_each_windows_ids_then_padding():
    lengths = np.array([4, 2, 1])
    ids = np.arange(1, 8)
    chunk = scorer_windows.Chunk(doc_ids=np.array([0]), fingerprints=np.array([0]), truncated=np.array([False]),
                                 sources=[None], doc_index=np.zeros(3, np.int64), lengths=lengths,
                                 offsets=np.concatenate(([0], np.cumsum(lengths))), ids=ids)
    padded, got_lengths = chunk.padded(1, 3, pad_id=0, width=5, rows=4)
    assert padded.tolist() == [[5, 6, 0, 0, 0], [7, 0, 0, 0, 0], [0] * 5, [0] * 5]
    assert got_lengths.tolist() == [2, 1, 0, 0]


def test_score_chunk_is_the_token_weighted_mean_of_each_documents_windows(scorer_dir, shard, tmp_path):
    """Brute force: each window alone through the model, weighted by its tokens."""
    _windows(scorer_dir, shard, tmp_path / "w.parquet", max_windows_per_doc=3)
    scorer = lqs.scorer.load(scorer_dir, "cpu")
    for chunk in scorer_windows.read_chunks(str(tmp_path / "w.parquet")):
        got = scorer.score_chunk(chunk, max_tokens=64)
        totals, weights = np.zeros(len(chunk.doc_ids)), np.zeros(len(chunk.doc_ids))
        for row in range(len(chunk.lengths)):
            ids = chunk.ids[chunk.offsets[row]:chunk.offsets[row + 1]].copy()
            with torch.no_grad():
                value = scorer.model(torch.as_tensor(ids)[None], torch.ones(1, len(ids))).item()
            totals[chunk.doc_index[row]] += len(ids) * value
            weights[chunk.doc_index[row]] += len(ids)
        np.testing.assert_allclose(got, totals / weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("what", ["another tokenizer", "another max_length"])
def test_score_shard_refuses_windows_made_for_another_scorer(scorer_dir, shard, tmp_path, what):
    if what == "another max_length":
        _windows(scorer_dir, shard, tmp_path / "w.parquet", max_length=24)
    else:
        other = tmp_path / "other"
        corpus = write_jsonl(other / "c.jsonl", [{"text": "zzz qqq " * (i + 1)} for i in range(30)])
        train_tokenizer([corpus], other / "tok", vocab_size=280)
        scorer_json = json.loads((scorer_dir / "scorer.json").read_text())
        (other / "tok" / "scorer.json").write_text(json.dumps(scorer_json))
        _windows(other / "tok", shard, tmp_path / "w.parquet")
    scorer = lqs.scorer.load(scorer_dir, "cpu")
    with pytest.raises(ValueError, match="was tokenized for another scorer.*rule tokenize_scorer_shard"):
        scorer_windows.check_made_for(str(tmp_path / "w.parquet"), scorer.tokenizer, scorer.max_length)


def test_the_tokenizer_digest_is_that_of_a_saved_copy(scorer_dir, tmp_path):
    tokenizer = lqs.scorer.load(scorer_dir, "cpu").tokenizer
    tokenizer.save_pretrained(tmp_path / "copy")
    copy = lqs.tokenize.load_tokenizer(tmp_path / "copy")
    assert scorer_windows.tokenizer_digest(copy) == scorer_windows.tokenizer_digest(tokenizer)
    # the stricter digest that lets tokenize_scorer_shard cut windows from a tokenized shard's ids
    assert lqs.tokenize.tokenizer_sha256(copy) == lqs.tokenize.tokenizer_sha256(tokenizer)
    copy.backend_tokenizer.enable_truncation(5)  # never used by the windows
    assert lqs.tokenize.tokenizer_sha256(copy) == lqs.tokenize.tokenizer_sha256(tokenizer)
    from tokenizers import normalizers

    copy.backend_tokenizer.normalizer = normalizers.Lowercase()  # the same vocabulary, other ids
    assert lqs.tokenize.tokenizer_sha256(copy) != lqs.tokenize.tokenizer_sha256(tokenizer)
