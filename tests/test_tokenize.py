"""Tests for windowing and the token stages: lqs.tokenize (window_bounds, tokenize_windows,
tokenize_shard), lqs.sample (draw_windows) and stage sample_proxy, lqs.target and stage prepare_target
(docs/stages.md, docs/reliability.md)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import shard_settings, stage_function, train_tokenizer, write_jsonl, write_plan

from lqs import corpus, sample, splits, target
from lqs.stages import prepare_target as prepare_target_stage
from lqs.stages import sample_proxy as sample_proxy_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage
from lqs.tokenize import (
    SHARD_SCHEMA,
    TOKENIZER_METADATA,
    cut_windows,
    load_tokenizer,
    special_tokens,
    tokenize_windows,
    tokenizer_sha256,
    window_bounds,
    window_ends,
)

prepare_target = stage_function(prepare_target_stage)
sample_proxy = stage_function(sample_proxy_stage)
tokenize_shard = stage_function(tokenize_shard_stage)

SENTENCES = [
    "The function returns a new list sorted in ascending order.",
    "Open the file, read each line and close the file when done!",
    "A dictionary maps keys to values; keys must be hashable.",
    "Is the iterator exhausted?",
    "Use a context manager to make sure resources are released.",
    "Numbers like 3.14 and 2.50 appear in text too.",
]
WORDS = "alpha beta gamma delta the of and file list key value line".split()


def _random_text(rng: random.Random, n_words: int) -> str:
    parts = []
    for _ in range(n_words):
        word = rng.choice(WORDS)
        r = rng.random()
        if r < 0.15:
            word += rng.choice(".!?")
        elif r < 0.22:
            word += "\n"
        elif r < 0.25:
            word += " \n "
        parts.append(word)
    return " ".join(parts)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    """A byte-level BPE tokenizer (vocab 300) trained on a small JSONL, as the pipeline does."""
    d = tmp_path_factory.mktemp("tok")
    rng = random.Random(0)
    docs = [{"text": " ".join(rng.sample(SENTENCES, 3)) + "\n" + _random_text(rng, 20)} for _ in range(60)]
    path = write_jsonl(d / "train.jsonl", docs)
    train_tokenizer([str(path)], str(d / "tokenizer"), text_field="text", vocab_size=300, max_chars=100_000)
    return str(d / "tokenizer")


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    """vocab 260 = 4 special tokens + 256 bytes: no merges, so every ASCII character is one token."""
    d = tmp_path_factory.mktemp("bytetok")
    path = write_jsonl(d / "train.jsonl", [{"text": s} for s in SENTENCES])
    train_tokenizer([str(path)], str(d / "tokenizer"), text_field="text", vocab_size=260, max_chars=100_000)
    tokenizer = load_tokenizer(d / "tokenizer")
    assert len(tokenizer("hello world.\n", add_special_tokens=False)["input_ids"]) == len("hello world.\n")
    return tokenizer


# ---------------------------------------------------------------- brute-force windowing spec


def _boundary_after(offsets, text, k) -> bool:
    """Token k ends with a sentence end or newline, or is followed by a newline."""
    stop = offsets[k][1]
    nxt = offsets[k + 1][0] if k + 1 < len(offsets) else stop
    return (stop > 0 and text[stop - 1] in ".!?\n") or "\n" in text[stop:nxt]


def _expected_bounds(offsets, text, budget):
    """Greedy: a window takes all remaining tokens if they fit; otherwise the longest length
    L <= budget with L > 3/4 budget that ends at a boundary, else exactly budget tokens."""
    n, start, out = len(offsets), 0, []
    while start < n:
        if n - start <= budget:
            length = n - start
        else:
            good = [L for L in range(1, budget + 1) if 4 * L > 3 * budget
                    and _boundary_after(offsets, text, start + L - 1)]
            length = max(good) if good else budget
        out.append((start, start + length))
        start += length
    return out


def _check_cover(bounds, n, budget):
    assert [a for a, _ in bounds] == ([0] if bounds else []) + [b for _, b in bounds[:-1]]  # contiguous
    assert (bounds[-1][1] if bounds else 0) == n
    assert all(0 < b - a <= budget for a, b in bounds)


@pytest.mark.parametrize("mode", ["chars", "words"])
def test_window_bounds_brute_force(mode):
    rng = random.Random(1)
    for _ in range(300):
        text = _random_text(rng, rng.randint(0, 40))
        if mode == "chars":  # one token per character, no gaps
            offsets = [(i, i + 1) for i in range(len(text))]
        else:  # whitespace-separated tokens: newlines fall in the gaps between tokens
            offsets = [m.span() for m in re.finditer(r"\S+", text)]
        budget = rng.randint(1, 14)
        bounds = window_bounds(offsets, text, budget)
        _check_cover(bounds, len(offsets), budget)
        assert bounds == _expected_bounds(offsets, text, budget), (text, budget)


@pytest.mark.parametrize("mode", ["chars", "words"])
def test_window_ends_brute_force(mode):
    """window_ends (numpy, every token at once) against _boundary_after, token by token; and cut
    from them at any budget, the windows of the brute-force spec."""
    rng = random.Random(3)
    for _ in range(300):
        text = _random_text(rng, rng.randint(0, 40)) + rng.choice(["", "ünï\n", "日本. "])
        offsets = ([(i, i + 1) for i in range(len(text))] if mode == "chars"
                   else [m.span() for m in re.finditer(r"\S+", text)])
        ends = window_ends(offsets, text)
        assert ends.tolist() == [k for k in range(len(offsets)) if _boundary_after(offsets, text, k)], text
        for budget in (1, 3, 8, 13):
            assert cut_windows(len(offsets), ends, budget) == _expected_bounds(offsets, text, budget)


def test_window_bounds_examples():
    text = "aaa. bbb ccc ddd\neee fff ggg hhh iii jjj"
    offsets = [m.span() for m in re.finditer(r"\S+", text)]  # 10 words; newline after word 3 (0-based)
    # budget 4: a boundary must leave > 3 tokens: the newline after word 3 ends the first window
    assert window_bounds(offsets, text, 4) == [(0, 4), (4, 8), (8, 10)]
    # budget 5: the newline gap after "ddd" (token 3, window length 4 > 3.75) is preferred over 5
    assert window_bounds(offsets, text, 5) == [(0, 4), (4, 9), (9, 10)]
    # budget 8: "aaa." (length 1) and the newline (length 4) are too early: the window is full
    assert window_bounds(offsets, text, 8) == [(0, 8), (8, 10)]
    assert window_bounds([], "", 5) == []


def test_tokenize_windows_byte_level_examples(byte_tok):
    bos = byte_tok.bos_token_id

    def texts_of(windows):
        assert all(w[0] == bos and bos not in w[1:] for w in windows)
        return [byte_tok.decode(w[1:]) for w in windows]

    max_length = 17  # <s> + 16 characters
    cases = {
        # "." at index 12: a 13-character window (> 3/4 of 16) ends at the sentence end
        "a" * 12 + ". " + "b" * 30: ["a" * 12 + ".", " " + "b" * 15, "b" * 15],
        # "." at index 4 is too early: the first window is full
        "aaaa. " + "b" * 30: ["aaaa. " + "b" * 10, "b" * 16, "b" * 4],
        # a newline at index 14 ends the first window
        "a" * 14 + "\n" + "b" * 10: ["a" * 14 + "\n", "b" * 10],
        # the latest boundary wins: "!" at 14 rather than "." at 12
        "a" * 12 + ".a!" + "b" * 20: ["a" * 12 + ".a!", "b" * 16, "b" * 4],
        # no boundary at all: cut every 16 characters
        "c" * 40: ["c" * 16, "c" * 16, "c" * 8],
        # fits: one window
        "short one.": ["short one."],
    }
    windows = tokenize_windows(byte_tok, list(cases), max_length)
    for (text, expected), doc_windows in zip(cases.items(), windows):
        assert all(len(w) <= max_length for w in doc_windows)
        assert texts_of(doc_windows) == expected, text


def test_special_tokens(tok, tmp_path):
    assert special_tokens(tok) == ([tok.bos_token_id], [])
    # a tokenizer that also appends </s>
    tokenizer = load_tokenizer(_with_eos(tok, tmp_path))
    assert special_tokens(tokenizer) == ([tokenizer.bos_token_id], [tokenizer.eos_token_id])


def _with_eos(tok, tmp_path) -> Path:
    from tokenizers import processors

    tok = load_tokenizer(tok.name_or_path)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)])
    out = tmp_path / "with_eos"
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("with_eos", [False, True])
def test_tokenize_windows_brute_force(tok, tmp_path, with_eos):
    tokenizer = load_tokenizer(_with_eos(tok, tmp_path)) if with_eos else tok
    prefix = [tokenizer.bos_token_id]
    suffix = [tokenizer.eos_token_id] if with_eos else []
    rng = random.Random(2)
    texts = [_random_text(rng, rng.randint(1, 60)) for _ in range(40)] + ["Ünïcödé tëxt, 日本語. " * 6]
    for max_length in (4, 9, 16, 33):
        budget = max_length - len(prefix) - len(suffix)
        windows = tokenize_windows(tokenizer, texts, max_length)
        assert len(windows) == len(texts)
        for text, doc_windows in zip(texts, windows):
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            assert all(len(w) <= max_length for w in doc_windows)
            assert all(w[:len(prefix)] == prefix and w[len(w) - len(suffix):] == suffix for w in doc_windows)
            inner = [w[len(prefix):len(w) - len(suffix)] for w in doc_windows]
            assert [t for w in inner for t in w] == ids  # all tokens, in order
            expected = _expected_bounds(offsets, text, budget)
            assert [len(w) for w in inner] == [b - a for a, b in expected]
            # windows of one text alone are the same as in the batch
            assert tokenize_windows(tokenizer, [text], max_length) == [doc_windows]


def test_tokenize_windows_ignores_a_saved_truncation(tok_dir):
    """The Rust tokenizer is called directly, but never with a truncation (or padding) that a
    tokenizer.json may carry: every token is in a window."""
    reference = load_tokenizer(tok_dir)
    truncating = load_tokenizer(tok_dir)
    truncating.backend_tokenizer.enable_truncation(3)
    texts = [" ".join(SENTENCES), SENTENCES[0]]
    assert tokenize_windows(truncating, texts, 16) == tokenize_windows(reference, texts, 16)
    assert len([t for w in tokenize_windows(truncating, texts, 16)[0] for t in w[1:]]) > 3


def test_tokenize_windows_edge_cases(tok):
    with pytest.raises(ValueError, match="max_length"):
        tokenize_windows(tok, ["some text"], 1)  # only room for <s>
    assert tokenize_windows(tok, [], 8) == []
    assert tokenize_windows(tok, [""], 8) == [[]]


# ---------------------------------------------------------------- tokenize_shard


def _corpus_lines(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        text = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 6)))
        lines.append(json.dumps({"id": i, "text": text, "source": ("a", "b")[i % 2]}))
    bad = {4: '{"text": "broken', 7: json.dumps({"id": 7, "body": "no text"}),
           10: json.dumps({"id": 10, "text": "   "}), 11: json.dumps({"id": 11, "text": "x" * 2000})}
    return [bad.get(i, line) for i, line in enumerate(lines)]


def _read_table(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _offsets(lines: list[str]) -> list[int]:
    """The byte offset of each line of a JSONL file of `lines`: its record's doc id (lqs.splits)."""
    return [sum(len(x.encode("utf-8")) + 1 for x in lines[:i]) for i in range(len(lines))]


