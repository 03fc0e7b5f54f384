"""Stage select_order (docs/maths.md#selection-and-ordering): selection and ordering against
brute-force constructions from their definitions, the byte-for-byte training set, bad settings, atomic output, and the
rerun plans of the workflow after selection.* or ordering.* edits."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import copy_workflow, edit_config, plan, rule_counts, set_key, snakemake, stage_function

from lqs import select as sel
from lqs import splits
from lqs.batch_scoring import INDEX_SCHEMA
from lqs.stages import select_order as select_order_stage
from lqs.tokenize import SHARD_SCHEMA

select_order = stage_function(select_order_stage)

SELECTION = dict(method="top", ratio=1.0, threshold=None, temperature=1.0, seed=0)
ORDERING = dict(method="folding", folds=3, seed=0)


# ----------------------------------------------------------------------------------------------
# brute force, from the definitions


def brute_folding(s: list, folds: int) -> list:
    out = []
    for i in range(folds):
        out += s[i::folds]
    return out


def brute_order(scores: list[float], method: str, folds: int = 3) -> list[int]:
    by_score = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    if method == "ascending":
        return by_score
    if method == "descending":
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if method == "folding":
        return brute_folding(by_score, folds)
    assert method == "input"
    return list(range(len(scores)))


def brute_top(keys: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(keys)), key=lambda i: (-keys[i], i))[:k])


def tied_scores(n: int, seed: int) -> np.ndarray:
    """Scores with many ties: a few distinct values."""
    return np.random.default_rng(seed).integers(0, 4, size=n).astype(np.float64) / 4


# ----------------------------------------------------------------------------------------------
# folding and orderings


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 12])
@pytest.mark.parametrize("folds", [1, 2, 3, 4, 13])
def test_folding_permutation_matches_definition(n, folds):
    assert sel.folding(n, folds).tolist() == brute_folding(list(range(n)), folds)


@pytest.mark.parametrize("n, folds", [(1, 3), (6, 1), (7, 3), (10, 2), (11, 4), (5, 9), (30, 3)])
def test_folding_order_sorts_ties_in_input_order(n, folds):
    scores = tied_scores(n, seed=n * 10 + folds)
    got = sel.order(scores, method="folding", folds=folds).tolist()
    assert got == brute_order(scores.tolist(), "folding", folds)
    if folds == 1:
        assert got == brute_order(scores.tolist(), "ascending")
    # every sweep rises from low to high score
    starts = np.cumsum([0] + [len(range(i, n, folds)) for i in range(folds)])
    for a, b in zip(starts[:-1], starts[1:]):
        assert (np.diff(scores[got[a:b]]) >= 0).all()


@pytest.mark.parametrize("method", ["ascending", "descending", "input"])
def test_orderings_match_definition(method):
    scores = tied_scores(25, seed=3)
    assert sel.order(scores, method=method).tolist() == brute_order(scores.tolist(), method)


def test_shuffle_is_a_seeded_permutation():
    scores = tied_scores(50, seed=4)
    a = sel.order(scores, method="shuffle", seed=1)
    assert sorted(a.tolist()) == list(range(50))
    assert a.tolist() == np.random.default_rng(1).permutation(50).tolist()
    assert a.tolist() == sel.order(scores, method="shuffle", seed=1).tolist()
    assert a.tolist() != sel.order(scores, method="shuffle", seed=2).tolist()


# ----------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize("ratio, n, k", [(1.0, 10, 10), (0.5, 11, 5), (0.29, 100, 29), (0.7, 10, 7),
                                         (0.1, 9, 0), (0.3, 30, 9)])
def test_top_keeps_floor_ratio_n_highest_ties_in_input_order(ratio, n, k):
    scores = tied_scores(n, seed=n)
    if k == 0:
        with pytest.raises(ValueError, match=r"selection\.ratio .* = 0 of the 9"):
            sel.select(scores, method="top", ratio=ratio)
        return
    chosen, cutoff = sel.select(scores, method="top", ratio=ratio)
    assert len(chosen) == k == round(ratio * 100) * n // 100
    assert chosen.tolist() == brute_top(scores.tolist(), k)
    assert cutoff == scores[chosen].min()
    rest = np.setdiff1d(np.arange(n), chosen)
    assert (scores[rest] <= cutoff).all()


@pytest.mark.parametrize("n", [17, 1000])
def test_top_ties_at_the_cutoff_go_to_the_earlier_documents(n):
    scores = np.where(np.random.default_rng(n).random(n) < 0.6, 0.0, -1.0)  # more zeros than kept
    chosen, cutoff = sel.select(scores, method="top", ratio=0.3)
    assert chosen.tolist() == np.flatnonzero(scores == 0.0)[:math.floor(0.3 * n)].tolist() and cutoff == 0.0


def test_threshold_keeps_scores_strictly_above():
    scores = np.array([0.5, 0.2, 0.7, 0.5, 0.9, 0.1])
    chosen, cutoff = sel.select(scores, method="threshold", threshold=0.5, ratio=0.1)  # ratio ignored
    assert chosen.tolist() == [2, 4] and cutoff == 0.5
    chosen, _ = sel.select(scores, method="threshold", threshold=-1)
    assert chosen.tolist() == list(range(6))


@pytest.mark.parametrize("seed", [0, 7])
def test_gumbel_is_top_k_of_seeded_noisy_keys(seed):
    scores = tied_scores(40, seed=5)
    chosen, cutoff = sel.select(scores, method="gumbel", ratio=0.25, temperature=0.3, seed=seed)
    keys = scores + 0.3 * np.random.default_rng(seed).gumbel(size=40)
    assert chosen.tolist() == brute_top(keys.tolist(), 10)
    assert cutoff == keys[chosen].min()
    again, _ = sel.select(scores, method="gumbel", ratio=0.25, temperature=0.3, seed=seed)
    assert again.tolist() == chosen.tolist()


def test_gumbel_seeds_differ_and_low_temperature_is_top():
    scores = np.random.default_rng(0).normal(size=200)
    a, _ = sel.select(scores, method="gumbel", ratio=0.5, temperature=1.0, seed=0)
    b, _ = sel.select(scores, method="gumbel", ratio=0.5, temperature=1.0, seed=1)
    assert a.tolist() != b.tolist() and len(a) == len(b) == 100
    cold, _ = sel.select(scores, method="gumbel", ratio=0.5, temperature=1e-12, seed=0)
    assert cold.tolist() == sel.select(scores, method="top", ratio=0.5)[0].tolist()


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="threshold", threshold=None), r"selection\.threshold .*null"),
    (dict(method="threshold", threshold=5.0), r"above selection\.threshold 5\.0"),
    (dict(method="top", ratio=0.01), r"selection\.ratio 0\.01 keeps floor"),
    (dict(method="gumbel", ratio=0.0), r"selection\.ratio must be in \(0, 1\]"),
    (dict(method="gumbel", temperature=0.0), r"selection\.temperature"),
    (dict(method="best"), r"selection\.method"),
])
def test_bad_selection_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sel.select(np.array([0.1, 0.2, 0.3]), **kwargs)


def test_no_documents_is_an_error():
    with pytest.raises(ValueError, match="no scored documents"):
        sel.select(np.zeros(0), method="top")


@pytest.mark.parametrize("kwargs, message", [(dict(method="folding", folds=0), r"ordering\.folds"),
                                             (dict(method="random"), r"ordering\.method")])
def test_bad_ordering_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sel.order(np.array([0.1, 0.2]), **kwargs)


# ----------------------------------------------------------------------------------------------
# the stage on files

FILES = ["a.jsonl", "b.jsonl", "c.jsonl"]  # the corpus's files (their names only: never read here)
SHARD_FILES = [["a.jsonl", "b.jsonl"], ["b.jsonl", "c.jsonl"]]  # b.jsonl cut across the two shards


def corpus_id(file_index: int, position: int) -> int:
    """A doc id by its definition (docs/stages.md#shards): the file's index, then the position in it."""
    return file_index * 2**40 + position


def write_shard(path: Path, rows: list[tuple], files: list[str], row_group_size: int | None = None) -> str:
    """A tokenized shard of `rows` (local doc id, window, input ids) that lists its corpus `files`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = SHARD_SCHEMA.with_metadata(splits.files_metadata(files))
    pq.write_table(pa.Table.from_pylist([dict(zip(SHARD_SCHEMA.names, r)) for r in rows], schema), path,
                   row_group_size=row_group_size)
    return str(path)


def write_index(path: Path, doc_ids, scores) -> str:
    """gather_scores' index of a scored output (batch_scoring.INDEX_SCHEMA)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table([pa.array(list(doc_ids), pa.int64()), pa.array(list(scores), pa.float64()),
                             pa.array([None] * len(doc_ids), pa.string())], schema=INDEX_SCHEMA), path)
    return str(path)


