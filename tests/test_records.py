"""Strict records at the first stage that reads them (issue 20, part B): an unreadable Parquet
file is a rejected file; NaN and Infinity literals, duplicate keys, lone surrogates in any string
and a record that already has an output field are bad records with their reason; the rejects
entry of a line that is not UTF-8 keeps its bytes. Unit tests on the stage functions
(tokenize_shard, made-up scores, gather_scores), and one workflow run for the Parquet case."""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import GOOD as SENTENCES
from helpers import (
    corpus_settings,
    make_workflow,
    settings_json,
    shard_settings,
    snakemake,
    stage_function,
    tiny_config,
    tiny_corpus,
    train_tokenizer,
    write_jsonl,
    write_part,
    write_plan,
)

from lqs import cli, corpus, output
from lqs.corpus import BadFileError, BadRecordError
from lqs.splits import FILE_BITS
from lqs.stages import gather_scores as gather_scores_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage
from lqs.stages import train_tokenizer as train_tokenizer_stage

gather_scores = stage_function(gather_scores_stage)
tokenize_shard = stage_function(tokenize_shard_stage)

MODES = ["error", "skip"]
GOOD = [json.dumps({"text": f"Document number {i} reads well.", "i": i}) for i in range(3)]


def _no_constant(name):
    raise AssertionError(f"not strict JSON: {name}")


def _strict(line: str):
    """json.loads that refuses NaN and Infinity, a duplicate key and a lone surrogate."""
    def pairs(items):
        assert len({k for k, _ in items}) == len(items), f"duplicate key in {line}"
        return dict(items)

    value = json.loads(line, parse_constant=_no_constant, object_pairs_hook=pairs)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate cannot be encoded
    return value


def _run(tmp_path: Path, paths: list, tok_dir: str, on_bad_record: str = "skip", num_shards=1,
         output_format: str = "jsonl", layout: str = "single", **record_settings):
    """tokenize_shard for every planned shard, made-up scores for the accepted documents,
    (output.layout per_shard: write_part for every shard) then gather_scores (`record_settings`,
    the output's fields, are theirs). Returns (summary, the output file or the directory of the
    parts, rejects entries)."""
    paths = [str(p) for p in paths]
    plan_path, plan = write_plan(tmp_path, paths, num_shards)
    score_paths, reject_paths = [], []
    for shard in (s.key for s in plan.shards):
        windows, rejects = tmp_path / f"tok-{shard}.parquet", tmp_path / f"rejects-{shard}.jsonl"
        tokenize_shard(plan_path, shard, tok_dir, str(windows), str(rejects), text_field="text",
                       max_length=16, on_bad_record=on_bad_record, max_chars=10**6, **shard_settings(plan, shard))
        # one row per window: each document's id and record fingerprint, in input order
        documents = {r["doc_id"]: r["fingerprint"] for r in pq.read_table(windows, columns=["doc_id", "fingerprint"])
                     .to_pylist()}
        ids = sorted(documents)
        scores = tmp_path / f"scores-{shard}.parquet"
        pq.write_table(pa.table({"doc_id": pa.array(ids, pa.int64()), "score": [i / 8 for i in ids],
                                 "truncated": [False] * len(ids), "n_tokens": [8] * len(ids),
                                 "n_windows": [1] * len(ids),
                                 "fingerprint": pa.array([documents[i] for i in ids], pa.int64()),
                                 "source": pa.array([None] * len(ids), pa.string())}), scores)
        score_paths.append(str(scores))
        reject_paths.append(str(rejects))
    fields = dict(score_field=record_settings.get("score_field", "score"),
                  extra_fields=record_settings.get("extra_fields", ()))
    common = dict(on_bad_record=on_bad_record, text_field="text", max_chars=10**6, output_format=output_format,
                  **fields)
    rejects_out, summary_out = tmp_path / "rejects.jsonl", tmp_path / "summary.json"
    if layout == "per_shard":
        out = tmp_path / "scored"
        out.mkdir()
        parts = [str(out / output.part_name(s.key, output_format)) for s in plan.shards]
        for shard, scores, rejects, part in zip(plan.shards, score_paths, reject_paths, parts):
            write_part(plan_path, plan, shard.key, scores, rejects, part, **common)
        beside = tmp_path / "parts"
        summary = gather_scores(plan_path, [], [str(beside / f"rejects-{s.key}.jsonl") for s in plan.shards],
                                str(out), str(rejects_out), str(summary_out), str(tmp_path / "index.parquet"),
                                part_paths=parts,
                                part_index_paths=[str(beside / f"index-{s.key}.parquet") for s in plan.shards],
                                part_stats_paths=[str(beside / f"stats-{s.key}.json") for s in plan.shards],
                                layout="per_shard", **corpus_settings(plan), **common)
    else:
        out = tmp_path / f"scored.{output_format}"
        summary = gather_scores(plan_path, score_paths, reject_paths, str(out), str(rejects_out), str(summary_out),
                                str(tmp_path / "index.parquet"), **corpus_settings(plan), **common)
    rejects = [_strict(line) for line in rejects_out.read_text(encoding="utf-8").splitlines()]
    # the index: the output's documents in its order, with their scores; never a rejected one
    index = pq.read_table(tmp_path / "index.parquet")
    field = record_settings.get("score_field", "score")
    files = parts if layout == "per_shard" else [out]
    written = pq.read_table(files)[field].to_pylist() if output_format == "parquet" else [
        _strict(line)[field] for f in files for line in Path(f).read_text(encoding="utf-8").splitlines()]
    assert index["score"].to_pylist() == written and summary["documents_scored"] == index.num_rows
    ids = index["doc_id"].to_pylist()
    assert ids == sorted(set(ids)) and not set(ids) & {r["doc_id"] for r in rejects}
    return summary, out, rejects


