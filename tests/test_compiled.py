"""torch.compile in lqs (lqs.runtime.compiled; docs/configuration.md#compiled-kernels-annotationcompile).

annotation.compile: the per-sample statistics' reductions through torch.compile and the
trajectory's multi-tensor updates give the eager paths' values on a CPU (inductor compiles with
the installed C++ compiler). inference.compile: the scorer's forward at static shapes gives the
uncompiled scores. Where compiling fails, the eager path runs and one warning says so, once per
process. In one file, so that one test process pays inductor's first-compile setup (precompiled
headers, CPU feature probes: ~15 s on a fresh cache) for all of them."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from helpers import shard_settings, stage_function, tiny_corpus, tiny_scorer, write_jsonl, write_plan
from tiny_lm import LR, T, brute_sample_stats, random_samples, rel_err, run_solve, tiny_mistral

import lqs.scorer
from lqs import per_sample, runtime, scorer_windows
from lqs.costate import _axpy, hvp
from lqs.per_sample import per_sample_stats
from lqs.proxy import get_params
from lqs.stages import tokenize_scorer_shard, tokenize_shard

# The fast path's fp32 exactness (tests/test_annotation.py's STATS_TOL): compiled against eager,
# and against the float64 brute force.
STATS_TOL = 1e-5
WHAT = "the per-sample statistics' reductions"  # as the fallback's warning names them




@pytest.fixture(scope="module")
def fp32_case():
    """A tiny fp32 Mistral, samples of mixed lengths and λ; one micro-batch of all 7 samples, so
    that the compiled reductions see a single batch size (one compilation per parameter shape).
    At 7 tokens, the norms' and the key/value projections' per-sample gradients are materialised
    (two shapes, each compiled: a C++ build of a few seconds), and the wider layers take the Gram form."""
    model = tiny_mistral(dtype=torch.float32)
    torch.manual_seed(26)  # dots spread over 25x (the test's last check)
    samples = random_samples(6, lo=4, hi=7) + random_samples(1, lo=7, hi=7)
    lam = {k: torch.randn_like(v) for k, v in get_params(model).items()}
    eager = per_sample_stats(model, samples, lam, "fp32", micro_batch=7)
    return model, samples, lam, eager


@pytest.fixture
def fresh_compiled():
    """The process-wide compiled reduction rebuilt for this test, and after it (its fallback is
    permanent for the process)."""
    per_sample._compiled_row_stats.cache_clear()
    yield
    per_sample._compiled_row_stats.cache_clear()


def test_compiled_stats_equal_eager_and_brute_force(fp32_case, caplog):
    model, samples, lam, (eager_norms, eager_dots) = fp32_case
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with caplog.at_level(logging.WARNING):
        norms, dots = per_sample_stats(model, samples, lam, "fp32", micro_batch=7, compile=True)
    reductions = per_sample._compiled_row_stats()
    assert reductions.call is not reductions.fn, "fell back to eager: nothing was compiled"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 2  # one per shape (fixture)
    assert WHAT not in caplog.text
    scale = np.abs(eager_dots).max()
    np.testing.assert_allclose(norms, eager_norms, rtol=STATS_TOL)
    np.testing.assert_allclose(dots, eager_dots, rtol=0, atol=STATS_TOL * scale)

    ref_norms, ref_dots = brute_sample_stats(copy.deepcopy(model).double(), samples,
                                             {k: v.double() for k, v in lam.items()})
    np.testing.assert_allclose(norms, ref_norms, rtol=STATS_TOL)
    np.testing.assert_allclose(dots, ref_dots, rtol=0, atol=STATS_TOL * np.abs(ref_dots).max())
    assert np.abs(ref_dots).max() > 10 * np.abs(ref_dots).min()  # the tolerance does not hide small dots


class CompilerFailure(RuntimeError):
    pass


def failing_compile(where: str):
    """torch.compile replaced: it fails itself ("compile"), or returns a function whose calls
    fail as inductor's do when no C++ compiler runs ("call")."""
    def fail(*args, **kwargs):
        raise CompilerFailure("InvalidCxxCompiler: no working C++ compiler found")

    return fail if where == "compile" else lambda fn, **options: fail


@pytest.mark.parametrize("where", ["compile", "call"])
def test_failed_compilation_falls_back_to_eager_with_one_warning(where, fp32_case, fresh_compiled, monkeypatch,
                                                                  caplog):
    model, samples, lam, (eager_norms, eager_dots) = fp32_case
    monkeypatch.setattr(torch, "compile", failing_compile(where))
    with caplog.at_level(logging.WARNING):
        runs = [per_sample_stats(model, samples, lam, "fp32", micro_batch=3, compile=True) for _ in range(2)]
    for norms, dots in runs:  # the eager reductions, micro-batched otherwise: equal to rounding
        np.testing.assert_allclose(norms, eager_norms, rtol=STATS_TOL)
        np.testing.assert_allclose(dots, eager_dots, rtol=0, atol=STATS_TOL * np.abs(eager_dots).max())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and WHAT in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "no working C++ compiler" in warnings[0]  # says why
    eager_again = per_sample_stats(model, samples, lam, "fp32", micro_batch=3)
    np.testing.assert_array_equal(runs[0][0], eager_again[0])  # the very eager code ran
    np.testing.assert_array_equal(runs[0][1], eager_again[1])


