"""Bad input on the data path (issue 12): every case is a clear error naming the file and line,
a rejects entry with its reason, or (for valid input that used to break) accepted and written
back exactly. Unit tests on the stage functions: tokenize_shard with a real tokenizer, then
gather_scores on scores made up for the accepted documents (no model needed)."""

from __future__ import annotations

import base64
import datetime
import decimal
import gzip
import json
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import corpus_settings, settings_json, shard_settings, stage_function, write_jsonl, write_plan

from lqs import cli, corpus, io, labels, sample, splits
from lqs.batch_scoring import SCORES_SCHEMA
from lqs.corpus import BadRecordError
from lqs.splits import FILE_BITS
from lqs.stages import gather_scores as gather_scores_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage
from lqs.tokenize import load_tokenizer

gather_scores = stage_function(gather_scores_stage)
tokenize_shard = stage_function(tokenize_shard_stage)

MODES = ["error", "skip"]
BOM = b"\xef\xbb\xbf"


def _score(ordinal: int) -> float:
    return ordinal / 8 - 0.5  # exact in binary: its JSON text is predictable


def _run(tmp_path: Path, paths: list, tok_dir: str, on_bad_record: str = "skip", num_shards=1):
    """tokenize_shard for every planned shard, made-up scores for the accepted documents (the i-th
    record of the corpus, counting the rejected ones, scores _score(i)), gather_scores.
    Returns (summary, scored.jsonl bytes, rejects entries, per-shard tokenize counts)."""
    paths = [str(p) for p in paths]
    plan_path, plan = write_plan(tmp_path, paths, num_shards)
    ordinal = {r.doc_id: i for i, r in enumerate(r for r in corpus.iter_records(paths) if r.doc_id is not None)}
    score_paths, reject_paths, counts = [], [], []
    for shard in (s.key for s in plan.shards):
        windows, rejects = tmp_path / f"tok-{shard}.parquet", tmp_path / f"rejects-{shard}.jsonl"
        counts.append(tokenize_shard(plan_path, shard, tok_dir, str(windows), str(rejects),
                                     text_field="text", max_length=16, on_bad_record=on_bad_record,
                                     max_chars=10**6, **shard_settings(plan, shard)))
        # one row per window: each document's id (the shard's) and record fingerprint, in input order
        documents = dict(zip(*pq.read_table(windows, columns=["doc_id", "fingerprint"]).to_pydict().values()))
        ids = sorted(documents)
        corpus_ids = splits.corpus_doc_ids(ids, splits.corpus_file_indices(
            [s.files for s in plan.shards])[[s.key for s in plan.shards].index(shard)])
        scores = tmp_path / f"scores-{shard}.parquet"
        pq.write_table(pa.table({"doc_id": pa.array(ids, pa.int64()),
                                 "score": [_score(ordinal[int(i)]) for i in corpus_ids],
                                 "truncated": [False] * len(ids), "n_tokens": [8] * len(ids),
                                 "n_windows": [1] * len(ids),
                                 "fingerprint": pa.array([documents[i] for i in ids], pa.int64()),
                                 "source": pa.array([None] * len(ids), pa.string())}), scores)
        score_paths.append(str(scores))
        reject_paths.append(str(rejects))
    out, rejects_out, summary_out = (tmp_path / n for n in ("scored.jsonl", "rejects.jsonl", "summary.json"))
    index = tmp_path / "index.parquet"
    summary = gather_scores(plan_path, score_paths, reject_paths, str(out), str(rejects_out), str(summary_out),
                            str(index), **corpus_settings(plan), on_bad_record=on_bad_record, text_field="text",
                            max_chars=10**6, score_field="score")
    rejects = [_strict(line) for line in rejects_out.read_bytes().decode("utf-8").splitlines()]
    # the index: the output's documents in its order, their corpus ids and scores (none rejected)
    table = pq.read_table(index)
    written = [corpus.loads(line, strict=True) for line in out.read_bytes().decode("utf-8").split("\n") if line]
    assert table["score"].to_pylist() == [r["score"] for r in written]
    assert set(table["doc_id"].to_pylist()).isdisjoint(r["doc_id"] for r in rejects)
    assert table["doc_id"].to_pylist() == sorted(table["doc_id"].to_pylist())
    return summary, out.read_bytes(), rejects, counts


