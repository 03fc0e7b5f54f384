"""Tests for lqs.corpus: reading JSONL (plain, gzip) and Parquet records, doc ids, reading splits,
and bad records with their reasons (docs/stages.md#tokenize_shard,
docs/reliability.md#bad-records-and-rejects)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lqs import corpus, splits
from lqs.corpus import BadRecordError
from lqs.splits import FILE_BITS


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


def _offsets(lines: list[str], eol: str = "\n") -> list[int]:
    """The byte offset each line starts at, in a file of `lines` each ended by `eol`: a JSONL
    record's position, its doc id in the first file read (lqs.splits)."""
    starts, at = [], 0
    for line in lines:
        starts.append(at)
        at += len((line + eol).encode("utf-8"))
    return starts


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
    # doc id: the file's index, then the line's byte offset (in the decompressed stream of a .gz) or the row
    doc_ids = [position for position in _offsets(_lines(a))] + \
              [1 << FILE_BITS | position for position in _offsets(_lines(b))] + \
              [2 << FILE_BITS | row for row in range(len(c))]
    assert all(x < y for x, y in zip(doc_ids, doc_ids[1:]))  # increasing in input order
    assert len(records) == len(expected)
    for doc_id, record, (path, line, fields) in zip(doc_ids, records, expected):
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
    assert [r.doc_id for r in records] == [at for at, line in zip(_offsets(lines), lines) if line.strip()]
    assert [r.line for r in records] == [i + 1 for i, line in enumerate(lines) if line.strip()]
    assert [r.fields for r in records] == docs
    assert all(r.error is None for r in records)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(corpus.iter_records([tmp_path / "nope.jsonl"]))


# ---------------------------------------------------------------- shards (lqs.splits)
# (every record read once whatever the cuts: tests/test_splits.py)


@pytest.mark.parametrize("num_shards", [2, 3, 5])
def test_shards_are_contiguous_runs_of_one_pass(tmp_path, num_shards):
    paths = [_write_text(tmp_path / "a.jsonl", _lines(_docs("a", 7))),
             _write_gz(tmp_path / "b.jsonl.gz", _lines(_docs("b", 4))),
             _write_parquet(tmp_path / "c.parquet", _docs("c", 6), row_group_size=2)]
    everything = [(r.path, r.line, r.text) for r in corpus.iter_records(paths)]
    assert len(everything) == 17
    shards = splits.plan_shards([str(p) for p in paths], [p.stat().st_size for p in paths], num_shards)
    assert [s.key for s in shards] == [str(k) for k in range(len(shards))]
    parts = [[(r.path, r.line, r.text) for r in corpus.iter_records(s.splits, require_records=False)]
             for s in shards]
    assert all(parts)  # no shard planned empty
    assert [x for part in parts for x in part] == everything  # shard after shard: the corpus in input order


def test_a_split_reads_bad_records_with_their_file_lines(tmp_path):
    lines = _lines(_docs("a", 2)) + ["not json"] + _lines(_docs("b", 3))
    path = _write_text(tmp_path / "c.jsonl", lines)
    offsets = _offsets(lines)
    cut = offsets[2] + 1  # inside the bad line: it belongs to the first split, which reads it to its end
    first = list(corpus.iter_records([splits.Split(str(path), 0, cut)], require_records=False))
    second = list(corpus.iter_records([splits.Split(str(path), cut)], require_records=False))
    assert [r.doc_id for r in first] == offsets[:3] and [r.doc_id for r in second] == offsets[3:]
    assert [r.line for r in first + second] == [1, 2, 3, 4, 5, 6]  # the file's lines, not the split's
    assert [r.error is None for r in first + second] == [True, True, False, True, True, True]
    assert "invalid JSON" in first[2].error and first[2].where == f"{path}:3"


def test_per_file_doc_ids_do_not_depend_on_other_files(tmp_path):
    sizes = [3, 5, 2]
    paths = [_write_text(tmp_path / "a.jsonl", _lines(_docs("a", sizes[0]))),
             _write_gz(tmp_path / "b.jsonl.gz", _lines(_docs("b", sizes[1]))),
             _write_parquet(tmp_path / "c.parquet", _docs("c", sizes[2]))]
    everything = list(corpus.iter_records(paths))
    for f, path in enumerate(paths):
        alone = list(corpus.iter_records([path]))  # a per_file shard: its file the first read
        mine = [r for r in everything if r.path == str(path)]
        assert [(r.where, r.text) for r in alone] == [(r.where, r.text) for r in mine]
        assert [r.doc_id for r in mine] == [f << FILE_BITS | r.doc_id for r in alone]


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
    offsets = _offsets([good[0], line, good[1]])
    assert [r.doc_id for r in records] == offsets
    assert [r.error is None for r in records] == [True, False, True]
    bad = records[1]
    assert reason in bad.error
    assert bad.text is None
    assert bad.raw == line
    assert bad.line == 2 and bad.where == f"{path}:2"
    entry = bad.reject_entry()
    assert entry == {"doc_id": offsets[1], "file": str(path), "line": 2, "reason": bad.error, "record": line}
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
    # its doc id: the decompressed offset where the stream broke off, past every good record's line
    assert last.line == len(good) + 1 and last.doc_id == sum(len(line) + 1 for line in lines[:len(good)])
    with pytest.raises(BadRecordError, match=f"{path}:{len(good) + 1}"):
        corpus.check(last, "error")
    assert corpus.check(last, "skip") is False


def test_not_a_gzip_file(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(b'{"text": "plain text, not gzip"}\n')
    [record] = corpus.iter_records([path])
    assert record.error is not None and "gzip" in record.error
