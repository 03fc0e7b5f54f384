"""Output formats and layouts (output.format, output.layout, output.extra_fields), selection from
each of them, and `lqs score`: checked against the input records and the JSONL run's output."""

from __future__ import annotations

import datetime
import decimal
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    GOOD,
    copy_workflow,
    edit_config,
    lqs_main,
    make_workflow,
    parse_plan,
    plan,
    rule_counts,
    set_key,
    snakemake,
    stage_function,
    tiny_config,
    tiny_corpus,
    tiny_scorer,
    write_jsonl,
)

from lqs import corpus, output
from lqs import select as sel
from lqs.scorer import load, scoring_windows
from lqs.stages import select_order as select_order_stage

select_order = stage_function(select_order_stage)

FIELDS = ["score", "n_tokens", "n_windows", "truncated"]


def records_of(*paths, text_field="text"):
    return list(corpus.iter_records([str(p) for p in paths], text_field, 10**6))


def values_for(records):
    return {"score": [0.25 * i - 1 for i in range(len(records))], "n_tokens": [10 + i for i in range(len(records))],
            "n_windows": [1 + i % 3 for i in range(len(records))],
            "truncated": [i % 2 == 0 for i in range(len(records))]}


def write(path, records, format, columns, schema=None, chunk=3, metadata=None):
    with output.ScoredWriter(path, format, list(columns), schema, metadata) as writer:
        for start in range(0, len(records), chunk):
            writer.write(records[start:start + chunk], {k: v[start:start + chunk] for k, v in columns.items()})
    return path


# ----------------------------------------------------------------------------------------------
# the writer


def test_jsonl_keeps_each_line_and_gz_holds_the_same_bytes(tmp_path):
    lines = [b'{"text": "a b", "id": 1}\r\n', b'{ "text" : "c",  "n": 12345678901234567890 }  \n',
             '{"text": "caf\u00e9 \\ud83d\\ude00", "x": [1, {"y": null}]}\n'.encode(), b'{"text": "last"}']
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(lines))
    records = records_of(src)
    columns = values_for(records)
    plain = write(tmp_path / "out.jsonl", records, "jsonl", columns).read_bytes()
    packed = write(tmp_path / "out.jsonl.gz", records, "jsonl.gz", columns).read_bytes()
    assert gzip.decompress(packed) == plain
    assert write(tmp_path / "again.jsonl.gz", records, "jsonl.gz", columns).read_bytes() == packed  # reproducible
    out_lines = plain.splitlines(keepends=True)
    assert len(out_lines) == len(lines)
    for i, (before, after) in enumerate(zip(lines, out_lines)):
        body = before.rstrip(b"\r\n")
        cut = body.rindex(b"}")
        assert after.startswith(body[:cut]) and after.rstrip(b"\r\n").endswith(body[cut:])
        assert after.endswith(b"\r\n" if before.endswith(b"\r\n") else b"\n")
        assert json.loads(after) == json.loads(before) | {k: v[i] for k, v in columns.items()}


def rich_table(n: int) -> pa.Table:
    return pa.table({
        "text": [f"document {i} " + GOOD[i % len(GOOD)] for i in range(n)],
        "when": pa.array([datetime.datetime(2024, 1, 1 + i, tzinfo=datetime.timezone.utc) for i in range(n)],
                         pa.timestamp("ms", tz="UTC")),
        "price": pa.array([decimal.Decimal(f"{i}.50") for i in range(n)], pa.decimal128(10, 2)),
        "tags": pa.array([[f"t{i}"] * (i % 3) for i in range(n)], pa.list_(pa.string())),
        "meta": pa.array([{"a": i, "b": [i]} for i in range(n)]),
        "attrs": pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int32())),
        "blob": pa.array([bytes([i]) for i in range(n)], pa.binary()),
        "big": pa.array([2**62 + i for i in range(n)], pa.int64()),
    })


