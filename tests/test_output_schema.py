"""One Parquet output schema, settled before any record is written (issue 20, part C): a JSONL
value is never cast, truncated or dropped on its way into Parquet (defect 3), and the per_shard
parts all carry the one schema, so they read as one data set (defect 4). Widening that changes
no value is allowed; a record that fits no such widening is a bad record, named by file, line
and field."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from helpers import (
    GOOD,
    corpus_settings,
    edit_config,
    make_workflow,
    parse_plan,
    rule_counts,
    set_key,
    shard_settings,
    snakemake,
    stage_function,
    tiny_config,
    tiny_corpus,
    tokenize_and_score_shard,
    train_tokenizer,
    write_jsonl,
    write_part,
    write_plan,
)
from helpers import score_error as lqs_score
from transformers import XGLMConfig, XGLMModel

from lqs import corpus, output, splits
from lqs.batch_scoring import INDEX_SCHEMA
from lqs.scorer import ScorerModel, save_scorer
from lqs.stages import gather_scores as gather_scores_stage
from lqs.stages import output_schema as output_schema_stage
from lqs.stages import select_order as select_order_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage
from lqs.tokenize import load_tokenizer

gather_scores = stage_function(gather_scores_stage)
output_schema = stage_function(output_schema_stage)
score_shard = tokenize_and_score_shard
select_order = stage_function(select_order_stage)
tokenize_shard = stage_function(tokenize_shard_stage)

SELECT_ALL = dict(selection=dict(method="top", ratio=1.0, threshold=None, temperature=1.0, seed=0),
                  ordering=dict(method="folding", folds=3, seed=0), score_field="score")


@pytest.fixture(scope="module")
def tokenizer_and_scorer(tmp_path_factory) -> tuple[str, str]:
    """A tokenizer and a tiny XGLM scorer checkpoint (as train_scorer saves one)."""
    d = tmp_path_factory.mktemp("models")
    train_tokenizer([str(write_jsonl(d / "train.jsonl", tiny_corpus(40)))], str(d / "tokenizer"),
                    text_field="text", vocab_size=300, max_chars=10**6)
    tokenizer = load_tokenizer(d / "tokenizer")
    torch.manual_seed(0)
    backbone = XGLMModel(XGLMConfig(d_model=32, ffn_dim=64, num_layers=1, attention_heads=2, max_position_embeddings=64,
                                    vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    save_scorer(ScorerModel(backbone), tokenizer, d / "scorer", {"max_length": 16})
    return str(d / "tokenizer"), str(d / "scorer")


def as_read(value, type: pa.DataType):
    """What a column of `type` gives back for the JSON `value` when nothing is lost: the value
    itself, except an integer in a double column (the documented widening) as the equal float,
    and an object with the struct's other fields null."""
    if value is None:
        return None
    if pa.types.is_floating(type):
        assert float(value) == value  # exact: an integer there is at most 2**53
        return float(value)
    if pa.types.is_list(type):
        return [as_read(v, type.value_type) for v in value]
    if pa.types.is_struct(type):
        assert set(value) <= {f.name for f in type}  # no key dropped
        return {f.name: as_read(value.get(f.name), f.type) for f in type}
    return value


def assert_rows_are_the_records(rows: list[dict], records: list[dict], schema: pa.Schema) -> None:
    """Each row read back is its JSON record, value for value: json.dumps tells 1 from 1.0."""
    assert len(rows) == len(records)
    struct = pa.struct([f for f in schema if f.name in {k for r in records for k in r}])
    for row, record in zip(rows, records):
        expected = as_read(record, struct)
        assert json.dumps({k: row[k] for k in expected}, sort_keys=True) == json.dumps(expected, sort_keys=True)


# ---------------------------------------------------------------- defect 3: lqs score, JSONL -> Parquet


def shape_records(n: int = 4100) -> list[dict]:
    """The issue's shape.jsonl: past the first chunk (4,096 records), an "id" with a fraction,
    a "w" with a fraction and a new nested key."""
    records = [{"text": f"Document {i}. {GOOD[i % len(GOOD)]}", "id": i, "w": i % 3, "meta": {"n": i}}
               for i in range(n)]
    records[4098]["id"] = 4098.75
    records[4099]["w"] = 2.9
    records[4099]["meta"]["new"] = {"deep": [1, 2]}
    return records