def make_inputs(root: Path, n_read: int = 30, rejected=(3, 4, 17), gather_rejected=(), seed: int = 0) -> dict:
    """A corpus of `n_read` documents (numbered in input order) in three files at made-up byte
    offsets, b.jsonl cut across the two shards: the tokenized shards (1-3 windows per document,
    ids local to the shard) without the documents tokenize_shard `rejected`; scored.jsonl (CRLF,
    non-ASCII, a last line without a newline) and gather_scores' index of it (corpus ids), which
    also leave out those gather rejected (`gather_rejected`, still in the tokenized shards)."""
    rng = np.random.default_rng(seed)
    file_of = [d * 3 // n_read for d in range(n_read)]
    positions, last = [], {}
    for f in file_of:
        last[f] = last.get(f, -1) + 1 + int(rng.integers(0, 200))  # increasing in each file
        positions.append(last[f])
    ids = [corpus_id(f, p) for f, p in zip(file_of, positions)]
    in_b = [d for d in range(n_read) if file_of[d] == 1]
    cut = in_b[len(in_b) // 2] if in_b else n_read  # b.jsonl from this document on: the second shard
    accepted = [d for d in range(n_read) if d not in rejected and d not in gather_rejected]
    scores = tied_scores(len(accepted), seed)
    lines = []
    for i, (doc, score) in enumerate(zip(accepted, scores)):
        end = b"\r\n" if i % 5 == 1 else b"\n"
        lines.append(json.dumps({"id": ids[doc], "text": f"d\u00e9j\u00e0 {doc} \u2028 x"}, ensure_ascii=False)
                     .encode()[:-1] + b', "score": ' + repr(float(score)).encode() + b"}" + end)
    if lines:
        lines[-1] = lines[-1].rstrip(b"\n")
    (root / "scored.jsonl").write_bytes(b"".join(lines))
    tokens, rows = {}, [[], []]
    for doc in range(n_read):
        if doc in rejected:
            continue
        windows = [int(rng.integers(1, 9)) for _ in range(int(rng.integers(1, 4)))]
        tokens[doc] = sum(windows)
        shard = 0 if doc < cut else 1
        local_file = SHARD_FILES[shard].index(FILES[file_of[doc]])
        rows[shard] += [(corpus_id(local_file, positions[doc]), w, list(range(length)))
                        for w, length in enumerate(windows)]
    shards = [write_shard(root / "corpus" / f"shard-{s}.parquet", rows[s], SHARD_FILES[s]) for s in range(2)]
    index = write_index(root / "scores" / "index.parquet", [ids[d] for d in accepted], scores)
    return dict(accepted=accepted, scores=scores, lines=lines, tokens=tokens, shards=shards, ids=ids, index=index)


def run_stage(root: Path, inputs: dict, selection=None, ordering=None, **paths):
    args = dict(out=str(root / "selected.jsonl"), order_out=str(root / "selection" / "order.parquet"),
                summary_out=str(root / "selection" / "summary.json")) | paths
    return select_order(str(root / "scored.jsonl"), inputs["index"], inputs["shards"], **args,
                        selection=SELECTION | (selection or {}), ordering=ORDERING | (ordering or {}),
                        score_field="score")


@pytest.mark.parametrize("ordered", [True, False], ids=["in document order", "shuffled"])
def test_summed_runs_against_a_dictionary(ordered):
    """Each id once, ascending, with its counts summed: the linear pass over ids in order and the
    sort for ids out of order, against a sum per id."""
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 50, 1000):
        ids = np.sort(rng.integers(0, max(n // 3, 1), n)).astype(np.int64)
        if not ordered:
            ids = rng.permutation(ids)
        counts = rng.integers(0, 2**60, n).astype(np.int64) // max(n, 1)  # sums beyond float64's 2**53
        expected = {}
        for i, c in zip(ids.tolist(), counts.tolist()):
            expected[i] = expected.get(i, 0) + c
        got_ids, got_counts = sel._summed_runs(ids, counts)
        assert got_ids.tolist() == sorted(expected)
        assert got_counts.tolist() == [expected[i] for i in sorted(expected)]
        assert got_counts.dtype == np.int64


@pytest.mark.parametrize("row_group_size", [1, 2, 1000])
def test_document_tokens_sum_every_window(tmp_path, row_group_size):
    """Tokens per document, by corpus doc id: a shard's local ids made the corpus's (x.jsonl, cut
    across two shards, is file 1 of the first and file 0 of the second), a document whose windows
    lie in two shards counted once, an empty shard adding nothing."""
    rng = np.random.default_rng(row_group_size)
    corpus_files = ["w.jsonl", "x.jsonl", "y.jsonl", "z.jsonl"]
    files = [["w.jsonl", "x.jsonl"], ["x.jsonl", "y.jsonl"], ["z.jsonl"]]
    docs = [("w.jsonl", 0, [0]), ("w.jsonl", 40, [0]), ("x.jsonl", 7, [0]), ("x.jsonl", 900, [0, 1]),
            ("x.jsonl", 1500, [1]), ("y.jsonl", 3, [1])]  # (file, position, the shards of its windows)
    rows, expected = [[], [], []], {}
    for name, position, in_shards in docs:
        for w in range(int(rng.integers(2, 5))):
            shard = in_shards[min(w, len(in_shards) - 1)]
            length = int(rng.integers(1, 9))
            rows[shard].append((corpus_id(files[shard].index(name), position), w, list(range(length))))
            doc = corpus_id(corpus_files.index(name), position)
            expected[doc] = expected.get(doc, 0) + length
    paths = [write_shard(tmp_path / f"shard-{s}.parquet", rows[s], files[s], row_group_size) for s in range(3)]
    doc_ids, tokens = sel.document_tokens(paths)
    assert doc_ids.tolist() == sorted(expected)
    assert tokens.tolist() == [expected[d] for d in sorted(expected)]


@pytest.mark.parametrize("selection, ordering", [
    (dict(method="top", ratio=0.5), dict(method="folding", folds=3)),
    (dict(method="threshold", threshold=0.3), dict(method="descending")),
    (dict(method="gumbel", ratio=0.4, temperature=0.5, seed=3), dict(method="shuffle", seed=2)),
    (dict(method="top", ratio=1.0), dict(method="input")),
])
def test_stage_writes_selected_lines_byte_for_byte_in_training_order(tmp_path, selection, ordering):
    inputs = make_inputs(tmp_path)
    summary = run_stage(tmp_path, inputs, selection, ordering)
    scores, accepted, ids = inputs["scores"], inputs["accepted"], inputs["ids"]
    chosen, cutoff = sel.select(scores, **SELECTION | selection)
    positions = chosen[sel.order(scores[chosen], **ORDERING | ordering)]

    expected = b"".join(inputs["lines"][i] if inputs["lines"][i].endswith(b"\n") else inputs["lines"][i] + b"\n"
                        for i in positions)
    assert (tmp_path / "selected.jsonl").read_bytes() == expected
    assert b"\r\n" in expected or len(positions) < 10

    table = pq.read_table(tmp_path / "selection" / "order.parquet")
    assert table.schema == sel.ORDER_SCHEMA
    assert table["doc_id"].to_pylist() == [ids[accepted[i]] for i in positions]
    assert table["score"].to_pylist() == scores[positions].tolist()
    assert table["tokens"].to_pylist() == [inputs["tokens"][accepted[i]] for i in positions]
    records = [json.loads(line) for line in expected.splitlines()]
    assert [r["id"] for r in records] == table["doc_id"].to_pylist()

    assert summary == json.loads((tmp_path / "selection" / "summary.json").read_text())
    assert summary["documents_scored"] == len(accepted) == 27
    assert summary["documents_selected"] == len(positions)
    assert summary["tokens_scored"] == sum(inputs["tokens"].values())
    assert summary["tokens_selected"] == sum(table["tokens"].to_pylist())
    assert summary["score_cutoff"] == cutoff
    assert summary["lowest_selected_score"] == min(table["score"].to_pylist())
    assert summary["selection"] == SELECTION | selection and summary["ordering"] == ORDERING | ordering
    if selection["method"] == "top":
        assert len(positions) == math.floor(selection["ratio"] * 27)


def test_rejected_documents_are_never_selected(tmp_path):
    """Documents tokenize_shard rejected are in no input; those gather_scores rejected are in the
    tokenized shards but not its index: neither is selected nor counted in the tokens scored."""
    rejected, gather_rejected = (0, 5, 6), (7, 29)
    inputs = make_inputs(tmp_path, rejected=rejected, gather_rejected=gather_rejected)
    summary = run_stage(tmp_path, inputs, dict(method="threshold", threshold=-1.0))
    ids = pq.read_table(tmp_path / "selection" / "order.parquet")["doc_id"].to_pylist()
    assert sorted(ids) == [inputs["ids"][d] for d in inputs["accepted"]]
    assert not set(ids) & {inputs["ids"][d] for d in rejected + gather_rejected}
    assert summary["documents_scored"] == summary["documents_selected"] == 25
    assert summary["tokens_scored"] == sum(inputs["tokens"][d] for d in inputs["accepted"])
    assert summary["tokens_scored"] < sum(inputs["tokens"].values())


def test_count_mismatch_names_the_files_and_the_fix(tmp_path):
    """A scored output that does not hold the documents the index lists is stale: rerun gather_scores."""
    inputs = make_inputs(tmp_path)
    inputs["lines"][-1] += b"\n"
    (tmp_path / "scored.jsonl").write_bytes(b"".join(inputs["lines"][:-2]))
    with pytest.raises(RuntimeError, match=r"scored\.jsonl does not hold the 27 documents gather_scores "
                                           r"indexed; rerun gather_scores"):
        run_stage(tmp_path, inputs)
    assert not (tmp_path / "selected.jsonl").exists()


@pytest.mark.parametrize("change, message", [
    (lambda ids: ids[:-1] + [ids[-1] + 1], "indexes documents the tokenized corpus does not have"),
    (lambda ids: [ids[1], ids[0]] + ids[2:], "documents not in input order"),
    (lambda ids: ids[:1] + ids[:-1], "documents not in input order"),
], ids=["unknown id", "out of order", "repeated id"])
def test_an_index_the_tokenized_corpus_does_not_match_is_refused(tmp_path, change, message):
    inputs = make_inputs(tmp_path)
    ids = [inputs["ids"][d] for d in inputs["accepted"]]
    write_index(Path(inputs["index"]), change(ids), inputs["scores"])
    with pytest.raises(RuntimeError, match=f"index.parquet.*{message}.*; rerun gather_scores"):
        run_stage(tmp_path, inputs)
    assert not (tmp_path / "selected.jsonl").exists()


def test_empty_index_is_an_error_naming_the_file(tmp_path):
    inputs = make_inputs(tmp_path, n_read=3, rejected=(0, 1, 2))
    assert (tmp_path / "scored.jsonl").read_bytes() == b""
    with pytest.raises(ValueError, match=r"index\.parquet indexes no document"):
        run_stage(tmp_path, inputs)
    assert not (tmp_path / "selected.jsonl").exists()


@pytest.mark.parametrize("bad", [b'{"id": 1, "text": "x"\n', b'{"id": 1, "score": NaN}\n',
                                 b'{"id": 1, "score": "0.5"}\n', b'{"id": 1}\n',
                                 b'{"n": ' + b"9" * 5000 + b', "score": -1.5}\n',
                                 b'{"deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"],
                         ids=["invalid JSON", "NaN", "string", "no score", "huge integer", "deep"])
def test_scores_come_from_the_index_and_lines_are_copied_unparsed(tmp_path, bad):
    """select_order reads no score from the scored output (gather_scores' index holds them): a line
    is copied byte for byte, whatever it holds, and its document keeps the index's score."""
    inputs = make_inputs(tmp_path)
    inputs["lines"][2] = bad
    (tmp_path / "scored.jsonl").write_bytes(b"".join(inputs["lines"]))
    run_stage(tmp_path, inputs, ordering=dict(method="input"))
    selected = (tmp_path / "selected.jsonl").read_bytes().splitlines(keepends=True)
    assert len(selected) == 27 and selected[2] == bad
    table = pq.read_table(tmp_path / "selection" / "order.parquet")
    assert table["score"].to_pylist() == inputs["scores"].tolist()
    assert table["doc_id"].to_pylist() == [inputs["ids"][d] for d in inputs["accepted"]]


def test_scored_records_spans_every_line_and_checks_the_count(tmp_path):
    inputs = make_inputs(tmp_path)
    path = str(tmp_path / "scored.jsonl")
    records = sel.scored_records([path], "jsonl", 27)
    assert records.count == 27 and records.files(np.arange(27)).tolist() == [0] * 27
    data = Path(path).read_bytes()
    assert [data[a:a + n] for a, n in zip(records.starts, records.lengths)] == inputs["lines"]
    for count in (26, 28):
        with pytest.raises(RuntimeError, match=f"does not hold the {count} documents gather_scores indexed"):
            sel.scored_records([path], "jsonl", count)


def test_jsonl_parts_give_the_lines_at_any_positions(tmp_path):
    """Parts of a per_shard output (one empty, one whose last line has no newline): each position's
    line, in the order asked, against the parts' lines laid end to end."""
    parts = [b'{"a": 1}\n{"a": 2}\n', b"", b'{"a": 3}\r\n{"a": 4}\n{"a": 5}', b'{"a": 6}\n']
    paths = []
    for i, data in enumerate(parts):
        paths.append(str(tmp_path / f"part-{i}.jsonl"))
        Path(paths[-1]).write_bytes(data)
    lines = [line if line.endswith(b"\n") else line + b"\n"
             for data in parts for line in data.splitlines(keepends=True)]
    records = sel.scored_records(paths, "jsonl", len(lines))
    assert records.files(np.arange(len(lines))).tolist() == [0, 0, 2, 2, 2, 3]
    positions = np.random.default_rng(4).permutation(len(lines))[:5]
    assert list(records.take(positions)) == [lines[p] for p in positions]


def test_failure_keeps_the_previous_output_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    inputs = make_inputs(tmp_path)
    run_stage(tmp_path, inputs)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"selection\.threshold"):
        run_stage(tmp_path, inputs, dict(method="threshold", threshold=2.0))

    calls, pread = [], os.pread

    def failing_pread(fd, n, offset):
        calls.append(offset)
        if len(calls) == 5:
            raise OSError("disk gone")
        return pread(fd, n, offset)

    monkeypatch.setattr(sel.os, "pread", failing_pread)
    with pytest.raises(OSError, match="disk gone"):
        run_stage(tmp_path, inputs, dict(method="top", ratio=0.5))
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_cli_runs_the_stage_and_reports_errors_without_traceback(tmp_path):
    inputs = make_inputs(tmp_path)
    out = tmp_path / "selected.jsonl"

    def cli(selection):
        settings = json.dumps(dict(selection=SELECTION | selection, ordering=ORDERING, score_field="score",
                                   output_format="jsonl", config_sha256=None))
        return subprocess.run([sys.executable, "-m", "lqs", "select-order", "--scored", str(tmp_path / "scored.jsonl"),
                               "--scores-index", inputs["index"], "--shard-paths", *inputs["shards"],
                               "--out", str(out), "--order-out", str(tmp_path / "o.parquet"),
                               "--summary-out", str(tmp_path / "s.json"), "--settings", settings],
                              capture_output=True, text=True)

    done = cli(dict(ratio=0.5))
    assert done.returncode == 0, done.stderr
    assert len(out.read_bytes().splitlines()) == 13
    failed = cli(dict(method="threshold"))
    assert failed.returncode == 1
    assert "selection.threshold" in failed.stderr and "Traceback" not in failed.stderr


# ----------------------------------------------------------------------------------------------
# the workflow: reruns after selection.* or ordering.* edits


@pytest.fixture(scope="module")
def selected_workflow(completed_workflow, tmp_path_factory) -> Path:
    """A copy of the completed tiny workflow with select_order run on it (defaults)."""
    workdir = copy_workflow(completed_workflow, tmp_path_factory.mktemp("selected"))
    snakemake(workdir, "selected.jsonl")
    return workdir


@pytest.mark.workflow
def test_workflow_selected_jsonl_is_scored_jsonl_folded(selected_workflow):
    scored = (selected_workflow / "scored.jsonl").read_bytes().splitlines(keepends=True)
    selected = (selected_workflow / "selected.jsonl").read_bytes().splitlines(keepends=True)
    scores = [json.loads(line)["score"] for line in scored]
    assert selected == [scored[i] for i in brute_order(scores, "folding", 3)]
    summary = json.loads((selected_workflow / "results" / "selection" / "summary.json").read_text())
    assert summary["documents_scored"] == summary["documents_selected"] == 120
    table = pq.read_table(selected_workflow / "results" / "corpus" / "shard-0.parquet")
    assert summary["tokens_scored"] > len(table)  # sums of window lengths, not window counts
    assert plan(selected_workflow, "selected.jsonl") == []


@pytest.mark.parametrize("edit", [
    set_key("ordering", "method", "shuffle"), set_key("ordering", "folds", 5), set_key("ordering", "seed", 1),
    set_key("selection", "ratio", 0.5), set_key("selection", "method", "gumbel"),
    set_key("selection", "temperature", 2.0), set_key("selection", "seed", 1),
    set_key("selection", "threshold", 0.0),
], ids=["ordering.method", "ordering.folds", "ordering.seed", "selection.ratio", "selection.method",
        "selection.temperature", "selection.seed", "selection.threshold"])
@pytest.mark.workflow
def test_selection_or_ordering_edit_plans_only_select_order(selected_workflow, tmp_path, edit):
    workdir = copy_workflow(selected_workflow, tmp_path)
    edit_config(workdir, edit)
    jobs = plan(workdir, "selected.jsonl")
    assert rule_counts(jobs) == {"select_order": 1}
    assert jobs[0]["reason"].startswith("Params have changed"), jobs


@pytest.mark.workflow
def test_score_field_edit_replans_gather_and_selection(selected_workflow, tmp_path):
    """With a single output, a record holding the score field is a bad record for gather_scores
    (tokenize_shard checks the output's fields with layout per_shard only), so a new name replans
    gather_scores and select_order, and no shard."""
    workdir = copy_workflow(selected_workflow, tmp_path)
    edit_config(workdir, set_key("output", "score_field", "lqs_score"))
    assert rule_counts(plan(workdir, "selected.jsonl")) == {"gather_scores": 1, "select_order": 1}


@pytest.mark.workflow
def test_workflow_ratio_edit_reruns_to_the_new_selection(selected_workflow, tmp_path):
    workdir = copy_workflow(selected_workflow, tmp_path)
    edit_config(workdir, set_key("selection", "ratio", 0.25))
    snakemake(workdir, "selected.jsonl")
    summary = json.loads((workdir / "results" / "selection" / "summary.json").read_text())
    assert summary["documents_selected"] == 30 == len((workdir / "selected.jsonl").read_bytes().splitlines())
    scored = [json.loads(line)["score"] for line in (workdir / "scored.jsonl").read_bytes().splitlines()]
    assert summary["score_cutoff"] == sorted(scored, reverse=True)[29]
    assert plan(workdir, "selected.jsonl") == []


def test_damaged_tokenized_shard_is_named(tmp_path):
    shard = tmp_path / "shard-0.parquet"
    write_shard(shard, [(0, 0, [1, 2])], ["a.jsonl"])
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(ValueError, match=f"{shard} is not a readable Parquet file"):
        sel.document_tokens([str(shard)])