def test_parquet_output_keeps_the_input_columns_and_types(tmp_path):
    table = rich_table(7)
    pq.write_table(table.slice(0, 4), tmp_path / "a.parquet")
    pq.write_table(table.slice(4), tmp_path / "b.parquet")
    paths = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    records = records_of(*paths)
    schema = output.parquet_input_schema(paths)
    columns = values_for(records)
    out = pq.read_table(write(tmp_path / "out.parquet", records, "parquet", columns, schema))
    assert out.schema.names == table.schema.names + FIELDS
    assert [out.schema.field(n).type for n in table.schema.names] == list(table.schema.types)
    assert out.select(table.schema.names).equals(table)
    assert out.schema.field("score").type == pa.float64() and out.schema.field("truncated").type == pa.bool_()
    assert out.column("n_tokens").to_pylist() == columns["n_tokens"]


def test_parquet_input_schemas_are_unified_or_refused(tmp_path):
    pq.write_table(pa.table({"text": ["a"], "x": [1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["b"], "y": [0.5]}), tmp_path / "b.parquet")
    unified = output.parquet_input_schema([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    assert unified.names == ["text", "x", "y"]
    pq.write_table(pa.table({"text": ["c"], "x": ["not an int"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="columns of different types.*output.format jsonl"):
        output.parquet_input_schema([str(tmp_path / "a.parquet"), str(tmp_path / "c.parquet")])
    assert output.parquet_input_schema([str(tmp_path / "a.parquet"), "x.jsonl"]) is None


def test_parquet_from_jsonl_takes_the_corpus_schema_and_names_a_record_that_does_not_fit(tmp_path):
    good = [{"text": f"t{i}", "n": i, "tags": ["a"]} for i in range(4)]
    schema = output.corpus_schema([str(write_jsonl(tmp_path / "good.jsonl", good))])
    path = write_jsonl(tmp_path / "in.jsonl", good + [{"text": "x", "n": 5, "tags": [], "new": 1}])
    records = records_of(path)
    out = pq.read_table(write(tmp_path / "ok.parquet", records[:4], "parquet", {"score": [0.0] * 4}, schema, chunk=2))
    assert out.to_pylist() == [r | {"score": 0.0} for r in good]
    with pytest.raises(ValueError, match=r"in\.jsonl:5: field 'new' is not one of .*output\.format jsonl"):
        write(tmp_path / "bad.parquet", records, "parquet", {"score": [0.0] * 5}, schema, chunk=4)
    assert not (tmp_path / "bad.parquet").exists()  # nothing that looks finished
    path = write_jsonl(tmp_path / "types.jsonl", good + [{"text": "x", "n": "five", "tags": []}])
    with pytest.raises(ValueError, match=r"types\.jsonl:5: field 'n' is \"five\", which the Parquet output's int64"):
        write(tmp_path / "bad.parquet", records_of(path), "parquet", {"score": [0.0] * 5}, schema, chunk=4)


def test_a_field_the_records_have_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "a", "n_tokens": 3}])
    with pytest.raises(ValueError, match=r"in\.jsonl:1: .* already has a field 'n_tokens'.*output\.extra_fields"):
        write(tmp_path / "o.jsonl", records_of(path), "jsonl", {"score": [1.0], "n_tokens": [2]})
    pq.write_table(pa.table({"text": ["a"], "score": [1.0]}), tmp_path / "in.parquet")
    schema = output.parquet_input_schema([str(tmp_path / "in.parquet")])
    with pytest.raises(ValueError, match="already has a column 'score'; choose another output.score_field"):
        write(tmp_path / "o.parquet", records_of(tmp_path / "in.parquet"), "parquet", {"score": [1.0]}, schema)


# ----------------------------------------------------------------------------------------------
# selection from every format, in bounded memory


def scored_output(tmp_path, source: str, format: str, metadata) -> tuple[Path, int]:
    """A scored output in `format` of a small corpus in `source` (jsonl: lines of every shape that
    fit a Parquet column; parquet: rich_table's types), and its count of records."""
    if source == "jsonl":
        lines = [b'{"text": "a b", "id": 1, "o": {"x": 1}}\r\n', b'{ "text" : "c",  "id": 2, "o": {"x": 2.5} }  \n',
                 '{"text": "caf\u00e9 \\ud83d\\ude00", "id": 3, "o": null}\n'.encode(), b'{"text": "d", "id": 4}\n']
        (tmp_path / "in.jsonl").write_bytes(b"".join(lines * 5) + b'{"text": "last", "id": 5}')
    else:
        pq.write_table(rich_table(21), tmp_path / "in.parquet", row_group_size=4)
    paths = [str(tmp_path / f"in.{source}")]
    records = records_of(*paths)
    schema = output.corpus_schema(paths) if format == "parquet" else None
    # the Parquet output in one chunk: one row group, as the selection's one piece of the order
    path = write(tmp_path / f"scored.{format}", records, format, values_for(records), schema,
                 chunk=len(records) if format == "parquet" else 3, metadata=metadata)
    return path, len(records)


@pytest.mark.parametrize("source", ["jsonl", "parquet"])
@pytest.mark.parametrize("format", ["jsonl", "jsonl.gz", "parquet"])
def test_the_selection_writer_is_the_scored_writer(tmp_path, source, format):
    """The training set goes through the writer the scored output was written with
    (output.open_output): every record selected in storage order gives back its bytes exactly."""
    block = {b"lqs.provenance": b'{"config_sha256": "abc"}'}
    scored, n = scored_output(tmp_path, source, format, block)
    records = sel.scored_records([str(scored)], format, n)
    sel.write_selected(records, np.arange(n), str(tmp_path / f"selected.{format}"), block)
    assert (tmp_path / f"selected.{format}").read_bytes() == scored.read_bytes()


@pytest.mark.parametrize("source", ["jsonl", "parquet"])
def test_a_parquet_selection_keeps_the_scored_output_schema(tmp_path, source):
    scored, n = scored_output(tmp_path, source, "parquet", {b"lqs.provenance": b'"scores"', b"other": b"kept"})
    positions = np.random.default_rng(0).permutation(n)[:n // 2]
    out = tmp_path / "selected.parquet"
    sel.write_selected(sel.scored_records([str(scored)], "parquet", n), positions, str(out),
                       {b"lqs.provenance": b'"selection"'})
    schema = pq.read_schema(scored)
    assert pq.read_schema(out).equals(schema.with_metadata({b"lqs.provenance": b'"selection"', b"other": b"kept"}),
                                      check_metadata=True)
    assert pq.read_table(out).equals(pq.read_table(scored).take(positions))


@pytest.mark.parametrize("format", ["jsonl.gz", "parquet"])
def test_selection_from_gz_and_parquet_equals_jsonl_in_many_passes(tmp_path, monkeypatch, format):
    rng = np.random.default_rng(0)
    docs = [{"text": f"doc {i}", "id": i, "score": float(rng.normal())} for i in range(50)]
    docs[7]["score"] = docs[3]["score"]  # a tie, broken by input order
    shard = tmp_path / "shard-0.parquet"
    from lqs import splits
    from lqs.batch_scoring import INDEX_SCHEMA
    from lqs.tokenize import SHARD_SCHEMA

    # made-up positions in one corpus file (its index 0): the doc ids local to the shard are the corpus's
    ids = [i * 37 for i in range(50)]
    pq.write_table(pa.Table.from_pylist([{"doc_id": d, "window": 0, "input_ids": [1] * (1 + i % 4)}
                                         for i, d in enumerate(ids)],
                                        SHARD_SCHEMA.with_metadata(splits.files_metadata(["corpus.jsonl"]))), shard)
    index = tmp_path / "index.parquet"  # gather_scores' index of the scored output
    pq.write_table(pa.table([pa.array(ids, pa.int64()), pa.array([d["score"] for d in docs], pa.float64()),
                             pa.array([None] * 50, pa.string())], schema=INDEX_SCHEMA), index)
    write_jsonl(tmp_path / "scored.jsonl", docs)
    if format == "jsonl.gz":
        (tmp_path / "scored.jsonl.gz").write_bytes(gzip.compress((tmp_path / "scored.jsonl").read_bytes()))
    else:
        pq.write_table(pa.Table.from_pylist(docs), tmp_path / "scored.parquet", row_group_size=8)
    settings = dict(selection=dict(method="top", ratio=0.6, threshold=None, temperature=1.0, seed=0),
                    ordering=dict(method="folding", folds=3, seed=0), score_field="score")

    def run(name, fmt):
        return select_order(str(tmp_path / f"scored.{fmt}"), str(index), [str(shard)], str(tmp_path / f"{name}.{fmt}"),
                            str(tmp_path / f"{name}.order.parquet"), str(tmp_path / f"{name}.json"),
                            output_format=fmt, **settings)

    run("reference", "jsonl")
    monkeypatch.setattr(sel, "SELECT_MEMORY", 5 * 40)  # about 5 records per pass: 6 passes
    summary = run("selected", format)
    expected = [json.loads(line) for line in (tmp_path / "reference.jsonl").read_bytes().splitlines()]
    if format == "parquet":
        got = pq.read_table(tmp_path / "selected.parquet")
        assert got.schema == pq.read_schema(tmp_path / "scored.parquet")
        got = got.to_pylist()
    else:
        got = [json.loads(line) for line in gzip.decompress((tmp_path / "selected.jsonl.gz").read_bytes()).splitlines()]
    assert got == expected and summary["documents_selected"] == 30
    assert pq.read_table(tmp_path / "selected.order.parquet").equals(
        pq.read_table(tmp_path / "reference.order.parquet"))
    assert pq.read_table(tmp_path / "selected.order.parquet")["doc_id"].to_pylist() == [r["id"] * 37 for r in got]
    # a scored output that does not hold the documents the index lists: stale, refused
    if format == "jsonl.gz":
        (tmp_path / "scored.jsonl.gz").write_bytes(gzip.compress(b"".join(
            (tmp_path / "scored.jsonl").read_bytes().splitlines(keepends=True)[:-1])))
    else:
        pq.write_table(pa.Table.from_pylist(docs[:-1]), tmp_path / "scored.parquet", row_group_size=8)
    with pytest.raises(RuntimeError, match="but gather_scores indexed 50 documents; rerun gather_scores"
                       if format == "jsonl.gz" else "does not hold the 50 documents gather_scores indexed"):
        run("stale", format)
    assert not (tmp_path / f"stale.{format}").exists()


# ----------------------------------------------------------------------------------------------
# the workflow


def planned(workdir: Path) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` plans (test_workflow's plan() refuses the new output
    files' "Missing output files" reason, which is the point here)."""
    return rule_counts(parse_plan(snakemake(workdir, "-n").stdout)[0])


@pytest.fixture(scope="module")
def per_shard_parquet(tmp_path_factory, completed_workflow) -> Path:
    """The tiny workflow on a corpus of two Parquet files, output.layout per_shard, extra fields,
    scored by the completed run's scorer (scorer.checkpoint: no annotation, a third of the time)."""
    workdir = tmp_path_factory.mktemp("per_shard")
    docs = tiny_corpus()
    (workdir / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(docs[:70]), workdir / "data" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(docs[70:]), workdir / "data" / "b.parquet")
    write_jsonl(workdir / "data" / "target.jsonl",
                [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
    config = tiny_config("data/*.parquet", "data/target.jsonl")
    config["corpus"]["num_shards"] = 2
    config["output"] = {"layout": "per_shard", "extra_fields": ["n_tokens", "n_windows", "truncated"]}
    config["scorer"]["checkpoint"] = str(completed_workflow / "results" / "scorer")
    make_workflow(workdir, config)
    snakemake(workdir)
    return workdir


@pytest.mark.workflow
def test_per_shard_parts_hold_each_shard_in_input_order(per_shard_parquet):
    wd = per_shard_parquet
    docs = tiny_corpus()
    input_schema = pq.read_schema(wd / "data" / "a.parquet")
    for shard in (0, 1):
        part = pq.read_table(wd / "scored" / f"part-{shard}.parquet")
        assert part.schema.names == input_schema.names + FIELDS
        # num_shards 2 cuts at half the bytes, inside a.parquet's one row group: a whole file per shard
        assert part.select(input_schema.names).to_pylist() == (docs[:70], docs[70:])[shard]
        scores = pq.read_table(wd / "results" / "scores" / f"shard-{shard}.parquet")
        for name in FIELDS:
            assert part.column(name).to_pylist() == scores.column(name).to_pylist()
    summary = json.loads((wd / "results" / "summary.json").read_text())
    assert (summary["documents_read"], summary["documents_scored"], summary["documents_rejected"]) == (120, 120, 0)
    assert summary["layout"] == "per_shard" and summary["format"] == "parquet"
    assert set(summary["mean_score_by_source"]) == {"good", "noise", "repeat"}
    assert pq.read_table(wd / "selected.parquet").num_rows == 120  # selection.ratio 1: every document
    assert not (wd / "scored.jsonl").exists() and not (wd / "scored.parquet").exists()


@pytest.mark.workflow
def test_per_shard_extra_fields_are_what_was_scored(per_shard_parquet):
    wd = per_shard_parquet
    scorer = load(wd / "results" / "scorer", device="cpu")
    part = pq.read_table(wd / "scored" / "part-1.parquet").to_pylist()
    windows, truncated = scoring_windows(scorer.tokenizer, [r["text"] for r in part], scorer.max_length)
    for i, row in enumerate(part):
        mine = [w for w in windows if w.doc == i]
        assert ((row["n_tokens"], row["n_windows"], row["truncated"])
                == (sum(len(w.ids) for w in mine), len(mine), False))
    assert any(r["n_windows"] > 1 for r in part)


@pytest.mark.workflow
def test_per_shard_parquet_outputs_carry_the_provenance_block(per_shard_parquet, tmp_path):
    """Each part (written by its write_part job), results/summary.json and the training set carry
    the provenance block (lqs/provenance.py), a part's naming the corpus files of its own shard;
    an efficacy edit replans nothing, no GPU job included."""
    from lqs import provenance
    from lqs.scorer import weights_digests

    wd = per_shard_parquet
    block = json.loads((wd / "results" / "summary.json").read_text())["provenance"]
    assert block["corpus"] == [{"path": f"data/{name}", "bytes": (wd / "data" / name).stat().st_size,
                                "revision": None} for name in ("a.parquet", "b.parquet")]
    assert block["scorer"]["weights_sha256"] == weights_digests(wd / "results" / "scorer")
    parts = [provenance.read_parquet_block(wd / "scored" / f"part-{shard}.parquet") for shard in (0, 1)]
    for part in parts:
        assert part["corpus"] and {k: v for k, v in part.items() if k != "corpus"} == \
            {k: v for k, v in block.items() if k != "corpus"}
    # each shard's files, in order; a file cut between the two shards is in both parts' blocks
    assert [e for e in block["corpus"] if e in parts[0]["corpus"] + parts[1]["corpus"]] == block["corpus"]
    assert parts[0]["corpus"] + parts[1]["corpus"] in (block["corpus"], block["corpus"][:1] + block["corpus"],
                                                       block["corpus"] + block["corpus"][-1:])
    selection = json.loads((wd / "results" / "selection" / "summary.json").read_text())["provenance"]
    assert provenance.read_parquet_block(wd / "selected.parquet") == selection
    assert selection == {**block, "config_sha256": selection["config_sha256"]} != block
    copy = copy_workflow(wd, tmp_path)
    edit_config(copy, set_key("efficacy", "seeds", 7))
    assert planned(copy) == {}


@pytest.mark.workflow
def test_per_shard_gather_never_reads_the_corpus_and_removes_stale_parts(per_shard_parquet, tmp_path):
    wd = copy_workflow(per_shard_parquet, tmp_path)
    corpus_file = wd / "data" / "b.parquet"
    stat = corpus_file.stat()
    # a gather that read it would fail; of the same size and time, it changes nothing that planning sees
    corpus_file.write_bytes(b"PAR1 not a parquet file".ljust(stat.st_size, b"."))
    os.utime(corpus_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # an earlier run's part, listed in the manifest of the parts the workflow wrote (lqs.stages.gather_scores)
    stale = wd / "scored" / "part-7.parquet"
    stale.write_bytes(b"an earlier run's part")
    manifest = json.loads((wd / "results" / "output_parts.json").read_text())
    manifest["scored"]["part-7.parquet"] = {"size": stale.stat().st_size, "mtime_ns": stale.stat().st_mtime_ns}
    (wd / "results" / "output_parts.json").write_text(json.dumps(manifest))
    (wd / "scored" / "part-8.parquet").write_bytes(b"not the workflow's")  # never deleted by its name
    jobs = plan(wd, "-f", "results/summary.json")
    assert rule_counts(jobs) == {"gather_scores": 1}
    snakemake(wd, "-f", "results/summary.json")
    summary = json.loads((wd / "results" / "summary.json").read_text())
    assert summary["documents_read"] == 120
    assert summary["removed_stale_parts"] == ["scored/part-7.parquet"]
    assert sorted(p.name for p in (wd / "scored").iterdir()) == ["part-0.parquet", "part-1.parquet", "part-8.parquet"]


@pytest.mark.workflow
def test_single_layout_equals_the_parts_and_selects_the_same(per_shard_parquet, tmp_path):
    wd = copy_workflow(per_shard_parquet, tmp_path)
    # output.* is the writers' alone (write_part per shard, or gather_scores; output_schema settles
    # a Parquet output's columns): neither a renamed field nor another layout tokenizes or scores
    # anything again
    renamed = copy_workflow(per_shard_parquet, tmp_path, "renamed")
    edit_config(renamed, set_key("output", "score_field", "lqs_score"))
    assert planned(renamed) == {"output_schema": 1, "write_part": 2, "gather_scores": 1, "select_order": 1, "all": 1}
    edit_config(wd, set_key("output", "layout", "single"))
    assert planned(wd) == {"gather_scores": 1, "select_order": 1, "all": 1}
    snakemake(wd)
    single = pq.read_table(wd / "scored.parquet")
    parts = pa.concat_tables(pq.read_table(per_shard_parquet / "scored" / f"part-{s}.parquet") for s in (0, 1))
    assert single.schema == parts.schema
    assert single.equals(parts.sort_by("extra"))  # extra.n is the input index
    assert single.column("id").to_pylist() == [d["id"] for d in tiny_corpus()]
    for name in ("order.parquet", "summary.json"):
        a, b = (p / "results" / "selection" / name for p in (wd, per_shard_parquet))
        assert (pq.read_table(a).equals(pq.read_table(b)) if name.endswith("parquet")
                else json.loads(a.read_text()) == json.loads(b.read_text()))
    assert pq.read_table(wd / "selected.parquet").equals(pq.read_table(per_shard_parquet / "selected.parquet"))


@pytest.mark.workflow
def test_jsonl_gz_output_is_the_jsonl_output_compressed(completed_workflow, tmp_path):
    wd = copy_workflow(completed_workflow, tmp_path)
    edit_config(wd, set_key("output", "format", "jsonl.gz"))
    assert planned(wd) == {"gather_scores": 1, "select_order": 1, "all": 1}  # the scores stand
    snakemake(wd)
    assert gzip.decompress((wd / "scored.jsonl.gz").read_bytes()) == (completed_workflow / "scored.jsonl").read_bytes()
    assert (gzip.decompress((wd / "selected.jsonl.gz").read_bytes())
            == (completed_workflow / "selected.jsonl").read_bytes())


@pytest.mark.parametrize("layout, existing, message", [
    ("per_shard", "file", "is a file, but output.layout per_shard writes a directory"),
    ("single", "dir", "is a directory; output.layout single writes one file"),
])
@pytest.mark.workflow
def test_an_output_path_of_the_wrong_kind_fails_at_dag_build(tiny_workflow, layout, existing, message):
    (tiny_workflow / "out").mkdir() if existing == "dir" else (tiny_workflow / "out").write_text("x")
    edit_config(tiny_workflow, lambda c: c.setdefault("output", {}).update(path="out", layout=layout))
    result = snakemake(tiny_workflow, "-n", check=False)
    assert result.returncode != 0 and f"output.path: 'out' {message}" in result.stdout + result.stderr


@pytest.mark.workflow
def test_per_shard_plan_lists_every_part(tiny_workflow):
    edit_config(tiny_workflow, lambda c: c.setdefault("output", {}).update(layout="per_shard", format="jsonl.gz"))
    edit_config(tiny_workflow, set_key("corpus", "num_shards", 2))
    result = snakemake(tiny_workflow, "-n", "-p")
    assert "scored/part-0.jsonl.gz" in result.stdout and "scored/part-1.jsonl.gz" in result.stdout
    assert "selected.jsonl.gz" in result.stdout


# ----------------------------------------------------------------------------------------------
# lqs score


def lqs_score(caplog, *args) -> tuple[int, str]:
    return lqs_main(caplog, "score", *args, "--no-progress")


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory) -> Path:
    return tiny_scorer(tmp_path_factory.mktemp("scorer"))


@pytest.mark.workflow
def test_lqs_score_gives_the_workflow_scores_without_the_workflow(completed_workflow, tmp_path, caplog):
    wd = completed_workflow
    code, log = lqs_score(caplog, wd / "data" / "corpus.jsonl", "--scorer", wd / "results" / "scorer",
                          "--out", tmp_path / "s.jsonl")
    assert code == 0, log
    mine = (tmp_path / "s.jsonl").read_bytes().splitlines()
    theirs = (wd / "scored.jsonl").read_bytes().splitlines()
    assert len(mine) == len(theirs) == 120
    for a, b in zip(mine, theirs):
        assert a[:a.rindex(b', "score"')] == b[:b.rindex(b', "score"')]  # the input line, byte for byte
        assert json.loads(a)["score"] == pytest.approx(json.loads(b)["score"], abs=1e-6)  # other batch shapes
    assert "documents" in log and "tokens/s" in log


def test_lqs_score_formats_rejects_and_truncation(scorer_dir, tmp_path, caplog):
    scorer = scorer_dir
    lines = [json.dumps(d) for d in tiny_corpus(12)]
    lines[3] = '{"text": "   "}'
    lines[7] = "not json"
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")

    code, log = lqs_score(caplog, src, "--scorer", scorer, "--out", tmp_path / "e.jsonl")
    assert code == 1 and f"{src}:4: empty text" in log
    assert not (tmp_path / "e.jsonl").exists()

    code, log = lqs_score(caplog, src, "--scorer", scorer, "--out", tmp_path / "s.jsonl.gz", "--on-bad-record", "skip",
                          "--extra-fields", "n_windows,truncated", "--max-windows-per-doc", "1")
    assert code == 0, log
    out = [json.loads(line) for line in gzip.decompress((tmp_path / "s.jsonl.gz").read_bytes()).splitlines()]
    assert [r["id"] for r in out] == [json.loads(lines[i])["id"] for i in range(12) if i not in (3, 7)]
    assert all(r["n_windows"] == 1 for r in out) and any(r["truncated"] for r in out)
    rejects = [json.loads(line) for line in (tmp_path / "s.jsonl.gz.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(" (")[0]) for r in rejects] == [(4, "empty text"), (8, "invalid JSON")]

    pq.write_table(pa.Table.from_pylist(tiny_corpus(12)), tmp_path / "in.parquet")
    code, log = lqs_score(caplog, tmp_path / "in.parquet", "--scorer", scorer, "--out", tmp_path / "p",
                          "--extra-fields", "n_tokens")
    assert code == 0, log
    table = pq.read_table(tmp_path / "p")  # Parquet input: Parquet output by default
    assert table.schema.names == ["id", "text", "source", "extra", "score", "n_tokens"]
    assert not (tmp_path / "p.rejects.jsonl").exists()  # nothing rejected: no rejects file


def test_lqs_score_names_a_missing_scorer(tmp_path, caplog):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    code, log = lqs_score(caplog, tmp_path / "in.jsonl", "--scorer", tmp_path / "nope" / "x" / "y",
                          "--out", tmp_path / "o.jsonl")
    assert code == 1 and "neither a scorer checkpoint directory nor a hub repo id" in log
    shutil.rmtree(tmp_path / "nope", ignore_errors=True)


def test_lqs_score_streams_stdin_to_stdout(scorer_dir, tmp_path, caplog, capfdbinary):
    scorer = scorer_dir
    src = write_jsonl(tmp_path / "in.jsonl", tiny_corpus(20))
    assert lqs_score(caplog, src, "--scorer", scorer, "--out", tmp_path / "file.jsonl")[0] == 0
    # a real pipe on both ends: a process
    piped = subprocess.run([sys.executable, "-m", "lqs", "score", "-", "--scorer", str(scorer), "--out", "-",
                            "--no-progress"], input=src.read_bytes(), capture_output=True)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (tmp_path / "file.jsonl").read_bytes()  # logs went to stderr
    capfdbinary.readouterr()
    assert lqs_score(caplog, src, "--scorer", scorer, "--out", "-", "--format", "jsonl.gz")[0] == 0
    assert gzip.decompress(capfdbinary.readouterr().out) == (tmp_path / "file.jsonl").read_bytes()
    code, log = lqs_score(caplog, "-", src, "--scorer", scorer, "--out", tmp_path / "o.jsonl")
    assert code == 1 and "standard input (-) is read alone" in log
    code, log = lqs_score(caplog, src, "--scorer", scorer, "--out", "-", "--format", "parquet")
    assert code == 1 and "cannot be streamed to standard output" in log
