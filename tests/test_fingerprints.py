"""Every score is bound to the exact record it was computed on (issue 20, part D): a record's
fingerprint (corpus.Record.fingerprint) goes from tokenize_shard into the tokenized shard, is
checked by tokenize_scorer_shard where it reads the records again, written into the score shard,
and checked again by gather_scores before it writes a score beside the record. An edit that keeps
the file's mtime (`cp -p`) is then caught with one line, instead of pairing the new text with the
old text's score."""

from __future__ import annotations

import json
import math
import os
import re
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    copy_workflow,
    corpus_settings,
    plan,
    rule_counts,
    shard_settings,
    snakemake,
    stage_function,
    tiny_corpus,
    tiny_scorer,
    tokenize_and_score_shard,
    write_jsonl,
    write_plan,
)

from lqs import corpus
from lqs.batch_scoring import SCORES_SCHEMA
from lqs.stages import gather_scores as gather_scores_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage
from lqs.tokenize import SHARD_SCHEMA, TOKENIZER_METADATA

gather_scores = stage_function(gather_scores_stage)
score_shard = tokenize_and_score_shard
tokenize_shard = stage_function(tokenize_shard_stage)

RERUN = "rerun `snakemake --forcerun tokenize_shard`"


def _fingerprints(path: Path) -> list[int]:
    return [r.fingerprint for r in corpus.iter_records([str(path)])]


# ---------------------------------------------------------------- the fingerprint itself


def test_jsonl_fingerprint_is_the_lines_bytes(tmp_path):
    lines = ['{"id": 1, "text": "caf\\u00e9 au lait", "n": 1.50}', '{"id": 2, "text": "naïve"}',
             '{"id": 3, "text": "three"}']
    path = tmp_path / "a.jsonl"
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("utf-8"))
    got = _fingerprints(path)
    assert len(set(got)) == 3 and all(-2**63 <= f < 2**63 for f in got)  # fits Parquet int64
    assert _fingerprints(path) == got  # the same bytes, the same value
    # the line end, the file and the position are not part of the record
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes("".join(f"{line}\r\n" for line in lines).encode("utf-8").rstrip(b"\r\n"))
    assert _fingerprints(crlf) == got
    moved = write_jsonl(tmp_path / "moved.jsonl", ['{"text": "first"}', *lines])
    assert _fingerprints(moved)[1:] == got
    # one byte changed, in the text or beside it (1.50 -> 1.51; even 1.5, the same JSON number)
    for old, new in (("lait", "laiT"), ("1.50", "1.51"), ("1.50", "1.5")):
        edited = tmp_path / "edited.jsonl"
        edited.write_bytes(path.read_bytes().replace(old.encode(), new.encode()))
        assert [a == b for a, b in zip(_fingerprints(edited), got)] == [False, True, True]


def test_parquet_fingerprint_is_the_rows_values(tmp_path):
    table = pa.table({
        "text": ["one", "two", "three", "four"],
        "n": pa.array([1.5, math.nan, None, 2.0], pa.float64()),
        "blob": pa.array([b"\x00", b"\x01", None, b""], pa.binary()),
        "price": pa.array([Decimal("1.50"), None, Decimal("2.00"), Decimal("0.01")], pa.decimal128(5, 2)),
        "tags": [["a"], [], None, ["b", "c"]],
    })
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    got = _fingerprints(path)
    assert len(set(got)) == 4 and _fingerprints(path) == got
    # how the file is laid out is not part of a row: other row groups, another compression
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=1, compression="zstd")
    assert _fingerprints(tmp_path / "b.parquet") == got

    def edited(column: str, row: int, value) -> list[bool]:
        values = table[column].to_pylist()
        values[row] = value
        pq.write_table(table.set_column(table.schema.get_field_index(column), column,
                                        pa.array(values, table.schema.field(column).type)), tmp_path / "e.parquet")
        return [a == b for a, b in zip(_fingerprints(tmp_path / "e.parquet"), got)]

    assert edited("text", 0, "One") == [False, True, True, True]
    assert edited("n", 1, None) == [True, False, True, True]  # NaN is not null (as JSON output writes both)
    assert edited("blob", 3, None) == [True, True, True, False]  # empty is not null
    assert edited("price", 2, Decimal("2.01")) == [True, True, False, True]
    assert edited("tags", 1, None) == [True, False, True, True]
    # a JSONL line with the same values is another record: a line is fingerprinted by its bytes
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": "four", "n": 2.0, "blob": "", "price": "0.01",
                                                "tags": ["b", "c"]}])
    assert _fingerprints(jsonl)[0] != got[3]


# ---------------------------------------------------------------- the checks, in process


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory) -> Path:
    """A tiny scorer checkpoint; its tokenizer, beside it, tokenizes the corpus."""
    return tiny_scorer(tmp_path_factory.mktemp("scorer"))


