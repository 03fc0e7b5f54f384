"""Tests for lqs.corpus: reading JSONL (plain, gzip) and Parquet records, doc ids, sharding,
and bad records with their reasons (docs/stages.md#tokenize_shard,
docs/reliability.md#bad-records-and-rejects)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lqs import corpus
from lqs.corpus import FILE_BITS, BadRecordError


def _docs(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "text": f"{prefix} document {i}.", "n": i} for i in range(n)]


def _lines(records: list[dict]) -> list[str]:
    return [json.dumps(r) for r in records]


def _write_text(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wb") as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def _write_parquet(path: Path, records: list[dict], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


# ---------------------------------------------------------------- reading good records


def test_jsonl_plain_gzip_parquet_in_input_order(tmp_path):
    a, b, c = _docs("a", 4), _docs("b", 5), _docs("c", 6)
    paths = [_write_text(tmp_path / "a.jsonl", _lines(a)),
             _write_gz(tmp_path / "b.jsonl.gz", _lines(b)),
             _write_parquet(tmp_path / "c.parquet", c, row_group_size=2)]  # several row groups
    records = list(corpus.iter_records(paths))
    expected = [(str(paths[0]), i + 1, r) for i, r in enumerate(a)] + \
               [(str(paths[1]), i + 1, r) for i, r in enumerate(b)] + \
               [(str(paths[2]), i + 1, r) for i, r in enumerate(c)]
    assert len(records) == len(expected)
    for doc_id, (record, (path, line, fields)) in enumerate(zip(records, expected)):
        assert record.error is None
        assert record.doc_id == doc_id
        assert (record.path, record.line) == (path, line)
        assert record.where == f"{path}:{line}"
        assert record.fields == fields
        assert record.text == fields["text"]
        assert corpus.check(record, "error") is True
    # JSONL lines are kept as read (without the newline); Parquet rows have none
    assert [r.raw for r in records[:4]] == _lines(a)
    assert [r.raw for r in records[4:9]] == _lines(b)
    assert all(r.raw is None for r in records[9:])


def test_raw_line_is_kept_byte_for_byte(tmp_path):
    lines = ['{"text":"x",  "w": 1.50, "u": "caf\\u00e9", "v": "é"}', '{ "text" : "y" , "k" : [1,2.0] }']
    path = tmp_path / "c.jsonl"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))  # CRLF line ends
    records = list(corpus.iter_records([path]))
    assert [r.raw for r in records] == lines
    assert [r.eol for r in records] == ["\r\n", "\r\n"]  # the line end, kept apart for the output
    assert [r.fields for r in records] == [json.loads(line) for line in lines]


def test_custom_text_field(tmp_path):
    path = _write_text(tmp_path / "c.jsonl", _lines([{"content": "hello", "text": 3}]))
    [record] = corpus.iter_records([path], text_field="content")
    assert record.error is None and record.text == "hello"


def test_blank_lines_are_not_records(tmp_path):
    docs = _docs("d", 3)
    lines = ["", _lines(docs)[0], "   ", "\t", _lines(docs)[1], "", _lines(docs)[2], ""]
    path = _write_text(tmp_path / "c.jsonl", lines)
    records = list(corpus.iter_records([path]))
    assert [r.doc_id for r in records] == [0, 1, 2]
    assert [r.line for r in records] == [i + 1 for i, line in enumerate(lines) if line.strip()]
    assert [r.fields for r in records] == docs
    assert all(r.error is None for r in records)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(corpus.iter_records([tmp_path / "nope.jsonl"]))


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_modulo_shards_partition_the_corpus(tmp_path, num_shards):
    paths = [_write_text(tmp_path / "a.jsonl", _lines(_docs("a", 7))),
             _write_gz(tmp_path / "b.jsonl.gz", _lines(_docs("b", 4))),
             _write_parquet(tmp_path / "c.parquet", _docs("c", 6))]
    everything = [(r.doc_id, r.where, r.text) for r in corpus.iter_records(paths)]
    assert [d for d, _, _ in everything] == list(range(17))
    seen = []
    for shard in range(num_shards):
        part = [(r.doc_id, r.where, r.text) for r in corpus.iter_records(paths, shard=shard, num_shards=num_shards)]
        assert part == [x for x in everything if x[0] % num_shards == shard]  # input order kept
        assert all(corpus.shard_of(d, num_shards) == shard for d, _, _ in part)
        seen.extend(part)
    assert sorted(seen) == sorted(everything)  # union is everything
    assert len(seen) == len(set(seen))  # and shards are disjoint


def test_modulo_shards_count_bad_records_too(tmp_path):
    lines = _lines(_docs("a", 2)) + ["not json"] + _lines(_docs("b", 3))
    path = _write_text(tmp_path / "c.jsonl", lines)
    shard1 = list(corpus.iter_records([path], shard=1, num_shards=2))
    assert [r.doc_id for r in shard1] == [1, 3, 5]
    assert [r.line for r in shard1] == [2, 4, 6]
    assert [r.error is None for r in shard1] == [True, True, True]
    shard0 = list(corpus.iter_records([path], shard=0, num_shards=2))
    assert [r.doc_id for r in shard0] == [0, 2, 4]
    assert shard0[1].error is not None and "invalid JSON" in shard0[1].error


def test_per_file_shards(tmp_path):
    sizes = [3, 5, 2]
    paths = [_write_text(tmp_path / "a.jsonl", _lines(_docs("a", sizes[0]))),
             _write_gz(tmp_path / "b.jsonl.gz", _lines(_docs("b", sizes[1]))),
             _write_parquet(tmp_path / "c.parquet", _docs("c", sizes[2]))]
    everything = list(corpus.iter_records(paths, num_shards="per_file"))
    expected_ids = [(f << FILE_BITS) | i for f, n in enumerate(sizes) for i in range(n)]
    assert [r.doc_id for r in everything] == expected_ids
    assert all(a < b for a, b in zip(expected_ids, expected_ids[1:]))  # increasing in input order
    for f, path in enumerate(paths):
        alone = list(corpus.iter_records([path], shard=f, num_shards="per_file"))
        assert [(r.doc_id, r.where, r.text) for r in alone] == \
               [(r.doc_id, r.where, r.text) for r in everything if r.path == str(path)]
        assert all(corpus.shard_of(r.doc_id, "per_file") == f for r in alone)
    with pytest.raises(ValueError, match="per_file"):
        list(corpus.iter_records(paths, shard=1, num_shards="per_file"))


# ---------------------------------------------------------------- bad records


def _reasons(records):
    return [(r.line, r.error) for r in records]


BAD_CASES = [
    # (line as written, expected fragment of the reason)
    ('{"text": "unterminated', "invalid JSON"),
    ("[1, 2, 3]", "not a JSON object"),
    ('"just a string"', "not a JSON object"),
    ('{"body": "no text field"}', "missing text field 'text'"),
    ('{"text": 42}', "is not a string"),
    ('{"text": null}', "is not a string"),
    ('{"text": ["a", "b"]}', "is not a string"),
    ('{"text": ""}', "empty text"),
    ('{"text": " \\n\\t  "}', "empty text"),
    ('{"text": "deep", "a": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
]


@pytest.mark.parametrize("line, reason", BAD_CASES)
def test_bad_jsonl_record_reason(tmp_path, line, reason):
    good = _lines(_docs("g", 2))
    path = _write_text(tmp_path / "c.jsonl", [good[0], line, good[1]])
    records = list(corpus.iter_records([path]))
    assert [r.doc_id for r in records] == [0, 1, 2]
    assert [r.error is None for r in records] == [True, False, True]
    bad = records[1]
    assert reason in bad.error
    assert bad.text is None
    assert bad.raw == line
    assert bad.line == 2 and bad.where == f"{path}:2"
    entry = bad.reject_entry()
    assert entry == {"doc_id": 1, "file": str(path), "line": 2, "reason": bad.error, "record": line}
    with pytest.raises(BadRecordError) as info:
        corpus.check(bad, "error")
    assert f"{path}:2" in str(info.value) and reason in str(info.value)
    assert corpus.check(bad, "skip") is False
    assert corpus.check(records[0], "skip") is True and corpus.check(records[2], "error") is True


def test_invalid_utf8(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 au lait"}\n{"text": "also fine"}\n')
    records = list(corpus.iter_records([path]))
    assert [r.error is None for r in records] == [True, False, True]
    assert "invalid UTF-8" in records[1].error
    assert records[1].line == 2 and records[1].text is None
    json.dumps(records[1].reject_entry(), ensure_ascii=False)  # the reject entry is serialisable
    with pytest.raises(BadRecordError, match=f"{path}:2.*invalid UTF-8"):
        corpus.check(records[1], "error")


def test_max_chars(tmp_path):
    path = _write_text(tmp_path / "c.jsonl", _lines([{"text": "a" * 100}, {"text": "b" * 101}]))
    ok, long = corpus.iter_records([path], max_chars=100)
    assert ok.error is None and ok.text == "a" * 100
    assert long.error is not None and "max_chars" in long.error and "101 > 100" in long.error
    with pytest.raises(BadRecordError, match=f"{path}:2"):
        corpus.check(long, "error")


def test_bad_parquet_rows(tmp_path):
    rows = [{"text": "fine", "k": 1}, {"text": None, "k": 2}, {"text": "  ", "k": 3}, {"text": "x" * 50, "k": 4},
            {"text": "ok", "k": 5}]
    path = _write_parquet(tmp_path / "c.parquet", rows, row_group_size=2)
    records = list(corpus.iter_records([path], max_chars=20))
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert records[0].error is None and records[4].error is None
    assert "not a string" in records[1].error
    assert "empty text" in records[2].error
    assert "max_chars" in records[3].error
    assert records[2].reject_entry()["record"] == rows[2]  # no raw line: the parsed row
    with pytest.raises(BadRecordError, match=f"{path}:4"):
        corpus.check(records[3], "error")
    missing = _write_parquet(tmp_path / "m.parquet", [{"body": "x"}])
    [record] = corpus.iter_records([missing])
    assert "missing text field" in record.error


@pytest.mark.parametrize("keep", [0.5, 0.97, 0.05])
def test_truncated_gzip(tmp_path, keep):
    lines = _lines([{"text": f"document number {i} " * 5, "i": i} for i in range(200)])
    data = gzip.compress("".join(line + "\n" for line in lines).encode("utf-8"))
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[:int(len(data) * keep)])
    records = list(corpus.iter_records([path]))
    *good, last = records
    assert len(good) < len(lines)
    # every record before the cut is complete and exactly the original line
    assert [r.raw for r in good] == lines[:len(good)]
    assert all(r.error is None for r in good)
    assert last.error is not None and "truncated" in last.error
    assert last.line == len(good) + 1 and last.doc_id == len(good)
    with pytest.raises(BadRecordError, match=f"{path}:{len(good) + 1}"):
        corpus.check(last, "error")
    assert corpus.check(last, "skip") is False


def test_not_a_gzip_file(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(b'{"text": "plain text, not gzip"}\n')
    [record] = corpus.iter_records([path])
    assert record.error is not None and "gzip" in record.error