def test_lqs_score_parquet_from_jsonl_keeps_every_value(tokenizer_and_scorer, tmp_path, caplog):
    _, scorer = tokenizer_and_scorer
    records = shape_records()
    src = write_jsonl(tmp_path / "shape.jsonl", records)
    code, error = lqs_score(caplog, src, "--scorer", scorer, "--out", tmp_path / "shape.parquet",
                            "--max-windows-per-doc", "1")
    assert code == 0, error
    table = pq.read_table(tmp_path / "shape.parquet")
    rows = table.to_pylist()
    assert (rows[4098]["id"], rows[4099]["w"], rows[4099]["meta"]["new"]) == (4098.75, 2.9, {"deep": [1, 2]})
    assert table.schema.field("id").type == pa.float64() and table.schema.field("w").type == pa.float64()
    assert table.schema.field("meta").type == pa.struct([("n", pa.int64()), ("new", pa.struct([("deep", pa.list_(
        pa.int64()))]))])
    assert_rows_are_the_records(rows, records, table.schema)
    assert not (tmp_path / "shape.parquet.rejects.jsonl").exists()


def test_lqs_score_rejects_what_parquet_cannot_hold(tokenizer_and_scorer, tmp_path, caplog):
    _, scorer = tokenizer_and_scorer
    records = [{"text": f"Document {i}. {GOOD[i % len(GOOD)]}", "id": i, "tags": ["a"]} for i in range(6)]
    records[2]["id"] = "two"  # a string where the first record set an int
    records[4]["tags"] = ["b", 5]  # an int in a list of strings
    src = write_jsonl(tmp_path / "in.jsonl", records)
    code, error = lqs_score(caplog, src, "--scorer", scorer, "--out", tmp_path / "e.parquet")
    assert code == 1 and error.startswith(f"score failed: {src}:3: field 'id' is \"two\", which the Parquet output's "
                                          "int64 column cannot hold exactly; --format jsonl keeps every record")
    assert "--on-bad-record skip" in error and not (tmp_path / "e.parquet").exists()

    code, error = lqs_score(caplog, src, "--scorer", scorer, "--out", tmp_path / "s.parquet", "--on-bad-record", "skip")
    assert code == 0, error
    rejects = [json.loads(line) for line in (tmp_path / "s.parquet.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(",")[0]) for r in rejects] == [(3, "field 'id' is \"two\""),
                                                                          (5, "field 'tags[1]' is 5")]
    assert [r["record"] for r in rejects] == [json.dumps(records[2]), json.dumps(records[4])]  # the lines as read
    table = pq.read_table(tmp_path / "s.parquet")
    assert_rows_are_the_records(table.to_pylist(), [r for i, r in enumerate(records) if i not in (2, 4)], table.schema)

    code, error = lqs_score(caplog, "-", "--scorer", scorer, "--out", tmp_path / "stdin.parquet")
    assert code == 1 and "standard input (-) cannot be read twice" in error


# ---------------------------------------------------------------- the rules, and no cast in the writer


