"""Several processes in one job (torchrun, gloo on CPU) give the results of one process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from lqs.runtime import STATS_PREFIX

pytestmark = [pytest.mark.distributed, pytest.mark.workflow]  # torchrun, on completed_workflow's files


def _lqs(*args: str, cwd) -> str:
    # a few seconds each; a rank that never exits fails here, not at pytest's 600 s
    run = subprocess.run([sys.executable, "-m", "lqs", *args], cwd=cwd, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stderr


def test_scorer_training_with_two_processes_matches_one(completed_workflow, tmp_path):
    """Same global batches, same gradients; dropout is switched off in the base because its masks
    are random draws that depend on how the batch is split."""
    results = completed_workflow / "results"
    base = tmp_path / "scorer_base"
    shutil.copytree(results / "models/scorer_base", base)
    config = json.loads((base / "config.json").read_text())
    config |= {k: 0.0 for k in ("dropout", "attention_dropout", "activation_dropout") if k in config}
    (base / "config.json").write_text(json.dumps(config))
    settings = json.dumps({"lr": 1e-3, "epochs": 2, "batch_size": 7, "warmup_steps": 1, "weight_decay": 0.01,
                           "clip": 1.0, "max_length": 32, "seed": 0, "device": "cpu", "trust_remote_code": False})
    for nproc in (1, 2):
        _lqs("train-scorer", str(results / "proxy/samples.parquet"), str(results / "annotation/labels.parquet"),
             str(base), "--out-dir", str(tmp_path / f"scorer-{nproc}"),
             "--settings", settings, "--nproc", str(nproc), cwd=tmp_path)
    one, two = (json.loads((tmp_path / f"scorer-{n}/metrics.json").read_text()) for n in (1, 2))
    assert two["processes"] == 2 and one["processes"] == 1
    for a, b in zip(one["history"], two["history"]):  # batch 7 over 2 ranks: uneven slices too
        for key in ("train_loss", "valid_mse", "valid_spearman"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a, b)
    p1, p2 = (pd.read_parquet(tmp_path / f"scorer-{n}/valid_predictions.parquet") for n in (1, 2))
    pd.testing.assert_frame_equal(p1[["sample_id", "label"]], p2[["sample_id", "label"]])  # every sample, once
    np.testing.assert_allclose(p1["prediction"], p2["prediction"], rtol=1e-4, atol=1e-5)
    w1, w2 = (load_file(str(tmp_path / f"scorer-{n}/model.safetensors")) for n in (1, 2))
    for name in w1:
        if name.endswith("k_proj.bias"):
            # Its exact gradient is 0 (softmax ignores a constant added to all of a query's
            # logits): Adam scales up rounding noise whose value depends on the summation order
            # (seen with torch 2.13). Both runs must keep it at noise level.
            assert w1[name].abs().max() < 1e-4 and w2[name].abs().max() < 1e-4, name
            continue
        np.testing.assert_allclose(w1[name].numpy(), w2[name].numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_grad_stats_with_two_processes_matches_one(completed_workflow, tmp_path):
    results = completed_workflow / "results"
    for nproc in (1, 2):
        settings = json.dumps({"step": 0, "part": 0, "num_parts": 1, "stats_dtype": "fp32", "micro_batch": 1,
                               "tf32": False, "compile": False, "device": "cpu", "trust_remote_code": False})
        log = _lqs("grad-stats", str(results / "proxy/samples.parquet"),
                   str(results / "annotation/trajectory/step-0.safetensors"), str(results / "models/proxy"),
                   "--out", str(tmp_path / f"stats-{nproc}.parquet"), "--settings", settings, "--nproc", str(nproc),
                   cwd=tmp_path)
        assert log.count(STATS_PREFIX) == 1, log  # one stats line per job, from rank 0 only
    one, two = (pd.read_parquet(tmp_path / f"stats-{n}.parquet") for n in (1, 2))
    assert len(one) == len(pd.read_parquet(results / "proxy/samples.parquet"))
    pd.testing.assert_frame_equal(one, two, rtol=1e-12)  # micro-batch 1: each sample alone, bit-stable