def test_multi_tensor_updates_equal_eager():
    model = tiny_mistral(dtype=torch.float32)
    torch.manual_seed(22)
    theta = get_params(model)
    step = {k: torch.randn_like(v) for k, v in theta.items()}
    eager, fused = _axpy(-LR, step, theta), _axpy(-LR, step, theta, fused=True)
    assert list(fused) == list(eager)
    for k in eager:
        torch.testing.assert_close(fused[k], eager[k], rtol=1e-6, atol=1e-7)
        assert not torch.equal(fused[k], theta[k])

    samples = random_samples(5)
    for micro_batch in (2, 5):  # the same additions, multi-tensor: equal bit for bit
        want, got = hvp(model, samples, step, micro_batch), hvp(model, samples, step, micro_batch, fused=True)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_fused_trajectory_equals_eager():
    """solve with fused updates: θ_t, λ_{t+1} and the log equal the eager solve's to fp32 rounding."""
    model = tiny_mistral(dtype=torch.float32)
    torch.manual_seed(23)
    batches = [random_samples(3) for _ in range(T)]
    target = random_samples(3)
    theta0 = get_params(model)
    eager_saved, eager_record = run_solve(model, theta0, batches, target, None)
    saved, record = run_solve(model, theta0, batches, target, None, fused=True)
    assert sorted(saved) == list(range(T))
    for t in range(T):
        for got, want in zip(saved[t], eager_saved[t]):
            names = list(want)
            err = rel_err(torch.cat([got[k].flatten() for k in names]), torch.cat([want[k].flatten() for k in names]))
            assert err < 1e-5, (t, err)
    for key in ("train_loss", "target_loss", "lambda_norm"):
        assert [x is None for x in record[key]] == [x is None for x in eager_record[key]], key
        assert [x for x in record[key] if x is not None] == pytest.approx(
            [x for x in eager_record[key] if x is not None], rel=1e-5), key


# ---------------------------------------------------------------- inference.compile


@pytest.fixture(scope="module")
def scorer_and_windows(tmp_path_factory):
    """A tiny scorer and the windows file tokenize_scorer_shard makes for it from a small corpus."""
    root = tmp_path_factory.mktemp("scoring")
    scorer_dir = tiny_scorer(root)
    corpus = write_jsonl(root / "corpus.jsonl", tiny_corpus(30, seed=3))
    plan_path, plan = write_plan(root, [corpus])
    stage_function(tokenize_shard)(plan_path, "0", str(scorer_dir), str(root / "tok.parquet"),
                                   str(root / "rejects.jsonl"), max_length=32, on_bad_record="error",
                                   **shard_settings(plan))
    stage_function(tokenize_scorer_shard)(plan_path, "0", str(root / "tok.parquet"), str(scorer_dir),
                                          str(root / "windows.parquet"), max_length=None, chunk_docs=8,
                                          max_windows_per_doc=None, **shard_settings(plan))
    return scorer_dir, root / "windows.parquet"


def test_compiled_scoring_gives_the_uncompiled_scores(scorer_and_windows):
    """inference.compile: static shapes (widths padded to 64, rows to the budget) through
    torch.compile; the scores are the eager path's."""
    scorer_dir, windows = scorer_and_windows
    eager, compiled = (lqs.scorer.load(scorer_dir, "cpu", compile=c) for c in (False, True))
    for chunk in scorer_windows.read_chunks(str(windows)):
        np.testing.assert_allclose(compiled.score_chunk(chunk, 256), eager.score_chunk(chunk, 256), rtol=1e-5,
                                   atol=1e-6)
    assert compiled.forward.call is not compiled.forward.fn  # it did compile, and did not fall back


def test_where_compiling_fails_the_model_runs_uncompiled_with_one_warning(monkeypatch, caplog):
    calls = []

    def broken_compile(fn, **options):
        def call(*args):
            calls.append(args)
            raise RuntimeError("Compiler: cc not found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    forward = runtime.compiled(lambda x: x * 2, "a test function", shapes=3)
    with caplog.at_level(logging.WARNING, logger="lqs.runtime"):
        assert [forward(torch.tensor(i)).item() for i in range(3)] == [0, 2, 4]
    assert len(calls) == 1  # tried once, then uncompiled
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile is unavailable for a test function (RuntimeError: Compiler: cc not found): "
        "running it uncompiled"]
