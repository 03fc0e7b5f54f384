"""Bad input in the target set (docs/reliability.md#bad-records-and-rejects): a clear error naming
the file and line, or the record read as the corpus reader reads it, never a traceback."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lqs import target


def test_bom_and_huge_integers_are_read(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"conversations": ["Q?", "A."], "n": ' + b"9" * 5000 + b"}\n"
                     b'{"text": "plain text"}\n')
    assert target.target_texts(str(path)) == ["Q?\nA.", "plain text"]
    as_json = tmp_path / "t.json"
    as_json.write_bytes(b'\xef\xbb\xbf[{"text": "one"}, {"text": "two", "n": ' + b"1" * 5000 + b"}]")
    assert target.target_texts(str(as_json)) == ["one", "two"]


@pytest.mark.parametrize("content, message", [
    (b'{"text": "ok"}\n{"text": "a\\ud800b"}\n', r"t.jsonl:2: the text holds a lone UTF-16 surrogate \(\\ud800\)"),
    (b'{"text": "ok"}\n{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "t.jsonl:2: JSON nested too deeply"),
    (b'{"text": "ok"}\n{"text": "unterminated\n', "t.jsonl:2: invalid JSON"),
    (b'{"text": "ok"}\n{"text": "\xff"}\n', r"t.jsonl: invalid UTF-8 \(invalid start byte"),
], ids=["surrogate", "too-deep", "bad-json", "bad-utf8"])
def test_bad_target_records_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        target.target_texts(str(path))


def test_damaged_parquet_target_names_the_file(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), path)
    assert target.target_texts(str(path)) == ["a", "b"]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"{path}: not a readable Parquet file"):
        target.target_texts(str(path))