def _no_constant(name):
    raise AssertionError(f"not strict JSON: {name}")


def _strict(line: str):
    """json.loads that refuses NaN and Infinity (Python's json accepts them by default)."""
    return json.loads(line, parse_constant=_no_constant)


def _with_score(line: bytes, doc_id: int, eol: bytes = b"\n") -> bytes:
    """An input line (without its end) with the score member inserted before its last `}`."""
    end = line.rindex(b"}")
    return line[:end] + f', "score": {_score(doc_id)!r}'.encode() + line[end:] + eol


GOOD = [json.dumps({"text": f"Document number {i} reads well.", "i": i}) for i in range(3)]


# ---------------------------------------------------------------- integers over 4,300 digits


@pytest.mark.parametrize("mode", MODES)
def test_huge_integer_is_valid_json_and_kept_exactly(tmp_path, tok_dir, mode):
    digits = "9" * 5000
    huge = '{"text": "A record with a huge integer.", "n": ' + digits + ', "m": -1' + "0" * 4400 + "}"
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD[0], huge, GOOD[1]])
    record = list(corpus.iter_records([path]))[1]
    assert record.error is None and record.raw == huge
    assert record.fields["n"] == decimal.Decimal(digits) and str(record.fields["n"]) == digits
    summary, out, rejects, counts = _run(tmp_path, [path], tok_dir, mode)
    assert counts[0]["documents"] == 3 and rejects == []
    assert out.splitlines(keepends=True)[1] == _with_score(huge.encode(), 1)


# ---------------------------------------------------------------- lone surrogates


def test_lone_surrogate_in_text_is_a_bad_record(tmp_path):
    lines = [GOOD[0], '{"text": "bad \\ud800 here"}', '{"text": "ok \\udfff"}', GOOD[1]]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    records = list(corpus.iter_records([path]))
    assert [r.error is None for r in records] == [True, False, False, True]
    assert "lone UTF-16 surrogate (\\ud800 at character 4)" in records[1].error
    assert "lone UTF-16 surrogate (\\udfff at character 3)" in records[2].error
    with pytest.raises(BadRecordError, match=f"{path}:2: text field 'text' holds a lone UTF-16 surrogate"):
        corpus.check(records[1], "error")


@pytest.mark.parametrize("mode", MODES)
def test_lone_surrogate_through_tokenize_and_gather(tmp_path, tok_dir, mode):
    bad = '{"text": "bad \\ud800 here", "note": "caf\u00e9"}'
    elsewhere = '{"text": "A fine text.", "title": "\\udc00"}'  # not the text: rejected too (tests/test_records.py)
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD[0], bad, elsewhere])
    if mode == "error":
        with pytest.raises(BadRecordError, match=f"{path}:2: .*lone UTF-16 surrogate"):
            _run(tmp_path, [path], tok_dir, mode)
        return
    summary, out, rejects, counts = _run(tmp_path, [path], tok_dir, mode)
    assert (counts[0]["documents"], counts[0]["rejected"]) == (1, 2)
    entry, _ = rejects
    offset = len(GOOD[0]) + 1  # the corpus's doc id: the line's byte offset
    assert entry["record"] == bad and (entry["file"], entry["line"], entry["doc_id"]) == (str(path), 2, offset)
    assert "lone UTF-16 surrogate" in entry["reason"]
    assert out == _with_score(GOOD[0].encode(), 0)
    assert (summary["documents_read"], summary["documents_scored"], summary["documents_rejected"]) == (3, 1, 2)


# ---------------------------------------------------------------- Parquet values as JSON