def _tokenize(path: Path, scorer_dir: Path, tmp_path: Path, on_bad_record: str = "error") -> Path:
    tokenized = tmp_path / "tok.parquet"
    plan_path, plan = write_plan(tmp_path, [path])  # one shard: the whole file, whatever its edits
    tokenize_shard(plan_path, "0", str(scorer_dir.parent / "tokenizer"), str(tokenized),
                   str(tmp_path / "rejects.jsonl"), text_field="text", max_length=16,
                   on_bad_record=on_bad_record, max_chars=10**6, **shard_settings(plan))
    return tokenized


def _score(path: Path, tokenized: Path, scorer_dir: Path, out: Path) -> None:
    plan_path, plan = write_plan(out.parent, [path])
    score_shard(plan_path, plan, "0", str(tokenized), str(scorer_dir), str(out), text_field="text",
                max_chars=10**6, max_tokens=64, max_windows_per_doc=None, chunk_docs=4, device="cpu")


def _gather(path: Path, scores: Path, tmp_path: Path, output_format: str = "jsonl") -> Path:
    out = tmp_path / f"scored.{output_format}"
    plan_path, plan = write_plan(tmp_path, [path])
    gather_scores(plan_path, [str(scores)], [str(tmp_path / "rejects.jsonl")], str(out),
                  str(tmp_path / "rejects-out.jsonl"), str(tmp_path / "summary.json"), str(tmp_path / "index.parquet"),
                  **corpus_settings(plan),
                  text_field="text", max_chars=10**6, score_field="score", output_format=output_format,
                  on_bad_record="error")
    return out


def _anonymous(tokenized: Path) -> Path:
    """A copy of a tokenized shard that does not name its tokenizer: tokenize_scorer_shard then
    reads and tokenizes the records again, as for a scorer with a tokenizer of its own."""
    table = pq.read_table(tokenized)
    out = tokenized.with_name("anonymous.parquet")
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                  if k != TOKENIZER_METADATA}), out)
    return out


def test_scoring_checks_each_record_it_reads_against_the_tokenized_shard(scorer_dir, tmp_path):
    docs = tiny_corpus(12)
    path = write_jsonl(tmp_path / "corpus.jsonl", docs)
    tokenized = _tokenize(path, scorer_dir, tmp_path)
    assert pq.read_schema(tokenized).equals(SHARD_SCHEMA)
    _score(path, tokenized, scorer_dir, tmp_path / "scores.parquet")
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores.schema.equals(SCORES_SCHEMA)
    assert scores["fingerprint"].to_pylist() == _fingerprints(path)  # each score with its record's

    # record 8 edited after tokenization, one character, its line count kept
    before = _fingerprints(path)
    docs[7]["text"] = docs[7]["text"][:-1] + "X"
    write_jsonl(path, docs)
    out = tmp_path / "again.parquet"
    # a scorer with a tokenizer of its own reads the records again: the edited one stops it
    with pytest.raises(RuntimeError) as error:
        _score(path, _anonymous(tokenized), scorer_dir, out)
    message = str(error.value)
    assert message.startswith(f"{path}:8: the corpus changed since it was tokenized") and RERUN in message
    assert "\n" not in message
    assert not out.exists()
    # the scorer's windows cut from the tokenized shard: no record is read, each score keeps the
    # fingerprint of the record it was computed on, and the output's writer stops at the edited one
    _score(path, tokenized, scorer_dir, out)
    assert pq.read_table(out)["fingerprint"].to_pylist() == before != _fingerprints(path)
    with pytest.raises(RuntimeError, match=re.escape(f"{path}:8: the corpus changed since it was scored")):
        _gather(path, out, tmp_path)
    assert not (tmp_path / "scored.jsonl").exists()


def test_gather_checks_each_record_against_its_score(scorer_dir, tmp_path):
    """A Parquet corpus: the same fingerprints whether the output is JSONL or Parquet; an edit of
    a value beside the text is caught too."""
    docs = tiny_corpus(12)
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(docs), path)
    tokenized = _tokenize(path, scorer_dir, tmp_path)
    _score(path, tokenized, scorer_dir, tmp_path / "scores.parquet")
    for output_format in ("jsonl", "parquet"):
        assert _gather(path, tmp_path / "scores.parquet", tmp_path, output_format).exists()

    docs[4]["extra"] = {"n": 40}  # not the text: the record is what the output copies
    pq.write_table(pa.Table.from_pylist(docs), path)
    for output_format in ("jsonl", "parquet"):
        (tmp_path / f"scored.{output_format}").unlink()
        with pytest.raises(RuntimeError) as error:
            _gather(path, tmp_path / "scores.parquet", tmp_path, output_format)
        message = str(error.value)
        assert message.startswith(f"{path}:5: the corpus changed since it was scored") and RERUN in message
        assert "\n" not in message
        assert not (tmp_path / f"scored.{output_format}").exists()