def _parquet(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), path)
    return path


def _truncated_parquet(path: Path) -> Path:
    _parquet(path, ["A document that is cut off.", "Another one."])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


# ---------------------------------------------------------------- an unreadable Parquet file (item 7)


def test_unreadable_parquet_file_is_one_rejected_file(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", GOOD[:2]), write_jsonl(tmp_path / "b.jsonl", GOOD[2:])
    bad = _truncated_parquet(tmp_path / "bad.parquet")
    records = list(corpus.iter_records([a, bad, b]))
    # the file takes no doc id; the others' are their file's index among those read, then the line's offset
    second = len(GOOD[0]) + 1
    assert [(r.path, r.doc_id, r.line) for r in records] == \
        [(str(a), 0, 1), (str(a), second, 2), (str(bad), None, None), (str(b), 2 << FILE_BITS, 1)]
    unreadable = records[2]
    assert unreadable.error.startswith("corrupt or truncated Parquet file (Parquet magic bytes not found")
    assert unreadable.reject_entry() == {"doc_id": None, "file": str(bad), "line": None,
                                         "reason": unreadable.error, "record": None}
    with pytest.raises(BadFileError, match=f"^{re.escape(str(bad))}: corrupt or truncated Parquet file") as info:
        corpus.check(unreadable, "error")
    assert "\n" not in str(info.value)
    assert corpus.check(unreadable, "skip") is False
    with pytest.raises(BadFileError, match=f"^{re.escape(str(bad))}: corrupt or truncated Parquet file"):
        corpus.parquet_schema(str(bad))
    assert corpus.parquet_schema(str(_parquet(tmp_path / "ok.parquet", ["x"]))).names == ["text", "n"]
    with pytest.raises(ValueError, match=re.escape(f"every corpus file is empty (no records) or unreadable: {bad}")):
        list(corpus.iter_records([bad]))


def test_unreadable_parquet_file_stops_the_first_stage_under_error(tmp_path, tok_dir, caplog):
    good = _parquet(tmp_path / "good.parquet", SENTENCES)
    bad = _truncated_parquet(tmp_path / "bad.parquet")
    message = f"^{re.escape(str(bad))}: corrupt or truncated Parquet file"
    with pytest.raises(BadFileError, match=message):
        train_tokenizer([str(good), str(bad)], str(tmp_path / "tokenizer"), text_field="text", vocab_size=300,
                        max_chars=10**6, on_bad_record="error")
    assert not (tmp_path / "tokenizer").exists()
    with pytest.raises(BadFileError, match=message):
        _run(tmp_path, [good, bad], tok_dir, "error", num_shards=2)
    settings = {"text_field": "text", "max_chars": 10**6, "vocab_size": 300, "on_bad_record": "error"}
    plan_path, plan = write_plan(tmp_path, [good, bad])
    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
        cli.main(["train-tokenizer", "--plan", plan_path, "--out-dir", str(tmp_path / "tokenizer"),
                  "--settings", settings_json(train_tokenizer_stage.Settings, settings | corpus_settings(plan))])
    assert exit_info.value.code == 1
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"{bad}: corrupt or truncated Parquet file" in error.getMessage() and error.exc_info is None


def test_unreadable_parquet_file_is_skipped_when_training_the_tokenizer(tmp_path, caplog):
    good = _parquet(tmp_path / "good.parquet", SENTENCES)
    bad = _truncated_parquet(tmp_path / "bad.parquet")
    with caplog.at_level(logging.WARNING):
        train_tokenizer([str(bad), str(good)], str(tmp_path / "tokenizer"), text_field="text", vocab_size=300,
                        max_chars=10**6, on_bad_record="skip")
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    assert any(str(bad) in r.getMessage() and "corrupt or truncated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("num_shards", [2, "per_file"])
def test_unreadable_parquet_file_with_parquet_output_under_skip(tmp_path, tok_dir, num_shards):
    # the settings: a Parquet corpus (so a Parquet output by default), on_bad_record: skip
    a = _parquet(tmp_path / "a.parquet", SENTENCES[:3])
    bad = _truncated_parquet(tmp_path / "bad.parquet")
    b = _parquet(tmp_path / "b.parquet", SENTENCES[3:])
    summary, out, rejects = _run(tmp_path, [a, bad, b], tok_dir, "skip", num_shards, output_format="parquet")
    [entry] = rejects  # once, though it may be a shard of its own
    assert entry == {"doc_id": None, "file": str(bad), "line": None, "reason": entry["reason"], "record": None}
    assert entry["reason"].startswith("corrupt or truncated Parquet file (")
    assert summary["rejected_files"] == [str(bad)] and summary["empty_files"] == []
    assert (summary["documents_read"], summary["documents_scored"], summary["documents_rejected"]) == (6, 6, 0)
    assert pq.read_table(out)["text"].to_pylist() == SENTENCES


@pytest.mark.workflow
def test_unreadable_parquet_file_in_a_workflow_run(tmp_path, completed_workflow):
    docs = tiny_corpus()
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(docs[:60]).drop_columns(["extra"]), tmp_path / "data" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(docs[60:]).drop_columns(["extra"]), tmp_path / "data" / "b.parquet")
    bad = _truncated_parquet(tmp_path / "data" / "bad.parquet")
    target = write_jsonl(tmp_path / "data" / "target.jsonl",
                         [{"conversations": [f"Question {i}?", SENTENCES[i % len(SENTENCES)]]} for i in range(12)])
    config = tiny_config(["data/a.parquet", "data/bad.parquet", "data/b.parquet"], str(target.relative_to(tmp_path)))
    config["corpus"] |= {"num_shards": 2, "on_bad_record": "skip"}
    # scoring with the finished run's scorer: the corpus stages are what this test is about
    config["scorer"]["checkpoint"] = str(completed_workflow / "results" / "scorer")
    make_workflow(tmp_path, config)
    snakemake(tmp_path)
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["format"] == "parquet" and summary["rejected_files"] == ["data/bad.parquet"]
    assert (summary["documents_read"], summary["documents_scored"]) == (120, 120)
    assert pq.read_table(tmp_path / summary["output"])["id"].to_pylist() == [d["id"] for d in docs]
    [entry] = [json.loads(line) for line in (tmp_path / summary["rejects"]).read_text().splitlines()]
    assert (entry["doc_id"], entry["file"], entry["line"], entry["record"]) == (None, "data/bad.parquet", None, None)
    assert bad.stat().st_size > 0  # the input is untouched

    config["corpus"]["on_bad_record"] = "error"
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    logs = [path.read_text() for path in (tmp_path / "results" / "logs").rglob("*.log")]
    assert any("data/bad.parquet: corrupt or truncated Parquet file" in log for log in logs)
    assert not any("Traceback" in log for log in logs)


def test_damaged_parquet_page_is_a_bad_record_naming_the_rows_lost(tmp_path, tok_dir):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": SENTENCES}), path, row_group_size=3, compression="none")
    page = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[page:page + 8] = b"\xff" * 8  # the second row group's page header: the footer still reads
    path.write_bytes(bytes(data))
    [record] = corpus.iter_records([path])
    assert (record.doc_id, record.line) == (0, 1)
    assert record.error.startswith("corrupt Parquet file: its rows 1 to 6 of 6 cannot be read (")
    assert "\n" not in record.error  # pyarrow's message has a line break
    with pytest.raises(BadRecordError, match=f"^{re.escape(str(path))}:1: corrupt Parquet file"):  # not an OSError
        _run(tmp_path, [path], tok_dir, "error")


@pytest.mark.parametrize("schema", ["columns", "struct"])
def test_parquet_file_with_two_columns_of_one_name_is_a_rejected_file(tmp_path, schema):
    if schema == "columns":  # a row as a dict would keep one of the two values
        table = pa.table([pa.array(["A text."]), pa.array([1]), pa.array([2])], names=["text", "a", "a"])
    else:
        table = pa.table({"text": ["A text."], "s": pa.StructArray.from_arrays([pa.array([1]), pa.array([2])],
                                                                               names=["a", "a"])})
    path = tmp_path / "dup.parquet"
    pq.write_table(table, path)
    good = write_jsonl(tmp_path / "good.jsonl", GOOD[:1])
    records = list(corpus.iter_records([path, good]))
    assert [(r.doc_id, r.line) for r in records] == [(None, None), (1 << FILE_BITS, 1)]  # the second file read
    duplicate = "two columns named 'a'" if schema == "columns" else "two fields named 'a' in column 's'"
    assert records[0].error == f"{duplicate} (a record holds one value per name)"
    with pytest.raises(BadFileError, match=f"^{re.escape(f'{path}: {duplicate}')}"):
        corpus.parquet_schema(str(path))


# ---------------------------------------------------------------- NaN and Infinity (item 8)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_bad_records(tmp_path, tok_dir, literal):
    lines = [GOOD[0], '{"text": "A number JSON does not have.", "x": %s}' % literal,
             '{"text": "Nested.", "m": [1, {"y": %s}]}' % literal, GOOD[1]]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    records = list(corpus.iter_records([path]))
    assert [r.error for r in records] == [None, f"invalid JSON ({literal} is not a JSON value)",
                                          f"invalid JSON ({literal} is not a JSON value)", None]
    with pytest.raises(BadRecordError, match=f"{path}:2: invalid JSON \\({literal} is not a JSON value\\)"):
        _run(tmp_path, [path], tok_dir, "error")
    summary, out, rejects = _run(tmp_path, [path], tok_dir, "skip")
    assert [(e["line"], e["record"]) for e in rejects] == [(2, lines[1]), (3, lines[2])]
    assert [_strict(line)["i"] for line in out.read_text().splitlines()] == [0, 1]  # strict JSON


# ---------------------------------------------------------------- a record with an output field


@pytest.mark.parametrize("layout", ["single", "per_shard"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field, settings, key", [
    ("score", {}, "output.score_field"),
    ("quality", {"score_field": "quality"}, "output.score_field"),
    ("n_tokens", {"extra_fields": ["n_tokens"]}, "output.extra_fields"),
])
def test_record_with_an_output_field_is_a_bad_record(tmp_path, tok_dir, mode, field, settings, key, layout):
    lines = [GOOD[0], GOOD[1], json.dumps({"text": "Scored before.", field: 0.5}), GOOD[2]]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    reason = f"the record already has the field {field!r} that {key} adds; choose another {key}"
    settings = {"score_field": "score", "extra_fields": [], **settings}
    # tokenization takes it (so that the output's settings rescore nothing)
    plan_path, plan = write_plan(tmp_path / "tokenized", [path])
    rejects = tmp_path / "tokenized" / "rejects.jsonl"
    counts = tokenize_shard(plan_path, "0", tok_dir, str(tmp_path / "tokenized" / "tok.parquet"), str(rejects),
                            text_field="text", max_length=16, on_bad_record=mode, max_chars=10**6,
                            **shard_settings(plan))
    assert counts["documents"] == 4 and rejects.read_text() == ""
    # the writer of the output rejects it: gather_scores (layout single), write_part (per_shard)
    if mode == "error":
        with pytest.raises(BadRecordError, match=f"^{re.escape(f'{path}:3: {reason}')}"):
            _run(tmp_path, [path], tok_dir, mode, num_shards=2, layout=layout, **settings)
        return
    summary, out, rejects = _run(tmp_path, [path], tok_dir, mode, num_shards=2, layout=layout, **settings)
    doc_id = sum(len(line) + 1 for line in lines[:2])  # the corpus's doc id: the line's byte offset
    assert rejects == [{"doc_id": doc_id, "file": str(path), "line": 3, "reason": reason, "record": lines[2]}]
    files = sorted(out.iterdir()) if layout == "per_shard" else [out]
    scored = [_strict(line) for f in files for line in f.read_text().splitlines()]
    assert [r["i"] for r in scored] == [0, 1, 2]
    assert summary["documents_rejected"] == 1


# ---------------------------------------------------------------- lone surrogates and duplicate keys


NOT_UNICODE = "which is not Unicode text"
BAD_FIELDS = [
    ('{"text": "Fine text.", "title": "\\udc00"}', f"lone UTF-16 surrogate (\\udc00) in field 'title', {NOT_UNICODE}"),
    ('{"text": "Fine text.", "meta": {"tags": ["ok", "x\\uD800y"]}}',
     f"lone UTF-16 surrogate (\\ud800) in field 'meta', {NOT_UNICODE}"),
    ('{"text": "Fine text.", "\\ud800": 1}', f"lone UTF-16 surrogate (\\ud800) in a key, {NOT_UNICODE}"),
    ('{"text": "Fine text.", "m": {"\\udfffk": 1}}',
     f"lone UTF-16 surrogate (\\udfff) in a key in field 'm', {NOT_UNICODE}"),
    ('{"text": "Fine text.", "k": 1, "k": 2}', "duplicate key 'k'"),
    ('{"text": "Fine text.", "m": [{"x": 1, "x": 1}]}', "duplicate key 'x'"),
    ('{"text": "one", "text": "two"}', "duplicate key 'text'"),
]


@pytest.mark.parametrize("line, reason", BAD_FIELDS)
def test_lone_surrogate_or_duplicate_key_is_a_bad_record(tmp_path, tok_dir, line, reason):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD[0], line, GOOD[1]])
    records = list(corpus.iter_records([path]))
    assert [r.error for r in records] == [None, reason, None]
    with pytest.raises(BadRecordError, match=f"^{re.escape(f'{path}:2: {reason}')}"):
        _run(tmp_path, [path], tok_dir, "error")
    summary, out, rejects = _run(tmp_path, [path], tok_dir, "skip")
    doc_id = len(GOOD[0]) + 1  # the line's byte offset
    assert rejects == [{"doc_id": doc_id, "file": str(path), "line": 2, "reason": reason, "record": line}]
    assert [_strict(line)["i"] for line in out.read_text().splitlines()] == [0, 1]