NAN, INF = float("nan"), float("inf")
TS = datetime.datetime(2024, 1, 2, 3, 4, 5, 123456)
UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _typed_table(texts: list[str]) -> tuple[pa.Table, list[dict]]:
    """One row per text, a column of every Arrow type class, and the JSON each row must become
    (written out by hand from PARQUET_TO_JSON, not computed)."""
    n = len(texts)
    columns = {
        "text": pa.array(texts),
        "f": pa.array([NAN, INF, -INF, 1.5][:n]),
        "f32": pa.array([0.5] * n, pa.float32()),
        "i": pa.array([2**62, -1, 0, 7][:n], pa.int64()),
        "ok": pa.array([True, False, None, True][:n]),
        "dec": pa.array([decimal.Decimal("1.50"), decimal.Decimal("-0.01"), None, decimal.Decimal("12345678.90")][:n],
                        pa.decimal128(10, 2)),
        "big": pa.array([decimal.Decimal("9" * 40)] * n, pa.decimal256(40, 0)),
        "bin": pa.array([b"\xff\x00hi", b"", None, b"text"][:n]),
        "ts": pa.array([TS] * n, pa.timestamp("us")),
        "ts_ns_utc": pa.array([1704164645123456789] * n, pa.timestamp("ns", tz="UTC")),
        "ts_paris": pa.array([datetime.datetime(2024, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)] * n,
                             pa.timestamp("s", tz="Europe/Paris")),
        "day": pa.array([datetime.date(2024, 1, 2)] * n),
        "clock": pa.array([datetime.time(3, 4, 5, 6)] * n),
        "dur": pa.array([datetime.timedelta(seconds=-1.5)] * n),
        "dur_ns": pa.array([1500] * n, pa.duration("ns")),
        "dur_long": pa.array([datetime.timedelta(days=1, seconds=1)] * n),
        "lst": pa.array([[1.0, NAN, None]] * n, pa.list_(pa.float64())),
        "st": pa.array([{"x": INF, "y": "é", "z": b"\x01"}] * n),
        "m": pa.array([[("a", 1), ("a", 2)]] * n, pa.map_(pa.string(), pa.int64())),
        "u": pa.array([UUID.bytes] * n, pa.uuid()),
        "cat": pa.array(["x"] * n).dictionary_encode(),
    }
    constant = {
        "f32": 0.5, "big": "9" * 40, "ts": "2024-01-02T03:04:05.123456",
        "ts_ns_utc": "2024-01-02T03:04:05.123456789+00:00", "ts_paris": "2024-06-01T14:00:00+02:00",
        "day": "2024-01-02", "clock": "03:04:05.000006", "dur": "-PT1.5S", "dur_ns": "PT0.0000015S",
        "dur_long": "PT86401S", "lst": [1.0, None, None], "st": {"x": None, "y": "é", "z": "AQ=="},
        "m": [["a", 1], ["a", 2]], "u": "12345678-1234-5678-1234-567812345678", "cat": "x",
    }
    varying = [
        {"f": None, "i": 2**62, "ok": True, "dec": "1.50", "bin": base64.b64encode(b"\xff\x00hi").decode()},
        {"f": None, "i": -1, "ok": False, "dec": "-0.01", "bin": ""},
        {"f": None, "i": 0, "ok": None, "dec": None, "bin": None},
        {"f": 1.5, "i": 7, "ok": True, "dec": "12345678.90", "bin": "dGV4dA=="},
    ]
    expected = [{"text": t, **constant, **varying[k]} for k, t in enumerate(texts)]
    return pa.table(columns), expected


def test_parquet_values_map_to_strict_json(tmp_path, tok_dir):
    texts = ["First document text.", "Second one.", "Third one here.", "And a fourth."]
    table, expected = _typed_table(texts)
    path = tmp_path / "c.parquet"
    pq.write_table(table, path)
    for record, want in zip(corpus.iter_records([path]), expected, strict=True):
        assert record.error is None
        assert _strict(corpus.json_line(record.fields)) == want
    summary, out, rejects, _ = _run(tmp_path, [path], tok_dir)
    got = [_strict(line) for line in out.decode("utf-8").splitlines()]
    assert got == [{**want, "score": _score(i)} for i, want in enumerate(expected)]
    assert [list(g) for g in got] == [[*table.column_names, "score"]] * 4  # column order kept


