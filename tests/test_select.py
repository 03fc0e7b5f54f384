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


def make_inputs(root: Path, n_read: int = 30, rejected=(3, 4, 17), num_shards: int = 2,
                seed: int = 0) -> dict:
    """scored.jsonl (the accepted documents, with CRLF, non-ASCII and a last line without a
    newline) and tokenized shards (doc_id % num_shards) with 1-3 windows per document."""
    rng = np.random.default_rng(seed)
    accepted = [d for d in range(n_read) if d not in rejected]
    scores = tied_scores(len(accepted), seed)
    lines = []
    for i, (doc, score) in enumerate(zip(accepted, scores)):
        end = b"\r\n" if i % 5 == 1 else b"\n"
        lines.append(json.dumps({"id": doc, "text": f"d\u00e9j\u00e0 {doc} \u2028 x"}, ensure_ascii=False)
                     .encode()[:-1] + b', "score": ' + repr(float(score)).encode() + b"}" + end)
    if lines:
        lines[-1] = lines[-1].rstrip(b"\n")
    (root / "scored.jsonl").write_bytes(b"".join(lines))
    tokens, rows = {}, {s: [] for s in range(num_shards)}
    for doc in accepted:
        windows = [int(rng.integers(1, 9)) for _ in range(int(rng.integers(1, 4)))]
        tokens[doc] = sum(windows)
        rows[doc % num_shards] += [(doc, w, list(range(length))) for w, length in enumerate(windows)]
    shards = []
    for s in range(num_shards):
        path = root / "corpus" / f"shard-{s}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([dict(zip(SHARD_SCHEMA.names, r)) for r in rows[s]], SHARD_SCHEMA),
                       path)
        shards.append(str(path))
    return dict(accepted=accepted, scores=scores, lines=lines, tokens=tokens, shards=shards)


def run_stage(root: Path, inputs: dict, selection=None, ordering=None, **paths):
    args = dict(out=str(root / "selected.jsonl"), order_out=str(root / "selection" / "order.parquet"),
                summary_out=str(root / "selection" / "summary.json")) | paths
    return select_order(str(root / "scored.jsonl"), inputs["shards"], **args,
                        selection=SELECTION | (selection or {}), ordering=ORDERING | (ordering or {}),
                        score_field="score")


@pytest.mark.parametrize("row_group_size", [1, 2, 1000])
def test_document_tokens_sum_every_window(tmp_path, row_group_size):
    rng = np.random.default_rng(row_group_size)
    rows = [(doc, w, list(range(int(rng.integers(1, 9))))) for doc in (9, 2, 4, 11, 0)
            for w in range(int(rng.integers(1, 5)))]
    expected = {}
    for doc, _, ids in rows:
        expected[doc] = expected.get(doc, 0) + len(ids)
    paths = []
    for s, part in enumerate((rows[:5], rows[5:], [])):  # shards in any order, one empty
        paths.append(str(tmp_path / f"shard-{s}.parquet"))
        pq.write_table(pa.Table.from_pylist([dict(zip(SHARD_SCHEMA.names, r)) for r in part], SHARD_SCHEMA),
                       paths[-1], row_group_size=row_group_size)
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
    scores, accepted = inputs["scores"], inputs["accepted"]
    chosen, cutoff = sel.select(scores, **SELECTION | selection)
    positions = chosen[sel.order(scores[chosen], **ORDERING | ordering)]

    expected = b"".join(inputs["lines"][i] if inputs["lines"][i].endswith(b"\n") else inputs["lines"][i] + b"\n"
                        for i in positions)
    assert (tmp_path / "selected.jsonl").read_bytes() == expected
    assert b"\r\n" in expected or len(positions) < 10

    table = pq.read_table(tmp_path / "selection" / "order.parquet")
    assert table.schema == sel.ORDER_SCHEMA
    assert table["doc_id"].to_pylist() == [accepted[i] for i in positions]
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
    rejected = (0, 5, 6, 7, 29)
    inputs = make_inputs(tmp_path, rejected=rejected)
    summary = run_stage(tmp_path, inputs, dict(method="threshold", threshold=-1.0))
    ids = pq.read_table(tmp_path / "selection" / "order.parquet")["doc_id"].to_pylist()
    assert sorted(ids) == inputs["accepted"] and not set(ids) & set(rejected)
    assert summary["documents_scored"] == summary["documents_selected"] == 25