def test_surrogate_pairs_and_escaped_backslashes_are_fine(tmp_path):
    line = '{"text": "Fine \\ud83d\\ude00.", "emoji": "\\uD83D\\uDE00", "path": "C:\\\\udata\\\\ud800"}'
    path = write_jsonl(tmp_path / "c.jsonl", [line])
    [record] = corpus.iter_records([path])
    assert record.error is None and record.fields["emoji"] == "\U0001F600"
    assert record.fields["path"] == "C:\\udata\\ud800" and record.raw == line


# ---------------------------------------------------------------- invalid UTF-8 keeps its bytes


def test_invalid_utf8_reject_entry_keeps_the_bytes(tmp_path, tok_dir):
    bad = b'{"text": "caf\xe9 au lait", "i": 9}'
    path = tmp_path / "c.jsonl"
    path.write_bytes(GOOD[0].encode() + b"\n" + bad + b"\r\n" + GOOD[1].encode() + b"\n")
    record = list(corpus.iter_records([path]))[1]
    reason = "invalid UTF-8 (invalid continuation byte at byte 13)"
    expected = {"doc_id": len(GOOD[0]) + 1, "file": str(path), "line": 2, "reason": reason, "record": None,
                "record_base64": base64.b64encode(bad).decode("ascii")}
    assert record.reject_entry() == expected
    summary, out, rejects = _run(tmp_path, [path], tok_dir, "skip")
    assert rejects == [expected]
    assert base64.b64decode(rejects[0]["record_base64"]) == bad  # nothing lost