@pytest.mark.parametrize("mode", MODES)
def test_rejected_parquet_row_with_typed_columns(tmp_path, tok_dir, mode):
    table, expected = _typed_table(["Good text.", "   ", "More good text."])
    path = tmp_path / "c.parquet"
    pq.write_table(table, path)
    if mode == "error":
        with pytest.raises(BadRecordError, match=f"{path}:2: empty text"):
            _run(tmp_path, [path], tok_dir, mode)
        return
    summary, out, rejects, _ = _run(tmp_path, [path], tok_dir, mode)
    assert rejects == [{"doc_id": 1, "file": str(path), "line": 2, "reason": "empty text", "record": expected[1]}]
    assert [_strict(line) for line in out.decode().splitlines()] == \
        [{**expected[0], "score": _score(0)}, {**expected[2], "score": _score(2)}]


@pytest.mark.parametrize("mode", MODES)
def test_parquet_string_that_is_not_utf8_is_a_bad_record(tmp_path, tok_dir, mode):
    texts = pa.array([b"Good text.", b"bad \xff text", b"More good text."], pa.binary()).view(pa.string())
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": texts, "n": [1, 2, 3]}), path, row_group_size=2)
    records = list(corpus.iter_records([path]))
    assert [r.error for r in records] == [None, "invalid UTF-8 in column 'text' (invalid start byte at byte 4)", None]
    assert [r.fields for r in records] == [{"text": "Good text.", "n": 1}, None, {"text": "More good text.", "n": 3}]
    if mode == "error":
        with pytest.raises(BadRecordError, match=f"{path}:2: invalid UTF-8"):
            _run(tmp_path, [path], tok_dir, mode)
        return
    summary, out, rejects, _ = _run(tmp_path, [path], tok_dir, mode)
    assert [(r["line"], r["record"]) for r in rejects] == [(2, None)]
    assert summary["documents_scored"] == 2


# ---------------------------------------------------------------- a byte order mark


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_bom_at_the_start_is_dropped(tmp_path, tok_dir, mode, gz):
    data = BOM + (GOOD[0] + "\r\n" + GOOD[1] + "\n").encode()
    path = tmp_path / ("c.jsonl.gz" if gz else "c.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    first, second = corpus.iter_records([path])
    assert (first.error, first.raw, first.line, first.eol) == (None, GOOD[0], 1, "\r\n")
    summary, out, rejects, counts = _run(tmp_path, [path], tok_dir, mode)
    assert rejects == [] and counts[0]["documents"] == 2
    assert out == _with_score(GOOD[0].encode(), 0, b"\r\n") + _with_score(GOOD[1].encode(), 1)


def test_bom_later_in_a_file_is_not_dropped(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes((GOOD[0] + "\n").encode() + BOM + (GOOD[1] + "\n").encode())
    assert [r.error is None for r in corpus.iter_records([path])] == [True, False]


# ---------------------------------------------------------------- empty files


def _empty_files(tmp_path: Path) -> list[Path]:
    empty, blank, gz, parquet = (tmp_path / n for n in ("empty.jsonl", "blank.jsonl", "e.jsonl.gz", "e.parquet"))
    empty.write_bytes(b"")
    blank.write_bytes(BOM + b"\n  \r\n\t\n")
    gz.write_bytes(gzip.compress(b""))
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), parquet)
    return [empty, blank, gz, parquet]


@pytest.mark.parametrize("mode", MODES)
def test_empty_files_contribute_no_documents(tmp_path, tok_dir, mode, caplog):
    empties = _empty_files(tmp_path)
    a, b = write_jsonl(tmp_path / "a.jsonl", GOOD[:2]), write_jsonl(tmp_path / "b.jsonl", GOOD[2:])
    paths = [a, empties[0], empties[1], b, empties[2], empties[3]]
    with caplog.at_level(logging.WARNING, logger="lqs.corpus"):
        records = list(corpus.iter_records(paths))
    # doc ids: the file's index among those read (empty ones too), then the line's byte offset
    assert [(r.path, r.doc_id, r.error) for r in records] == \
        [(str(a), 0, None), (str(a), len(GOOD[0]) + 1, None), (str(b), 3 << FILE_BITS, None)]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"{p}: empty corpus file (no records); it contributes no documents" for p in empties]
    summary, out, rejects, counts = _run(tmp_path, paths, tok_dir, mode, num_shards=2)
    assert rejects == [] and sum(c["documents"] for c in counts) == 3
    assert (summary["documents_read"], summary["documents_scored"]) == (3, 3)
    assert summary["empty_files"] == [str(p) for p in empties]
    assert out == b"".join(_with_score(line.encode(), i) for i, line in enumerate(GOOD))