def test_count_mismatch_names_the_files_and_the_fix(tmp_path):
    inputs = make_inputs(tmp_path)
    inputs["lines"][-1] += b"\n"
    (tmp_path / "scored.jsonl").write_bytes(b"".join(inputs["lines"][:-2]))
    with pytest.raises(RuntimeError, match=r"scored\.jsonl has 25 lines but the tokenized corpus has "
                                           r"27 documents; rerun gather_scores"):
        run_stage(tmp_path, inputs)


def test_empty_scored_jsonl_is_an_error_naming_the_file(tmp_path):
    inputs = make_inputs(tmp_path, n_read=3, rejected=(0, 1, 2))
    (tmp_path / "scored.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"scored\.jsonl has no documents"):
        run_stage(tmp_path, inputs)
    assert not (tmp_path / "selected.jsonl").exists()


@pytest.mark.parametrize("bad, message", [
    (b'{"id": 1, "text": "x"\n', r"scored\.jsonl:3: invalid JSON"),
    (b"\n", r"scored\.jsonl:3: an empty line"),
    (b'{"id": 1, "score": NaN}\n', r"scored\.jsonl:3: field 'score' \(output\.score_field\) is nan"),
    (b'{"id": 1, "score": "0.5"}\n', r"scored\.jsonl:3: field 'score' .* is '0\.5'"),
    (b'{"id": 1}\n', r"scored\.jsonl:3: field 'score' .* is None"),
])
def test_bad_scored_line_names_file_and_line(tmp_path, bad, message):
    inputs = make_inputs(tmp_path)
    inputs["lines"][2] = bad
    (tmp_path / "scored.jsonl").write_bytes(b"".join(inputs["lines"]))
    with pytest.raises(ValueError, match=message):
        run_stage(tmp_path, inputs)


def test_fast_and_exact_score_parsers_agree(tmp_path):
    inputs = make_inputs(tmp_path)
    path = str(tmp_path / "scored.jsonl")
    scores, starts, lengths = sel.read_scored(path, "score")
    assert scores.tolist() == sel._scores_python(path, "score").tolist() == inputs["scores"].tolist()
    data = Path(path).read_bytes()
    assert [data[a:a + n] for a, n in zip(starts, lengths)] == inputs["lines"]


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
                                   output_format="jsonl", layout="single", config_sha256=None))
        return subprocess.run([sys.executable, "-m", "lqs", "select-order", "--scored", str(tmp_path / "scored.jsonl"),
                               "--shard-paths", *inputs["shards"], "--out", str(out),
                               "--order-out", str(tmp_path / "o.parquet"),
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
def test_score_field_edit_replans_from_tokenization(selected_workflow, tmp_path):
    """Which records are bad depends on the score field (a record holding it is rejected at
    tokenization), so a new name replans every stage from tokenize_shard to select_order."""
    workdir = copy_workflow(selected_workflow, tmp_path)
    edit_config(workdir, set_key("output", "score_field", "lqs_score"))
    counts = rule_counts(plan(workdir, "selected.jsonl"))
    shards = len(list((workdir / "results" / "corpus").glob("shard-*.parquet")))
    assert counts["tokenize_shard"] == shards and counts["gather_scores"] == 1 and counts["select_order"] == 1


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


def test_damaged_inputs_are_named_and_huge_integers_read(tmp_path):
    """A truncated tokenized shard names its file; a line nested too deeply names its line; an
    integer of more than 4,300 digits (which gather keeps) is read, by either parser."""
    shard = tmp_path / "shard-0.parquet"
    pq.write_table(pa.table({"doc_id": pa.array([0], pa.int64()), "window": pa.array([0], pa.int32()),
                             "input_ids": pa.array([[1, 2]], pa.list_(pa.int32()))}), shard)
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(ValueError, match=f"{shard} is not a readable Parquet file"):
        sel.document_tokens([str(shard)])
    scored = tmp_path / "scored.jsonl"
    scored.write_text('{"text": "ok", "score": 0.5}\n{"n": ' + "9" * 5000 + ', "score": -1.5}\n')
    assert sel._scores_python(str(scored), "score").tolist() == [0.5, -1.5]
    assert sel.read_scored(str(scored), "score")[0].tolist() == [0.5, -1.5]
    scored.write_text('{"text": "ok", "score": 0.5}\n{"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "score": 1.0}\n')
    with pytest.raises(ValueError, match=f"{scored}:2: invalid JSON"):
        sel._scores_python(str(scored), "score")
