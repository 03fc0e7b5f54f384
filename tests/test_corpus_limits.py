"""Corpus rough edges of issue 29: a compressed file named .jsonl is refused naming its
compression (not "invalid UTF-8 at byte 1"), and a line too long for any record within
corpus.max_chars is refused while it is read, in bounded memory (a small gzip can hold a line of
hundreds of MB)."""

from __future__ import annotations

import bz2
import gzip
import json
import tracemalloc

import pytest

from lqs import corpus


@pytest.mark.parametrize("compress, name", [(gzip.compress, "gzip"), (bz2.compress, "bzip2")])
def test_a_compressed_file_named_jsonl_is_refused_naming_the_compression(tmp_path, compress, name):
    path = tmp_path / "part.jsonl"
    path.write_bytes(compress(b'{"text": "hello"}\n'))
    plain = tmp_path / "other.jsonl"
    plain.write_text('{"text": "hello"}\n')
    records = list(corpus.iter_records([str(path), str(plain)]))
    assert [(r.line, r.error) for r in records[:1]] == [
        (None, f"{name}-compressed, but its name does not say so: give a gzip file a name ending in .gz; lqs reads "
               "no other compression")]
    with pytest.raises(ValueError, match=f"{path}: {name}-compressed"):  # under on_bad_record error
        corpus.check(records[0], "error")


def test_a_line_longer_than_any_record_within_max_chars_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "part.jsonl.gz"
    long_line = b'{"text": "' + b"a" * 50_000_000 + b'"}\n'
    path.write_bytes(gzip.compress(long_line + b'{"text": "after"}\n', compresslevel=1))
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        records = list(corpus.iter_records([str(path)], max_chars=1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    limit = corpus.max_line_bytes(1000)
    assert [(r.line, r.error) for r in records] == [
        (1, f"line longer than {limit} bytes: its text is over corpus.max_chars (1000) characters"), (2, None)]
    assert records[1].text == "after" and peak < 10 * limit < 50_000_000 / 4  # never the whole line


def test_a_line_at_the_bound_is_still_read(tmp_path):
    text = "\U0001f600" * 1000  # 12 bytes each, JSON-escaped: the longest a text within max_chars can take
    path = tmp_path / "part.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n")
    [record] = corpus.iter_records([str(path)], max_chars=1000)
    assert record.error is None and record.text == text


def test_max_windows_per_doc_tokenizes_only_what_the_kept_windows_need(tok_dir, monkeypatch):
    from helpers import GOOD

    from lqs import scorer
    from lqs.tokenize import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    long_text = " ".join(GOOD * 20_000)  # about 5 MB
    expected, _ = scorer.scoring_windows(tokenizer, [long_text[:100_000], "short"], 32)
    real, tokenized = scorer.tokenize_windows, []

    def recording(tokenizer, texts, max_length):
        tokenized.extend(len(t) for t in texts)
        return real(tokenizer, texts, max_length)

    monkeypatch.setattr(scorer, "tokenize_windows", recording)
    windows, truncated = scorer.scoring_windows(tokenizer, [long_text, "short"], 32, max_windows_per_doc=8)
    kept = [w for w in expected if w.doc == 0][:8] + [w for w in expected if w.doc == 1]
    assert [(w.doc, w.ids) for w in windows] == [(w.doc, w.ids) for w in kept]
    assert truncated == [True, False]
    assert max(tokenized) <= 2 * (8 * 32 + scorer.CUT_MARGIN) * scorer.CHARS_PER_TOKEN < len(long_text) / 1000