def test_empty_files_per_file_shards(tmp_path, tok_dir):
    empty = _empty_files(tmp_path)[0]
    a = write_jsonl(tmp_path / "a.jsonl", GOOD)
    assert list(corpus.iter_records([empty], require_records=False)) == []  # one shard of several
    summary, out, rejects, counts = _run(tmp_path, [empty, a], tok_dir, "error", num_shards="per_file")
    assert counts[0]["documents"] == 0 and summary["empty_files"] == [str(empty)]
    assert summary["documents_read"] == 3


@pytest.mark.parametrize("mode", MODES)
def test_a_corpus_of_empty_files_fails(tmp_path, tok_dir, mode):
    empties = _empty_files(tmp_path)
    message = re.escape("every corpus file is empty (no records): " + ", ".join(str(p) for p in empties))
    with pytest.raises(ValueError, match=message):
        list(corpus.iter_records(empties))
    # a shard cannot know that the others are empty too: its job writes no windows, and gather_scores,
    # which reads the whole corpus, says so
    plan_path, plan = write_plan(tmp_path / "plan", empties, 2)
    work = tmp_path / "shards"
    work.mkdir()
    score_paths, reject_paths = [], []
    for key in (s.key for s in plan.shards):
        counts = tokenize_shard(plan_path, key, tok_dir, str(work / f"t-{key}.parquet"), str(work / f"r-{key}.jsonl"),
                                text_field="text", max_length=16, on_bad_record=mode, max_chars=100,
                                **shard_settings(plan, key))
        assert counts["documents"] == counts["rejected"] == 0
        pq.write_table(SCORES_SCHEMA.empty_table(), work / f"s-{key}.parquet")  # score_shard's, of no document
        score_paths.append(str(work / f"s-{key}.parquet"))
        reject_paths.append(str(work / f"r-{key}.jsonl"))
    with pytest.raises(ValueError, match=message):
        gather_scores(plan_path, score_paths, reject_paths, str(tmp_path / "o.jsonl"), str(tmp_path / "r.jsonl"),
                      str(tmp_path / "s.json"), str(tmp_path / "i.parquet"), **corpus_settings(plan),
                      text_field="text", max_chars=100, score_field="score", on_bad_record=mode)
    assert not list(tmp_path.glob("[osri].*")) and not list(tmp_path.glob(".*.tmp"))  # nothing written


# ---------------------------------------------------------------- JSONL lines byte for byte


def test_jsonl_lines_are_copied_byte_for_byte(tmp_path, tok_dir):
    lines = [
        (b'{"text": "CRLF line."}', b"\r\n"),
        (b'{"text": "trailing blanks."}  \t', b"\n"),
        (b'{ "text" : "space before the brace" , "n" : 1.50 }', b"\r\n"),
        (b'  {"text":"leading blanks","u":"caf\\u00e9","v":"\xc3\xa9"}', b"\n"),
        (b'{"text": "a } inside", "k": {"nested": [1, {"x": "}"}]}}', b"\n"),
        (b'{"text": "a stray CR before the end"}\r', b"\r\n"),
        (b'{"text": "last line, no newline"}', b""),
    ]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(line + eol for line, eol in lines))
    summary, out, rejects, _ = _run(tmp_path, [path], tok_dir, "error", num_shards=3)
    assert out == b"".join(_with_score(line, i, eol or b"\n") for i, (line, eol) in enumerate(lines))
    for line in out.decode("utf-8").split("\n")[:-1]:  # not splitlines: a stray CR is no line end
        assert list(_strict(line))[-1] == "score"


# ---------------------------------------------------------------- damaged intermediate files