def test_gather_checks_each_rejected_record_is_still_the_one_rejected(scorer_dir, tmp_path):
    """A bad record fixed (or changed) since tokenization, its file's mtime kept: it would stay
    out of the output silently while the rejects showed a line the corpus no longer has."""
    lines = [json.dumps(d) for d in tiny_corpus(6)]
    lines[2] = '{"id": "bad", "text": "unterminated'
    path = write_jsonl(tmp_path / "corpus.jsonl", lines)
    tokenized = _tokenize(path, scorer_dir, tmp_path, on_bad_record="skip")
    _score(path, tokenized, scorer_dir, tmp_path / "scores.parquet")
    assert len(_gather(path, tmp_path / "scores.parquet", tmp_path).read_text().splitlines()) == 5
    for changed in ('{"id": "bad", "text": "unterminated, still"', '{"id": "bad", "text": "fixed"}'):
        lines[2] = changed
        write_jsonl(path, lines)
        (tmp_path / "scored.jsonl").unlink(missing_ok=True)
        with pytest.raises(RuntimeError) as error:
            _gather(path, tmp_path / "scores.parquet", tmp_path)
        message = str(error.value)
        assert message.startswith(f"{path}:3: the corpus changed since it was tokenized") and RERUN in message
        assert not (tmp_path / "scored.jsonl").exists()


def test_shards_without_fingerprints_are_refused(scorer_dir, tmp_path):
    """Shards an lqs before fingerprints wrote: refused with the rerun, not read unchecked."""
    path = write_jsonl(tmp_path / "corpus.jsonl", tiny_corpus(6))
    tokenized = _tokenize(path, scorer_dir, tmp_path)
    _score(path, tokenized, scorer_dir, tmp_path / "scores.parquet")
    for shard in (tokenized, tmp_path / "scores.parquet"):
        pq.write_table(pq.read_table(shard).drop_columns(["fingerprint"]), shard)
    old = re.escape(f"{tokenized} has no record fingerprints") + ".*" + re.escape(RERUN)
    with pytest.raises(RuntimeError, match=old):
        _score(path, tokenized, scorer_dir, tmp_path / "again.parquet")
    with pytest.raises(RuntimeError, match=re.escape(f"{tmp_path / 'scores.parquet'} has no record fingerprints")):
        _gather(path, tmp_path / "scores.parquet", tmp_path)


# ---------------------------------------------------------------- the workflow


@pytest.mark.workflow
def test_text_edited_with_its_mtime_kept_stops_gather(completed_workflow, tmp_path):
    """Issue 20 item 5: one document's text edited, the file's size and mtime kept (as `cp -p` of
    a same-length edit does): nothing reruns for the corpus (planning sees sizes and times); the
    next gather_scores must not pair the new text with the old text's score, and scored.jsonl
    keeps the previous complete output."""
    workdir = copy_workflow(completed_workflow, tmp_path)
    corpus_path = workdir / "data" / "corpus.jsonl"
    before = {p: p.read_bytes() for p in (workdir / "scored.jsonl", workdir / "rejects.jsonl")}
    times = os.stat(corpus_path)
    lines = corpus_path.read_text(encoding="utf-8").splitlines(keepends=True)
    doc = json.loads(lines[6])
    doc["text"] = "An edited text that was never scored.".ljust(len(doc["text"]), "!")[:len(doc["text"])]
    lines[6] = json.dumps(doc) + "\n"
    corpus_path.write_text("".join(lines), encoding="utf-8")
    assert corpus_path.stat().st_size == times.st_size
    os.utime(corpus_path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert plan(workdir) == []  # Snakemake sees no change
    jobs = rule_counts(plan(workdir, "--forcerun", "gather_scores"))
    assert jobs["gather_scores"] == 1 and "tokenize_shard" not in jobs and "score_shard" not in jobs, jobs

    result = snakemake(workdir, "--forcerun", "gather_scores", check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    log = (workdir / "results" / "logs" / "gather_scores.log").read_text()
    errors = [line for line in log.splitlines() if "changed since" in line]
    assert len(errors) == 1 and "Traceback" not in log, log
    assert re.search(r"data/corpus\.jsonl:7: the corpus changed since it was scored .*" + re.escape(RERUN),
                     errors[0]), log
    assert {p: p.read_bytes() for p in before} == before  # the previous complete output, restored

    # what the message says reruns everything that read the corpus, through gather_scores
    jobs = rule_counts(plan(workdir, "--forcerun", "tokenize_shard"))
    shards = len(list((workdir / "results" / "corpus").glob("shard-*.parquet")))
    assert jobs["tokenize_shard"] == jobs["score_shard"] == shards and jobs["gather_scores"] == 1, jobs