def _in_split(position: int, shard: splits.Shard) -> bool:
    """Whether a line starting at byte `position` of the shard's one file is the shard's."""
    [split] = shard.splits
    return split.start <= position and (split.stop is None or position < split.stop)


@pytest.mark.parametrize("num_shards", [1, 2])
def test_tokenize_shard_skip(tok, tok_dir, tmp_path, num_shards):
    lines = _corpus_lines(23)
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    max_length, max_chars = 16, 1000
    plan_path, plan = write_plan(tmp_path, [path], num_shards)
    assert [s.key for s in plan.shards] == [str(k) for k in range(num_shards)]
    offsets = _offsets(lines)
    total = {"documents": 0, "rejected": 0, "windows": 0, "tokens": 0}
    for shard in plan.shards:
        out, rejects = tmp_path / f"shard-{shard.key}.parquet", tmp_path / f"rejects-{shard.key}.jsonl"
        counts = tokenize_shard(plan_path, shard.key, tok_dir, str(out), str(rejects),
                                text_field="text", max_length=max_length, on_bad_record="skip",
                                max_chars=max_chars, batch_docs=3, **shard_settings(plan, shard.key))
        schema = pq.read_schema(out)
        assert schema.equals(SHARD_SCHEMA) and splits.shard_files(str(out)) == [str(path)]
        assert [(f.name, f.type) for f in schema] == [
            ("doc_id", pa.int64()), ("window", pa.int32()), ("input_ids", pa.list_(pa.int32())),
            ("fingerprint", pa.int64()), ("ends", pa.list_(pa.int32())), ("source", pa.string())]
        assert schema.metadata[TOKENIZER_METADATA].decode() == tokenizer_sha256(tok)
        rows = _read_table(out)
        # brute force: every good line of this shard (the lines starting in its byte range), alone, windowed;
        # a doc id: the line's byte offset (the shard's first file)
        expected_rows, expected_rejects = [], []
        for i, line in enumerate(lines):
            if not _in_split(offsets[i], shard):
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError:
                fields = None
            text = fields.get("text") if isinstance(fields, dict) else None
            if isinstance(text, str) and text.strip() and len(text) <= max_chars:
                # the record's fingerprint: its line's bytes (without the line end), hashed
                fingerprint = int.from_bytes(hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest(),
                                             "little", signed=True)
                enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
                start = 0  # the window's first token in the text's
                for w, ids in enumerate(tokenize_windows(tok, [text], max_length)[0]):
                    inner = len(ids) - 1  # without <s>
                    ends = [k - start for k in range(start, start + inner)
                            if _boundary_after(enc["offset_mapping"], text, k)]
                    expected_rows.append({"doc_id": offsets[i], "window": w, "input_ids": ids,
                                          "fingerprint": fingerprint, "ends": ends, "source": fields["source"]})
                    start += inner
            else:
                expected_rejects.append(i)
        assert rows == expected_rows
        assert all(len(r["input_ids"]) <= max_length for r in rows)
        rejected = [json.loads(x) for x in rejects.read_text(encoding="utf-8").splitlines()]
        assert [r["doc_id"] for r in rejected] == [offsets[i] for i in expected_rejects]
        for r, i in zip(rejected, expected_rejects):
            assert set(r) == {"doc_id", "file", "line", "reason", "record"}
            assert (r["file"], r["line"], r["record"]) == (str(path), i + 1, lines[i])  # the file's line
            assert r["reason"]
        assert counts == {"documents": len({r["doc_id"] for r in expected_rows}), "rejected": len(expected_rejects),
                          "windows": len(expected_rows), "tokens": sum(len(r["input_ids"]) for r in expected_rows)}
        for k in total:
            total[k] += counts[k]
    assert total["documents"] + total["rejected"] == len(lines)
    assert total["rejected"] == 4
    reasons = {}
    for shard in plan.shards:
        for x in (tmp_path / f"rejects-{shard.key}.jsonl").read_text().splitlines():
            entry = json.loads(x)
            reasons[entry["line"] - 1] = entry["reason"]
    assert "invalid JSON" in reasons[4] and "missing text field" in reasons[7]
    assert "empty text" in reasons[10] and "max_chars" in reasons[11]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_tokenize_shard_error_mode(tok_dir, tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", _corpus_lines(8))
    out, rejects = tmp_path / "shard-0.parquet", tmp_path / "rejects-0.jsonl"
    plan_path, plan = write_plan(tmp_path, [path])
    with pytest.raises(corpus.BadRecordError, match=re.escape(f"{path}:5") + ".*invalid JSON"):
        tokenize_shard(plan_path, "0", tok_dir, str(out), str(rejects), text_field="text",
                       max_length=16, on_bad_record="error", max_chars=1000, batch_docs=2, **shard_settings(plan))
    assert not out.exists() and not rejects.exists()  # nothing that looks finished
    assert not list(tmp_path.glob(".*.tmp"))


def test_tokenize_shard_all_rejected(tok_dir, tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", ["not json", json.dumps({"text": ""})])
    out, rejects = tmp_path / "s.parquet", tmp_path / "r.jsonl"
    plan_path, plan = write_plan(tmp_path, [path])
    counts = tokenize_shard(plan_path, "0", tok_dir, str(out), str(rejects), text_field="text",
                            max_length=16, on_bad_record="skip", max_chars=1000, **shard_settings(plan))
    assert counts == {"documents": 0, "rejected": 2, "windows": 0, "tokens": 0}
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.equals(SHARD_SCHEMA)
    assert len(rejects.read_text().splitlines()) == 2


# ---------------------------------------------------------------- sample_proxy


@pytest.fixture(scope="module")
def shards(tok_dir, tmp_path_factory):
    """Two tokenized shards of a small corpus with single- and multi-window documents."""
    d = tmp_path_factory.mktemp("shards")
    lines = _corpus_lines(40, seed=5)
    path = write_jsonl(d / "corpus.jsonl", lines)
    plan_path, plan = write_plan(d, [path], 2)
    paths = []
    for shard in plan.shards:
        out = d / f"shard-{shard.key}.parquet"
        tokenize_shard(plan_path, shard.key, tok_dir, str(out), str(d / f"rejects-{shard.key}.jsonl"),
                       text_field="text", max_length=24, on_bad_record="skip", max_chars=1000,
                       **shard_settings(plan, shard.key))
        paths.append(str(out))
    return paths, lines


def _shard_rows(paths) -> dict[tuple[int, int], list[int]]:
    return {(r["doc_id"], r["window"]): r["input_ids"] for p in paths for r in _read_table(p)}


def test_sample_proxy(tok, tok_dir, shards, tmp_path):
    paths, lines = shards
    rows = _shard_rows(paths)
    windows_per_doc = {}
    for doc, _ in rows:
        windows_per_doc[doc] = windows_per_doc.get(doc, 0) + 1
    assert max(windows_per_doc.values()) > 1 and min(windows_per_doc.values()) == 1
    line_at = dict(zip(_offsets(lines), lines))  # one file: a doc id is its line's offset
    size = 25
    out = tmp_path / "samples.parquet"
    assert sample_proxy(paths, tok_dir, str(out), size=size, seed=7) == size
    table = pq.read_table(out)
    assert table.column_names == ["sample_id", "doc_id", "window", "input_ids", "text"]
    samples = table.to_pylist()
    assert [s["sample_id"] for s in samples] == list(range(size))
    keys = [(s["doc_id"], s["window"]) for s in samples]
    assert len(set(keys)) == size  # unique windows
    for s in samples:
        assert rows[(s["doc_id"], s["window"])] == s["input_ids"]  # a real window of the corpus
        assert len(s["input_ids"]) >= 2
        assert s["text"] == tok.decode(s["input_ids"], skip_special_tokens=True)
        if windows_per_doc[s["doc_id"]] == 1:  # the whole document: its text comes back exactly
            assert s["text"] == json.loads(line_at[s["doc_id"]])["text"]
    # seeded: the same seed gives the same file, another seed another draw
    again = tmp_path / "again.parquet"
    sample_proxy(paths, tok_dir, str(again), size=size, seed=7)
    assert pq.read_table(again).equals(table)
    other = tmp_path / "other.parquet"
    sample_proxy(paths, tok_dir, str(other), size=size, seed=8)
    assert [(s["doc_id"], s["window"]) for s in pq.read_table(other).to_pylist()] != keys


def test_sample_proxy_too_large(tok_dir, shards, tmp_path):
    paths, _ = shards
    total = len(_shard_rows(paths))
    out = tmp_path / "samples.parquet"
    assert sample_proxy(paths, tok_dir, str(out), size=total, seed=0) == total  # exactly all is fine
    with pytest.raises(ValueError, match=f"cannot draw {total + 1} .*only {total} windows"):
        sample_proxy(paths, tok_dir, str(tmp_path / "too_many.parquet"), size=total + 1, seed=0)
    assert not (tmp_path / "too_many.parquet").exists()


def _write_shard(path, rows) -> str:
    """A tokenized shard of `rows`, of one corpus file (every such shard the same file: local doc ids
    are the corpus's)."""
    schema = SHARD_SCHEMA.with_metadata(splits.files_metadata(["corpus.jsonl"]))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def test_draw_windows_skips_short_windows(tmp_path):
    """Windows of fewer than 2 tokens are never drawn; drawing all eligible windows gets each once."""
    rng = random.Random(4)
    shard_rows = []
    for s in range(3):
        rows = []
        for doc in range(s * 100, s * 100 + 12):
            for w in range(rng.randint(1, 3)):
                rows.append({"doc_id": doc, "window": w, "input_ids": list(range(rng.choice([0, 1, 2, 3, 7])))})
        shard_rows.append(rows)
    paths = [_write_shard(tmp_path / f"s{i}.parquet", rows) for i, rows in enumerate(shard_rows)]
    eligible = {(r["doc_id"], r["window"]): r["input_ids"] for rows in shard_rows for r in rows
                if len(r["input_ids"]) >= 2}
    drawn = sample.draw_windows(paths, len(eligible), seed=3).to_pylist()
    assert sorted((r["doc_id"], r["window"]) for r in drawn) == sorted(eligible)
    assert all(eligible[(r["doc_id"], r["window"])] == r["input_ids"] for r in drawn)
    with pytest.raises(ValueError, match="cannot draw"):
        sample.draw_windows(paths, len(eligible) + 1, seed=3)
    # with repeats: successive permutations of the eligible windows
    n = 2 * len(eligible) + 5
    drawn = [(r["doc_id"], r["window"]) for r in sample.draw_windows(paths, n, seed=3, allow_repeats=True).to_pylist()]
    assert len(drawn) == n
    assert sorted(drawn[:len(eligible)]) == sorted(eligible) == sorted(drawn[len(eligible):2 * len(eligible)])
    short = _write_shard(tmp_path / "short.parquet", [{"doc_id": 0, "window": 0, "input_ids": [5]}])
    with pytest.raises(ValueError, match="no window of at least 2 tokens"):
        sample.draw_windows([short], 1, seed=0)


# ---------------------------------------------------------------- prepare_target


def test_record_text():
    record = {"conversations": ["What is\na list?", "A list is\r\nan ordered\ncollection.", "Thanks"]}
    expected = "What is a list?\nA list is an ordered collection.\nThanks"
    assert target.record_text(record, "text") == expected
    assert target.record_text({"text": "plain\ntext"}, "text") == "plain\ntext"  # plain text is kept as is
    assert target.record_text({"body": "b"}, "body") == "b"
    for bad, message in [({"conversations": "not a list"}, "not a list of strings"),
                         ({"conversations": ["a", 3]}, "not a list of strings"),
                         ({"other": 1}, "neither"), ({"text": 5}, "neither"), ([1], "not a JSON object"),
                         ({"text": "  \n"}, "empty text"), ({"conversations": ["", " "]}, "empty text")]:
        with pytest.raises(ValueError, match=message):
            target.record_text(bad, "text")


def test_prepare_target(tok, tok_dir, tmp_path):
    records = [{"conversations": [f"Question {i}?\nPlease answer.", SENTENCES[i % len(SENTENCES)] * (1 + i % 3)]}
               for i in range(6)] + [{"text": "A plain text target record.\nWith two lines."}]
    source = write_jsonl(tmp_path / "lima.jsonl", records[:3] + [""] + records[3:])  # a blank line is skipped
    out = tmp_path / "tokens.parquet"
    max_length = 12
    assert prepare_target(str(source), tok_dir, str(out), text_field="text", max_length=max_length) == 7
    ids = pq.read_table(out)["input_ids"].to_pylist()
    texts = ["\n".join(t.replace("\n", " ") for t in r["conversations"]) if "conversations" in r else r["text"]
             for r in records]
    assert ids == [tokenize_windows(tok, [t], max_length)[0][0] for t in texts]
    assert all(len(x) <= max_length for x in ids)
    assert any(len(tokenize_windows(tok, [t], max_length)[0]) > 1 for t in texts)  # long ones are cut
    out2 = tmp_path / "tokens2.parquet"
    assert prepare_target(str(source), tok_dir, str(out2), text_field="text", max_length=max_length,
                          max_samples=2) == 2
    assert pq.read_table(out2)["input_ids"].to_pylist() == ids[:2]
    # JSON array and Parquet sources give the same texts
    as_json = tmp_path / "lima.json"
    as_json.write_text(json.dumps(records))
    as_parquet = tmp_path / "lima.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in texts]), as_parquet)
    assert target.target_texts(str(as_json)) == texts == target.target_texts(str(as_parquet))


def test_prepare_target_errors(tok_dir, tmp_path):
    out = tmp_path / "tokens.parquet"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty"):
        prepare_target(str(empty), tok_dir, str(out), text_field="text", max_length=16)
    bad_json = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, "", '{"conversations": ["a",'])
    with pytest.raises(ValueError, match=re.escape(f"{bad_json}:3") + ".*invalid JSON"):
        prepare_target(str(bad_json), tok_dir, str(out), text_field="text", max_length=16)
    bad_record = write_jsonl(tmp_path / "bad2.jsonl", [{"text": "ok"}, {"conversations": [1, 2]}])
    with pytest.raises(ValueError, match=re.escape(f"{bad_record}:2") + ".*not a list of strings"):
        prepare_target(str(bad_record), tok_dir, str(out), text_field="text", max_length=16)
    no_text = write_jsonl(tmp_path / "bad3.jsonl", [{"text": "ok"}, {"text": "fine"}, {"text": " "}])
    with pytest.raises(ValueError, match=re.escape(f"{no_text}:3") + ".*empty text"):
        prepare_target(str(no_text), tok_dir, str(out), text_field="text", max_length=16)
    assert not out.exists()