def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def test_truncated_intermediate_parquet_names_the_file(tmp_path, tok_dir, caplog):
    path = write_jsonl(tmp_path / "c.jsonl", GOOD)
    _run(tmp_path, [path], tok_dir)
    plan_path, plan = write_plan(tmp_path, [path])
    shard, scores = _truncated(tmp_path / "tok-0.parquet"), _truncated(tmp_path / "scores-0.parquet")
    stats = tmp_path / "stats.parquet"
    pq.write_table(pa.table({"sample_id": [0], "step": [0], "grad_norm": [1.0], "dot": [0.5], "lambda_norm": [1.0]}),
                   stats)
    _truncated(stats)
    hint = "delete it and rerun Snakemake"
    for call, bad in [(lambda: sample.draw_windows([str(shard)], 1, 0), shard),
                      (lambda: labels.read_stats([str(stats)]), stats),
                      (lambda: io.read_parquet(shard, columns=["doc_id"]), shard),
                      (lambda: list(io.parquet_batches(scores)), scores),
                      (lambda: gather_scores(plan_path, [str(scores)], [str(tmp_path / "rejects-0.jsonl")],
                                             str(tmp_path / "o.jsonl"), str(tmp_path / "or.jsonl"),
                                             str(tmp_path / "os.json"), str(tmp_path / "oi.parquet"),
                                             **corpus_settings(plan), text_field="text",
                                             max_chars=100, score_field="score", on_bad_record="error"), scores)]:
        with pytest.raises(ValueError, match=f"{bad} is not a readable Parquet file .*{hint}"):
            call()
    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
        cli.main(["sample-proxy", str(shard), "--tokenizer-dir", tok_dir, "--out", str(tmp_path / "p.parquet"),
                  "--settings", json.dumps({"size": 2, "seed": 0})])
    assert exit_info.value.code == 1
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"sample-proxy failed: {shard} is not a readable Parquet file" in error.getMessage()
    assert error.exc_info is None


@pytest.mark.parametrize("content", ["garbage", '{"not": "a tokenizer"}', ""])
def test_damaged_tokenizer_names_its_file(tmp_path, tok_dir, content):
    import shutil

    damaged = tmp_path / "tokenizer"
    shutil.copytree(tok_dir, damaged)
    (damaged / "tokenizer.json").write_text(content)
    message = f"cannot load the tokenizer {damaged / 'tokenizer.json'} "
    with pytest.raises(ValueError, match=message):
        load_tokenizer(damaged)
    path = write_jsonl(tmp_path / "c.jsonl", GOOD)
    plan_path, plan = write_plan(tmp_path, [path])
    with pytest.raises(ValueError, match=message):
        tokenize_shard(plan_path, "0", str(damaged), str(tmp_path / "s.parquet"), str(tmp_path / "r.jsonl"),
                       text_field="text", max_length=16, on_bad_record="skip", max_chars=100, **shard_settings(plan))
    with pytest.raises(FileNotFoundError, match=f"tokenizer directory not found: {tmp_path / 'nowhere'}"):
        load_tokenizer(tmp_path / "nowhere")


# ---------------------------------------------------------------- unwritable outputs


def _gather_argv(tmp_path: Path, out: Path, corpus_path: Path | None = None) -> list[str]:
    """gather-scores' command line on a corpus of GOOD (its plan names `corpus_path`, else the
    corpus written here)."""
    path = write_jsonl(tmp_path / "c.jsonl", GOOD)
    plan_path, plan = write_plan(tmp_path, [path])
    if corpus_path is not None:  # the plan of a file that is not there (the sizes read from the one that is)
        plan = splits.CorpusPlan((str(corpus_path),), {}, tuple(
            splits.Shard(s.key, tuple(splits.Split(str(corpus_path), x.start, x.stop) for x in s.splits), s.size)
            for s in plan.shards))
        plan_path = plan.write(str(tmp_path / "other_plans"))
    records = list(corpus.iter_records([str(path)]))
    scores = tmp_path / "s.parquet"
    pq.write_table(pa.table({"doc_id": pa.array([r.doc_id for r in records], pa.int64()), "score": [0.0, 0.5, 1.0],
                             "truncated": [False] * 3, "n_tokens": [4] * 3, "n_windows": [1] * 3,
                             "fingerprint": [r.fingerprint for r in records],
                             "source": pa.array([None] * 3, pa.string())}), scores)
    (tmp_path / "r.jsonl").write_text("")
    return ["gather-scores", "--plan", plan_path, "--score-paths", str(scores), "--reject-paths",
            str(tmp_path / "r.jsonl"), "--out", str(out), "--rejects-out", str(tmp_path / "rejects.jsonl"),
            "--summary-out", str(tmp_path / "summary.json"), "--index-out", str(tmp_path / "index.parquet"),
            "--benchmarks-dir", str(tmp_path), "--settings",
            settings_json(gather_scores_stage.Settings, {
                **corpus_settings(plan), "text_field": "text", "max_chars": 100, "score_field": "score",
                "on_bad_record": "error", "output_format": "jsonl", "extra_fields": [], "layout": "single",
                "config_sha256": None, "corpus_versions": {}})]