def test_schema_widens_only_where_no_value_changes(tmp_path):
    lines = [
        {"text": "a", "n": 1, "big": 2**60 + 1, "l": [], "m": {"a": 1}, "z": None},
        {"text": "b", "n": 2.5, "l": [1, None], "m": {"b": "x"}, "flag": True},  # n -> double, m gains b
        {"text": "c", "big": 0.5},  # big holds 2**60 + 1, which a double cannot hold: a misfit
        {"text": "d", "n": 2**53 + 1},  # not exactly a double: a misfit
        {"text": "e", "huge": 2**64},  # no 64-bit integer holds 2**64: a misfit
        {"text": "f", "flag": 1},  # an int where a bool was
        {"text": "g", "l": [3, 2.5], "m": {"a": None, "c": [{"k": 1}]}},  # list items unify: double
        {"text": "h", "empty": {}},  # an object no record gives a field: Parquet has no empty struct
        {"text": "i", "n": -(2**53), "big": -(2**63)},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    schema = output.corpus_schema([str(path)])
    assert schema == pa.schema([
        ("text", pa.string()), ("n", pa.float64()), ("big", pa.int64()), ("l", pa.list_(pa.float64())),
        ("m", pa.struct([("a", pa.int64()), ("b", pa.string()), ("c", pa.list_(pa.struct([("k", pa.int64())])))])),
        ("z", pa.null()), ("flag", pa.bool_()), ("empty", pa.null())])
    reasons = {r.line: r.error for r in output.fitting(corpus.iter_records([str(path)]), schema) if r.error}
    assert {line: reason.split(";")[0] for line, reason in reasons.items()} == {
        3: "field 'big' is 0.5, which the Parquet output's int64 column cannot hold exactly",
        4: "field 'n' is 9007199254740993, which the Parquet output's double column cannot hold exactly",
        5: "field 'huge' is 18446744073709551616, an integer too large for a 64-bit integer column",
        6: "field 'flag' is 1, which the Parquet output's bool column cannot hold exactly",
        8: "field 'empty' is {}, an object that no record gives a field, which a Parquet column cannot hold",
    }
    # the records that fit are read back as they are
    table = pa.Table.from_pylist([r for i, r in enumerate(lines, 1) if i not in reasons], schema=schema)
    assert_rows_are_the_records(table.to_pylist(), [r for i, r in enumerate(lines, 1) if i not in reasons], schema)


def test_mixed_corpus_is_refused_for_parquet_output(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    pq.write_table(pa.table({"text": ["b"]}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="mixes JSONL and Parquet files .*use output.format jsonl"):
        output.corpus_schema([str(jsonl), str(tmp_path / "b.parquet")])


@pytest.mark.parametrize("record, reason", [
    ({"text": "t", "id": 4098.75}, "field 'id' is 4098.75, which the Parquet output's int64 column"),
    ({"text": "t", "id": True}, "field 'id' is true, which the Parquet output's int64 column"),
    ({"text": "t", "x": 2**60 + 1}, "field 'x' is 1152921504606846977, which the Parquet output's double column"),
    ({"text": "t", "m": {"a": 1, "b": 2}}, "field 'm.b' is not one of the Parquet output's columns"),
    ({"text": "t", "new": "v"}, "field 'new' is not one of the Parquet output's columns"),
])
def test_writer_refuses_what_arrow_would_cast_or_drop(tmp_path, record, reason):
    # each of these pa.Table.from_pylist casts (4098.75 -> 4098), drops (a key) or refuses
    schema = pa.schema([("text", pa.string()), ("id", pa.int64()), ("x", pa.float64()),
                        ("m", pa.struct([("a", pa.int64())]))])
    records = list(corpus.iter_records([str(write_jsonl(tmp_path / "in.jsonl", [{"text": "ok", "id": 1}, record]))]))
    with (pytest.raises(ValueError, match=f"^{re.escape(f'{tmp_path}/in.jsonl:2: {reason}')}"),
          output.ScoredWriter(tmp_path / "out.parquet", "parquet", ["score"], schema) as writer):
        writer.write(records, {"score": [0.5, 0.5]})
    assert not (tmp_path / "out.parquet").exists()
    with pytest.raises(ValueError, match="needs the corpus's schema"):
        output.ScoredWriter(tmp_path / "out.parquet", "parquet", ["score"])


# ---------------------------------------------------------------- the stages


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_write_part_rejects_a_record_the_schema_cannot_hold(tokenizer_and_scorer, tmp_path, mode):
    """output.layout per_shard: tokenize_shard and score_shard take every record (so that the
    output's settings rescore nothing); write_part rejects the one its Parquet part cannot hold
    exactly, or stops under on_bad_record: error, as gather_scores does for layout single."""
    tokenizer, scorer = tokenizer_and_scorer
    lines = [{"text": f"Document {i} reads well.", "id": i} for i in range(4)]
    lines[2]["id"] = "two"
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    plan_path, corpus_plan = write_plan(tmp_path, [path])
    schema = str(tmp_path / "schema.parquet")
    output_schema(plan_path, schema, text_field="text", max_chars=10**6, **corpus_settings(corpus_plan))
    assert output.read_schema(schema) == pa.schema([("text", pa.string()), ("id", pa.int64())])
    counts = tokenize_shard(plan_path, "0", tokenizer, str(tmp_path / "tok.parquet"),
                            str(tmp_path / "rejects-0.jsonl"), text_field="text", max_length=16, on_bad_record=mode,
                            max_chars=10**6, **shard_settings(corpus_plan))
    assert counts["documents"] == 4 and (tmp_path / "rejects-0.jsonl").read_text() == ""
    score_shard(plan_path, corpus_plan, "0", str(tmp_path / "tok.parquet"), scorer, str(tmp_path / "scores.parquet"),
                max_tokens=64, max_windows_per_doc=1, device="cpu")
    part = tmp_path / "scored" / "part-0.parquet"
    part.parent.mkdir()
    args = (plan_path, corpus_plan, "0", str(tmp_path / "scores.parquet"), str(tmp_path / "rejects-0.jsonl"), part)
    settings = dict(text_field="text", max_chars=10**6, on_bad_record=mode, output_format="parquet",
                    output_schema=schema)
    reason = "field 'id' is \"two\", which the Parquet output's int64 column cannot hold exactly"
    if mode == "error":
        with pytest.raises(corpus.BadRecordError, match=f"^{re.escape(f'{path}:3: {reason}')}.*on_bad_record: skip"):
            write_part(*args, **settings)
        assert not part.exists()
        return
    counts = write_part(*args, **settings)
    assert (counts["read"], counts["scored"]) == (4, 3)
    [entry] = [json.loads(line) for line in (tmp_path / "parts" / "rejects-0.jsonl").read_text().splitlines()]
    offsets = np.cumsum([0] + [len(json.dumps(r).encode()) + 1 for r in lines]).tolist()  # doc ids: line offsets
    assert (entry["doc_id"], entry["line"], entry["reason"].split(";")[0]) == (offsets[2], 3, reason)
    assert pq.read_table(part)["id"].to_pylist() == [0, 1, 3]
    index = pq.read_table(tmp_path / "parts" / "index-0.parquet")
    assert index["doc_id"].to_pylist() == [offsets[0], offsets[1], offsets[3]]
    assert index["score"].to_pylist() == pq.read_table(part)["score"].to_pylist()


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_gather_rejects_a_record_the_schema_cannot_hold(tokenizer_and_scorer, tmp_path, mode):
    """output.layout single: tokenize_shard takes every record (so that the output's settings
    rescore nothing); gather_scores rejects the one the Parquet output cannot hold exactly, into
    the rejects with the corpus's doc id, or stops under on_bad_record: error."""
    tokenizer, scorer = tokenizer_and_scorer
    lines = [{"text": f"Document {i} reads well.", "id": i} for i in range(4)]
    lines[2]["id"] = "two"
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    plan_path, corpus_plan = write_plan(tmp_path, [path])
    schema = str(tmp_path / "schema.parquet")
    output_schema(plan_path, schema, text_field="text", max_chars=10**6, **corpus_settings(corpus_plan))
    tokenize_shard(plan_path, "0", tokenizer, str(tmp_path / "tok.parquet"), str(tmp_path / "rejects-0.jsonl"),
                   text_field="text", max_length=16, on_bad_record=mode, max_chars=10**6,
                   **shard_settings(corpus_plan))
    assert (tmp_path / "rejects-0.jsonl").read_text() == ""  # every record tokenized
    score_shard(plan_path, corpus_plan, "0", str(tmp_path / "tok.parquet"), scorer, str(tmp_path / "scores.parquet"),
                max_tokens=64, max_windows_per_doc=1, device="cpu")
    gather = dict(text_field="text", max_chars=10**6, on_bad_record=mode, output_format="parquet",
                  output_schema=schema, **corpus_settings(corpus_plan))
    args = (plan_path, [str(tmp_path / "scores.parquet")], [str(tmp_path / "rejects-0.jsonl")],
            str(tmp_path / "scored.parquet"), str(tmp_path / "rejects.jsonl"), str(tmp_path / "summary.json"),
            str(tmp_path / "index.parquet"))
    reason = "field 'id' is \"two\", which the Parquet output's int64 column cannot hold exactly"
    if mode == "error":
        with pytest.raises(corpus.BadRecordError, match=f"^{re.escape(f'{path}:3: {reason}')}"):
            gather_scores(*args, **gather)
        assert not (tmp_path / "scored.parquet").exists()
        return
    summary = gather_scores(*args, **gather)
    [entry] = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    offset = sum(len(json.dumps(r)) + 1 for r in lines[:2])  # the corpus's doc id: the line's byte offset
    assert (entry["doc_id"], entry["line"], entry["reason"].split(";")[0]) == (offset, 3, reason)
    assert (summary["documents_read"], summary["documents_scored"], summary["documents_rejected"]) == (4, 3, 1)
    assert pq.read_table(tmp_path / "scored.parquet")["id"].to_pylist() == [0, 1, 3]
    offsets = np.cumsum([0] + [len(json.dumps(r)) + 1 for r in lines]).tolist()
    index = pq.read_table(tmp_path / "index.parquet")  # the output's documents: not the one rejected here
    assert index["doc_id"].to_pylist() == [offsets[0], offsets[1], offsets[3]]
    assert index["score"].to_pylist() == pq.read_table(tmp_path / "scored.parquet")["score"].to_pylist()


def per_shard_records(n: int = 12) -> list[dict]:
    """The issue's defect 4: a record of the last of 2 shards (its records the corpus's second half)
    has "id": 1.5, the others ints."""
    records = [{"text": f"Document {i}. {GOOD[i % len(GOOD)]}", "id": i, "meta": {"i": i}} for i in range(n)]
    records[n - 2]["id"] = 1.5
    records[5]["meta"]["note"] = "only here"
    return records


def test_per_shard_parts_read_as_one_data_set(tokenizer_and_scorer, tmp_path):
    tokenizer, scorer = tokenizer_and_scorer
    records = per_shard_records()
    path = str(write_jsonl(tmp_path / "c.jsonl", records))
    schema_file = str(tmp_path / "output_schema.parquet")
    plan_path, corpus_plan = write_plan(tmp_path, [path], 2)
    assert [s.key for s in corpus_plan.shards] == ["0", "1"]
    output_schema(plan_path, schema_file, text_field="text", max_chars=10**6, **corpus_settings(corpus_plan))
    common = dict(text_field="text", max_chars=10**6)
    shards, parts = [], []
    for shard in (s.key for s in corpus_plan.shards):
        shards.append(str(tmp_path / f"shard-{shard}.parquet"))
        parts.append(str(tmp_path / "scored" / f"part-{shard}.parquet"))
        rejects = str(tmp_path / f"rejects-{shard}.jsonl")
        tokenize_shard(plan_path, shard, tokenizer, shards[-1], rejects, max_length=16, on_bad_record="error",
                       **common, **shard_settings(corpus_plan, shard))
        (tmp_path / "scored").mkdir(exist_ok=True)
        scores = str(tmp_path / f"scores-{shard}.parquet")
        score_shard(plan_path, corpus_plan, shard, shards[-1], scorer, scores, max_tokens=64, max_windows_per_doc=1,
                    device="cpu", **common)
        write_part(plan_path, corpus_plan, shard, scores, rejects, parts[-1], output_format="parquet",
                   output_schema=schema_file, **common)
    # the float is in the second part alone: the schema is the whole corpus's all the same
    assert [pq.read_table(p)["id"].to_pylist().count(1.5) for p in parts] == [0, 1]
    schemas = [pq.read_schema(p) for p in parts]
    assert schemas[0] == schemas[1] and schemas[0].field("id").type == pa.float64()
    whole = pq.read_table(tmp_path / "scored")  # the directory as one data set
    assert whole.num_rows == pads.dataset(tmp_path / "scored", format="parquet").to_table().num_rows == 12
    # gather_scores' index of the parts (as it writes it for per_shard): the score files' documents,
    # shard after shard, with the corpus's doc ids
    indices = splits.corpus_file_indices([s.files for s in corpus_plan.shards])
    scores = [pq.read_table(tmp_path / f"scores-{s.key}.parquet") for s in corpus_plan.shards]
    index = str(tmp_path / "index.parquet")
    pq.write_table(pa.table([pa.array(np.concatenate([splits.corpus_doc_ids(t["doc_id"].to_numpy(), i)
                                                      for t, i in zip(scores, indices)]), pa.int64()),
                             pa.concat_arrays([t["score"].combine_chunks() for t in scores]),
                             pa.concat_arrays([t["source"].combine_chunks() for t in scores])],
                            schema=INDEX_SCHEMA), index)
    summary = select_order(parts, index, shards, str(tmp_path / "selected.parquet"), str(tmp_path / "order.parquet"),
                           str(tmp_path / "summary.json"), output_format="parquet", **SELECT_ALL)
    assert summary["documents_selected"] == 12
    selected = pq.read_table(tmp_path / "selected.parquet")
    by_id = {row["meta"]["i"]: row for row in selected.to_pylist()}
    assert_rows_are_the_records([by_id[i] for i in range(12)], records, selected.schema)


# ---------------------------------------------------------------- the workflow


@pytest.mark.workflow
def test_workflow_parquet_output_of_jsonl_records(tokenizer_and_scorer, tmp_path):
    _, scorer = tokenizer_and_scorer
    records = per_shard_records(40)
    records[7]["id"] = "seven"  # does not fit: a bad record, in the rejects
    write_jsonl(tmp_path / "data" / "corpus.jsonl", records)
    write_jsonl(tmp_path / "data" / "target.jsonl",
                [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
    config = tiny_config("data/corpus.jsonl", "data/target.jsonl")
    config["corpus"] |= {"num_shards": 2, "on_bad_record": "skip"}
    config["output"] = {"format": "parquet", "layout": "per_shard"}
    config["scorer"]["checkpoint"] = scorer
    make_workflow(tmp_path, config)
    jobs = rule_counts(parse_plan(snakemake(tmp_path, "-n").stdout)[0])
    assert jobs["output_schema"] == 1 and jobs["tokenize_shard"] == jobs["score_shard"] == 2
    snakemake(tmp_path)

    kept = [r for i, r in enumerate(records) if i != 7]
    parts = pads.dataset(tmp_path / "scored", format="parquet").to_table()  # one schema: one data set
    assert parts.schema.field("id").type == pa.float64() and parts.num_rows == 39
    selected = pq.read_table(tmp_path / "selected.parquet")
    by_id = {row["meta"]["i"]: row for row in selected.to_pylist()}
    assert_rows_are_the_records([by_id[r["meta"]["i"]] for r in kept], kept, selected.schema)
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert (summary["documents_read"], summary["documents_scored"], summary["documents_rejected"]) == (40, 39, 1)
    [reject] = [json.loads(line) for line in (tmp_path / summary["rejects"]).read_text().splitlines()]
    assert (reject["line"], reject["reason"].split(",")[0]) == (8, "field 'id' is \"seven\"")

    # the schema stands; per_shard's write_part rejected the misfit, single's gather_scores does:
    # nothing is tokenized or scored again
    edit_config(tmp_path, set_key("output", "layout", "single"))
    jobs = rule_counts(parse_plan(snakemake(tmp_path, "-n").stdout)[0])
    assert jobs == {"gather_scores": 1, "select_order": 1, "all": 1}
    snakemake(tmp_path)
    single = pq.read_table(tmp_path / "scored.parquet")
    assert single.schema == parts.schema
    assert_rows_are_the_records(single.to_pylist(), kept, single.schema)


def test_a_json_number_beyond_a_double_is_a_misfit_not_infinity():
    """1e400 is valid JSON that reads as infinity: a Parquet column would hold inf, another value."""
    builder = output.SchemaBuilder()
    assert builder.add({"text": "a", "x": 1.5}) is None
    reason = builder.add({"text": "b", "x": corpus.loads('1e400')})
    assert reason and "'x'" in reason and "beyond a 64-bit float" in reason
    columns = output.columns_of(builder.schema())
    assert "beyond a 64-bit float" in output.misfit({"text": "c", "x": [1.0][0] * float("inf")}, columns)
    assert output.misfit({"text": "c", "x": 2.5}, columns) is None
