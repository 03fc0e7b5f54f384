"""The benchmarks that build select_order's inputs themselves (a tokenized shard in
lqs.tokenize.SHARD_SCHEMA, gather_scores' index, scored.jsonl) still run on the stage as it is: run
at a tiny size, each completes and selects what it asks for."""

from __future__ import annotations

import json

from helpers import benchmark


def test_select_order_benchmark_runs(tmp_path):
    module = benchmark("select_order")
    settings = dict(selection=dict(method="top", ratio=0.5, threshold=None, temperature=1.0, seed=0),
                    ordering=dict(method="folding", folds=3, seed=0), score_field="score", output_format="jsonl",
                    config_sha256=None)
    row = module.run(tmp_path, 3000, 1, settings)
    assert (row["documents"], row["selected"]) == (3000, 1500)
    assert len((tmp_path / "selected.jsonl").read_text().splitlines()) == 1500


def test_scale_benchmark_select_case_runs(tmp_path, capsys):
    rows = []
    benchmark("scale").select(rows, tmp_path, 3000)
    (row,) = rows
    assert (row["case"], row["docs"]) == ("select_order", 3000)
    summary = json.loads((tmp_path / "select-3000" / "summary.json").read_text())
    assert (summary["documents_scored"], summary["documents_selected"]) == (3000, 1500)