def _one_error(caplog, argv: list[str]) -> str:
    caplog.clear()
    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.INFO):
        cli.main(argv)
    assert exit_info.value.code == 1
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info is None and "\n" not in error.getMessage()  # one line, no traceback
    return error.getMessage()


def test_unwritable_output_is_one_line_naming_the_path(tmp_path, caplog, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    out = blocker / "scored.jsonl"
    assert _one_error(caplog, _gather_argv(tmp_path, out)).startswith("gather-scores failed: [Errno ")
    assert str(blocker) in caplog.text

    # permission denied (simulated: as root, chmod would not stop the write)
    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "results" / "scored.jsonl"
    message = _one_error(caplog, _gather_argv(tmp_path, out))
    assert message == f"gather-scores failed: [Errno 13] Permission denied: '{out.parent}'"


def test_missing_input_is_one_line(tmp_path, caplog):
    argv = _gather_argv(tmp_path, tmp_path / "scored.jsonl", corpus_path=tmp_path / "nowhere.jsonl")
    assert _one_error(caplog, argv) == f"gather-scores failed: corpus file not found: {tmp_path / 'nowhere.jsonl'}"


def test_disk_full_is_one_line_naming_the_outputs(tmp_path, caplog, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("scored.jsonl"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "scored.jsonl"
    message = _one_error(caplog, _gather_argv(tmp_path, out))
    assert message == (f"gather-scores failed: [Errno 28] No space left on device (outputs: {out}, "
                       f"{tmp_path / 'rejects.jsonl'}, {tmp_path / 'summary.json'}, {tmp_path / 'index.parquet'})")
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- temporaries a killed job left


def test_a_rerun_removes_its_own_stale_temporaries(tmp_path):
    shard, model = tmp_path / "shard-1.parquet", tmp_path / "scorer"
    stale = [tmp_path / ".shard-1.parquet.k3j_x9q2.tmp", tmp_path / ".shard-1.parquet.a1b2c3d4.tmp"]
    for p in stale:
        p.write_bytes(b"PAR1 half a file")
    stale_dir = tmp_path / ".scorer.zz9y8x7w.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "model.safetensors").write_bytes(b"partial")
    others = [tmp_path / ".shard-10.parquet.k3j_x9q2.tmp",  # another shard's
              tmp_path / ".shard-1.parquet.extra.k3j_x9q2.tmp",  # output shard-1.parquet.extra's
              tmp_path / ".scorer.json.k3j_x9q2.tmp", tmp_path / "shard-1.parquet.k3j_x9q2.tmp"]
    for p in others:
        p.write_bytes(b"someone else's")

    io.write_table(shard, pa.table({"x": [1]}))
    assert not any(p.exists() for p in stale) and stale_dir.exists()
    with io.atomic_dir(model) as tmp:
        (tmp / "config.json").write_text("{}")
        assert not stale_dir.exists()  # removed before the new one is written
    assert pq.read_table(shard)["x"].to_pylist() == [1] and (model / "config.json").exists()
    assert all(p.read_bytes() == b"someone else's" for p in others)
    assert {p.name for p in tmp_path.glob(".*.tmp")} == {p.name for p in others if p.name.startswith(".")}
