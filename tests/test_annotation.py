"""The LQS annotation (docs/maths.md) against independent brute-force computations.

* costate.solve: θ_t against a plain SGD loop, λ_{t+1} against autograd through the unrolled SGD
  trajectory (λ_t = d/dθ_t Σ_{s=t..T} J(θ_s)), the per-step log, and invariance under the √T
  checkpointing; the Hessian-vector product in micro-batches against whole-batch double backward;
* proxy.sample_losses (the one loss of every stage) against an unpadded per-sample loss;
* per_sample.per_sample_stats (fast and vmap paths, several micro-batch sizes) against
  one-sample-at-a-time autograd with a loss written here, tied embeddings counted once;
* labels.raw_scores / normalize / split against plain-Python loops over the formulas;
* the whole sample → stats → labels chain under permutation and re-sharding of the proxy set;
* NonFiniteError naming the step.

Models are tiny architectures built from transformers configs (tests/tiny_lm.py), in float64
where the comparison is with a brute force (the production path runs them in float32).
Tolerances: see TOL64 and STATS_TOL. With micro_batch 1 every sample is computed alone, so
re-sharding must be bit-exact; with padded micro-batches the regrouping changes float32 rounding
(~1e-7), nothing more.
"""

from __future__ import annotations

import logging
import math
import random
import re
import statistics

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import stage_function
from safetensors.torch import load_file
from tiny_lm import (
    LR,
    VOCAB,
    T,
    brute_sample_stats,
    own_loss,
    random_samples,
    rel_err,
    run_solve,
    tiny_mistral,
    tiny_xglm,
)
from transformers import AutoModelForCausalLM

from lqs import splits
from lqs.costate import fit_hvp_micro_batch, hvp, load_step, solve, step_file
from lqs.labels import normalize, raw_scores, split
from lqs.per_sample import _squared_norms, fast_path_covers, per_sample_stats
from lqs.proxy import collate, get_params, param_names, sample_losses, set_params, twice_differentiable
from lqs.runtime import NonFiniteError
from lqs.stages import grad_stats as grad_stats_stage
from lqs.stages import lqs_labels as lqs_labels_stage
from lqs.stages import trajectory as trajectory_stage

grad_stats = stage_function(grad_stats_stage)
lqs_labels = stage_function(lqs_labels_stage)
trajectory = stage_function(trajectory_stage)


# ---------------------------------------------------------------------------------------------
# tiny models (tiny_lm.py), tolerances and an independent loss
# ---------------------------------------------------------------------------------------------

MODELS = {"mistral": lambda **kw: tiny_mistral(**kw), "xglm": lambda **kw: tiny_xglm(**kw)}

# Relative tolerance of float64 comparisons with a differently batched brute force. HF Mistral's
# eager attention always takes its softmax in float32, so padded and unpadded rows differ by
# float32 rounding there (about 1e-8 after the double backward); XGLM is float64 throughout.
TOL64 = {"mistral": 1e-6, "xglm": 1e-10}


# per_sample_stats reduces per-layer pieces in float32 (docs/maths.md: fp32 by default), so it is
# compared with the float64 brute force at float32 accuracy.
STATS_TOL = 1e-5




@pytest.fixture
def float64_default():
    """XGLM's eager attention builds `torch.full((), finfo(float64).min)` in the default dtype,
    which overflows float32: float64 XGLM needs float64 as the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def own_mean_loss(model, params: dict, samples) -> torch.Tensor:
    return torch.stack([own_loss(model, params, s) for s in samples]).mean()


def flat(d: dict, names) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in names])


# ---------------------------------------------------------------------------------------------
# 1. the trajectory and its costate
# ---------------------------------------------------------------------------------------------

def brute_thetas(model, theta0: dict, batches, lr: float) -> list[dict]:
    """θ_0 … θ_T by plain SGD with the loss written here."""
    thetas = [{k: v.detach().clone() for k, v in theta0.items()}]
    for batch in batches:
        cur = {k: v.clone().requires_grad_() for k, v in thetas[-1].items()}
        grads = torch.autograd.grad(own_mean_loss(model, cur, batch), list(cur.values()))
        thetas.append({k: (v - lr * g).detach() for (k, v), g in zip(cur.items(), grads)})
    return thetas


def brute_costate(model, theta_s: dict, s: int, batches, target, lr: float) -> dict:
    """λ_s = d/dθ_s Σ_{r=s..T} J(θ_r), θ_{r+1} = θ_r − η∇L_r(θ_r), by autograd through the
    unrolled SGD steps (create_graph=True)."""
    leaf = {k: v.detach().clone().requires_grad_() for k, v in theta_s.items()}
    cur = leaf
    total = own_mean_loss(model, cur, target)
    for r in range(s, len(batches)):
        grads = torch.autograd.grad(own_mean_loss(model, cur, batches[r]), list(cur.values()),
                                    create_graph=True)
        cur = {k: v - lr * g for (k, v), g in zip(cur.items(), grads)}
        total = total + own_mean_loss(model, cur, target)
    return dict(zip(leaf, torch.autograd.grad(total, list(leaf.values()))))


def target_grad(model, theta: dict, target) -> dict:
    leaf = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    return dict(zip(leaf, torch.autograd.grad(own_mean_loss(model, leaf, target), list(leaf.values()))))


@pytest.mark.parametrize("arch", ["mistral", "xglm"])
def test_costate_matches_autograd_through_unrolled_sgd(arch, float64_default):
    model = MODELS[arch]()
    torch.manual_seed(1)
    batches = [random_samples(3) for _ in range(T)]  # N=3 with micro_batch=2: padding + accumulation
    target = random_samples(3)
    theta0 = get_params(model)
    names = list(theta0)

    thetas = brute_thetas(model, theta0, batches, LR)
    lams = {s: brute_costate(model, thetas[s], s, batches, target, LR) for s in range(1, T + 1)}

    runs = {c: run_solve(model, theta0, batches, target, c) for c in (1, 2, 3, None)}

    # The √T recomputation changes nothing: every variant passes bit-identical θ_t and λ_{t+1}.
    ref_saved, ref_record = runs[1]
    for c, (saved, record) in runs.items():
        assert sorted(saved) == list(range(T)), c
        for t in range(T):
            for k in names:
                assert torch.equal(saved[t][0][k], ref_saved[t][0][k]), (c, t, k)
                assert torch.equal(saved[t][1][k], ref_saved[t][1][k]), (c, t, k)
        assert record == ref_record, c

    saved, record = ref_saved, ref_record
    tol = TOL64[arch]
    for t in range(T):
        theta_t, lam_next = saved[t]
        assert set(theta_t) == set(names) and set(lam_next) == set(names)
        err_theta = rel_err(flat(theta_t, names), flat(thetas[t], names))
        assert err_theta < tol, f"θ_{t}: relative error {err_theta:.3g}"
        err_lam = rel_err(flat(lam_next, names), flat(lams[t + 1], names))
        assert err_lam < tol, f"λ_{t + 1}: relative error {err_lam:.3g}"

    # The comparison is sharp: at λ_1, dropping the Hessian term, or flipping its sign, is far
    # outside the tolerance (so a missing HVP or a wrong sign would fail the test above).
    lam1 = flat(lams[1], names)
    grads_j = [flat(target_grad(model, thetas[s], target), names) for s in range(1, T + 1)]
    no_hessian = torch.stack(grads_j).sum(0)
    assert rel_err(no_hessian, lam1) > 1e4 * tol
    lam2 = flat(lams[2], names)
    hv = (lam1 - lam2 - grads_j[0]) / -LR  # η∇²L_1 λ_2 recovered from the brute force
    flipped = lam2 + grads_j[0] + LR * hv
    assert rel_err(flipped, lam1) > 1e4 * tol

    # The log: train_loss[t] = L_t(θ_t), target_loss[t] = J(θ_t), lambda_norm[t] = ‖λ_t‖.
    assert record["step"] == list(range(T + 1))
    with torch.no_grad():
        for t in range(T):
            assert record["train_loss"][t] == pytest.approx(
                float(own_mean_loss(model, thetas[t], batches[t])), rel=tol)
        for t in range(T + 1):
            assert record["target_loss"][t] == pytest.approx(
                float(own_mean_loss(model, thetas[t], target)), rel=tol)
    for t in range(1, T + 1):
        assert record["lambda_norm"][t] == pytest.approx(float(flat(lams[t], names).norm()), rel=tol)


def test_solve_saves_only_requested_steps(float64_default):
    model = tiny_mistral()
    torch.manual_seed(2)
    batches = [random_samples(2) for _ in range(T)]
    target = random_samples(2)
    theta0 = get_params(model)
    all_saved, _ = run_solve(model, theta0, batches, target, None)
    set_params(model, theta0)
    saved = {}
    solve(model, batches, target, LR, {0, 2}, lambda t, th, la: saved.setdefault(t, (th, la)),
          micro_batch=1)
    assert sorted(saved) == [0, 2]
    for t in (0, 2):
        for k in theta0:  # micro_batch 1 vs 2: same values up to rounding
            assert rel_err(saved[t][0][k], all_saved[t][0][k]) < TOL64["mistral"]
            assert rel_err(saved[t][1][k], all_saved[t][1][k]) < TOL64["mistral"]
    assert all(torch.equal(saved[0][0][k], theta0[k]) for k in theta0)


# transformers' eager Mistral attention takes its softmax in float32 (5.24.0 does), whatever the
# model's dtype: a padded micro-batch and an unpadded sample then agree to float32's rounding only
EAGER_TOLERANCE = {"mistral": 1e-7}


@pytest.mark.parametrize("arch", ["mistral-sdpa", "mistral", "xglm"])
def test_hvp_in_micro_batches_matches_full_batch_double_backward(arch, float64_default):
    """hvp over micro-batches (padded, accumulated) equals ∇²L v of the whole batch by double
    backward through the loss written here, one unpadded sample at a time; also for the SDPA
    model load_proxy returns (its fused CPU kernel has no double backward: hvp must avoid it)."""
    model = tiny_mistral(attn="sdpa") if arch == "mistral-sdpa" else MODELS[arch]()
    torch.manual_seed(11)
    samples = random_samples(5)
    params = dict(model.named_parameters())
    names = list(params)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    with twice_differentiable():  # the brute force on the same kernels, whole batch at once
        grads = torch.autograd.grad(own_mean_loss(model, params, samples), list(params.values()), create_graph=True)
        want = torch.autograd.grad(sum((g * v[k]).sum() for g, k in zip(grads, names)), list(params.values()))
    want = torch.cat([w.reshape(-1) for w in want])
    for micro_batch in (1, 2, 5):
        got = flat(hvp(model, samples, v, micro_batch), names)
        assert rel_err(got, want) < EAGER_TOLERANCE.get(arch, 1e-10), (micro_batch, rel_err(got, want))
    assert rel_err(flat(hvp(model, samples[:4], v, 2), names), want) > 1e-3  # the comparison is sharp
    assert fit_hvp_micro_batch(model, samples, v, 3, "cpu") == 3  # on a CPU: the configured size


def test_sample_losses_one_function_for_every_layout(float64_default):
    """ℓ(x) from padded micro-batches (tokens × vocab layout, pads and last token ignored) equals
    the unpadded per-sample loss written here, for SDPA and eager attention."""
    torch.manual_seed(12)
    samples = random_samples(6, lo=1)  # a 1-token sample has no target: ℓ = 0
    samples[0] = samples[0][:1]
    for attn in ("sdpa", "eager"):
        model = tiny_mistral(attn=attn)
        ids, mask = collate(samples)
        got = sample_losses(model, ids, mask)
        with torch.no_grad():
            want = torch.stack([own_loss(model, None, s) if len(s) > 1 else torch.zeros((), dtype=torch.float64)
                                for s in samples])
        tolerance = EAGER_TOLERANCE["mistral"] if attn == "eager" else 1e-12
        assert torch.allclose(got, want, rtol=tolerance, atol=tolerance), attn


def test_squared_norms_of_long_fp32_rows_are_accurate():
    """The reduction of per-sample gradients as long as a 160M model's LM head keeps fp32
    accuracy (a CPU's vector_norm loses ~1e-4 here)."""
    rows = (torch.randn(3, 2_000_000, generator=torch.Generator().manual_seed(14))
            * torch.tensor([[1.0], [1e-3], [30.0]]))
    want = rows.double().pow(2).sum(1)
    assert ((_squared_norms(rows).double() - want) / want).abs().max() < 1e-6


def test_bf16_stats_agree_with_fp32():
    """stats_dtype bf16: bf16 model and bf16 per-layer products (upcast on a CPU), fp32/fp64
    reductions: close to fp32, not equal."""
    model = tiny_mistral(dtype=torch.float32)
    torch.manual_seed(13)
    samples = random_samples(8, lo=6)
    lam = {k: torch.randn_like(v) for k, v in get_params(model).items()}
    n32, d32 = per_sample_stats(model, samples, lam, "fp32", micro_batch=3)
    n16, d16 = per_sample_stats(model, samples, lam, "bf16", micro_batch=3)
    assert not np.array_equal(n16, n32)
    np.testing.assert_allclose(n16, n32, rtol=3e-2)
    np.testing.assert_allclose(d16, d32, rtol=0, atol=3e-2 * np.abs(d32).max())


# ---------------------------------------------------------------------------------------------
# 2. per-sample statistics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,tie,attn", [("mistral", False, "eager"), ("mistral", True, "eager"),
                                           ("mistral", False, "sdpa"), ("xglm", True, "eager")])
def test_per_sample_stats_match_brute_force(arch, tie, attn, float64_default):
    """attn sdpa: the fused kernels load_proxy uses (the vmap path switches to eager itself)."""
    model = tiny_mistral(tie=tie, attn=attn) if arch == "mistral" else tiny_xglm()
    is_tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert is_tied == tie
    names = param_names(model)
    assert (sum(1 for _ in model.named_parameters(remove_duplicate=False)) == len(names) + 1) == tie
    assert fast_path_covers(model)
    torch.manual_seed(3)
    samples = random_samples(7)
    samples[2] = [1, 1] + samples[2]  # XGLM's padding_idx (1) inside a sample: a real token here
    lam = {k: torch.randn_like(v) for k, v in get_params(model).items()}
    ref_norms, ref_dots = brute_sample_stats(model, samples, lam)
    assert len(set(np.round(ref_norms, 6))) == len(samples)  # distinct: a mix-up would show
    lam_norm = math.sqrt(sum(float(v.pow(2).sum()) for v in lam.values()))
    atol_dot = STATS_TOL * lam_norm * ref_norms.max()

    results = {}
    for method in ("fast", "vmap"):
        for micro_batch in (1, 3, 8):  # 3: padded micro-batches of mixed lengths
            norms, dots = per_sample_stats(model, samples, lam, method=method, micro_batch=micro_batch)
            what = f"{method}, micro_batch={micro_batch}"
            np.testing.assert_allclose(norms, ref_norms, rtol=STATS_TOL, err_msg=what)
            np.testing.assert_allclose(dots, ref_dots, rtol=0, atol=atol_dot, err_msg=what)
            results[method, micro_batch] = norms, dots

    if tie:  # counting the tied tensor twice would be visibly different
        emb = model.get_input_embeddings().weight
        g = torch.autograd.grad(own_loss(model, None, samples[0]), [emb])[0]
        twice = math.sqrt(ref_norms[0] ** 2 + float(g.pow(2).sum()))
        assert abs(results["fast", 8][0][0] - twice) > 100 * STATS_TOL * twice

    # The order of the samples does not matter: per-sample results follow their samples
    # (bit for bit one sample at a time; to rounding when micro-batches are regrouped).
    perm = [5, 0, 6, 3, 1, 4, 2]
    permuted = [samples[i] for i in perm]
    for method in ("fast", "vmap"):
        pn, pd_ = per_sample_stats(model, permuted, lam, method=method, micro_batch=1)
        np.testing.assert_array_equal(pn, results[method, 1][0][perm])
        np.testing.assert_array_equal(pd_, results[method, 1][1][perm])
        pn, pd_ = per_sample_stats(model, permuted, lam, method=method, micro_batch=3)
        np.testing.assert_allclose(pn, ref_norms[perm], rtol=STATS_TOL)
        np.testing.assert_allclose(pd_, ref_dots[perm], rtol=0, atol=atol_dot)


# ---------------------------------------------------------------------------------------------
# 3. labels
# ---------------------------------------------------------------------------------------------

def ref_lqs_row(n: list[float], d: list[float], lam: list[float], lr: float) -> float:
    """docs/maths.md#labels-lqs-and-pds, columns in ascending step order; terms whose norms are 0
    contribute 0."""
    order = list(range(len(n)))[::-1]  # t_1 > t_2 > … : latest first
    total = 0.0
    for j, i in enumerate(order):
        if n[i] == 0 or lam[i] == 0:
            continue
        if j == 0:
            r = n[i]
        else:
            later = n[order[j - 1]]
            if later == 0:
                continue
            r = n[i] / later
        cos = max(-1.0, min(1.0, d[i] / (n[i] * lam[i])))
        total += lam[i] * r * cos
    return lr * total


def ref_pds_row(d: list[float], lr: float) -> float:
    return lr * sum(d)


def random_stats(rng: np.random.Generator, rows: int, steps: int):
    n = rng.uniform(0.1, 5.0, (rows, steps))
    lam = np.tile(rng.uniform(0.5, 3.0, steps), (rows, 1))
    cos = rng.uniform(-1.0, 1.0, (rows, steps))
    d = cos * n * lam
    return n, d, lam


def test_raw_scores_match_formulas():
    rng = np.random.default_rng(0)
    n, d, lam = random_stats(rng, 20, 4)
    d[0, 1] = 1.5 * n[0, 1] * lam[0, 1]    # |cos| > 1 from rounding: clamped
    d[1, 3] = -2.0 * n[1, 3] * lam[1, 3]
    lr = 0.37
    got = raw_scores(n, d, lam, lr, "lqs")
    want = [ref_lqs_row(list(n[i]), list(d[i]), list(lam[i]), lr) for i in range(len(n))]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # the order matters (latest step first): the reversed orientation is visibly different
    wrong = [ref_lqs_row(list(n[i, ::-1]), list(d[i, ::-1]), list(lam[i, ::-1]), lr) for i in range(len(n))]
    assert not np.allclose(got, wrong, rtol=1e-6)
    # clamping: those rows equal the formula with cos = ±1 at that step
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    unclamped = lr * sum(lam[1, i] * (n[1, i] if i == 3 else n[1, i] / n[1, i + 1]) * d[1, i] / (n[1, i] * lam[1, i])
                         for i in range(4))
    assert got[1] != pytest.approx(unclamped, rel=1e-6)

    got_pds = raw_scores(n, d, lam, lr, "pds")
    np.testing.assert_allclose(got_pds, [ref_pds_row(list(row), lr) for row in d], rtol=1e-12)
    with pytest.raises(ValueError):
        raw_scores(n, d, lam, lr, "nope")


def test_raw_scores_zero_norms_are_finite_and_contribute_zero(caplog):
    rng = np.random.default_rng(1)
    n, d, lam = random_stats(rng, 6, 4)
    n[0, 2] = 0.0
    d[0, 2] = 0.0      # a zero gradient at one step
    n[1, 3] = 0.0
    d[1, 3] = 0.0      # at the latest step
    n[2, :] = 0.0
    d[2, :] = 0.0      # at every step
    lam[:, 1] = 0.0
    d[:, 1] = 0.0      # a zero costate at one step
    lr = 0.1
    with caplog.at_level(logging.WARNING, logger="lqs.labels"):
        got = raw_scores(n, d, lam, lr, "lqs")
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # "a note in the log"
    assert np.isfinite(got).all()
    want = [ref_lqs_row(list(n[i]), list(d[i]), list(lam[i]), lr) for i in range(len(n))]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[2] == 0.0

    # That step contributes 0: its own d is irrelevant, and so is every other step's where its
    # term does not depend on that norm (here, row 0: steps 3 and 0, which do not divide by n[0,2]).
    d2 = d.copy()
    d2[0, 2] = 7.0
    assert raw_scores(n, d2, lam, lr, "lqs")[0] == got[0]
    only_latest = lr * lam[0, 3] * n[0, 3] * np.clip(d[0, 3] / (n[0, 3] * lam[0, 3]), -1, 1)
    step0 = lr * lam[0, 0] * (n[0, 0] / n[0, 1]) * np.clip(d[0, 0] / (n[0, 0] * lam[0, 0]), -1, 1)
    assert got[0] == pytest.approx(only_latest + step0, rel=1e-12)  # steps 2 (n=0), 1 (λ=0) give 0


def test_normalize_zscore_clip3():
    rng = np.random.default_rng(2)
    raw = np.concatenate([rng.normal(1.0, 2.0, 60), [40.0, -35.0]])  # two outliers beyond 3σ
    got = normalize(raw, "zscore_clip3")
    mean, std = statistics.fmean(raw), statistics.pstdev(raw)
    want = [min(3.0, max(-3.0, (x - mean) / std)) for x in raw]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got.max() == 3.0 and got.min() == -3.0
    np.testing.assert_array_equal(normalize(raw, "none"), raw)
    const = normalize(np.full(5, 2.5), "zscore_clip3")
    assert np.isfinite(const).all()
    with pytest.raises(ValueError):
        normalize(raw, "minmax")


def test_split_counts_and_seed():
    for num, valid_size, n_valid in [(40, 0.25, 10), (40, 7, 7), (10, 1, 1)]:
        s = split(num, valid_size, seed=3)
        assert len(s) == num
        assert set(s) <= {"train", "valid"}
        assert int((s == "valid").sum()) == n_valid, (num, valid_size)
    a, b, c = split(200, 0.3, 11), split(200, 0.3, 11), split(200, 0.3, 12)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    for bad in (0, 0.0, 40, 1.2e3):
        with pytest.raises(ValueError):
            split(40, bad, 0)


def test_lqs_labels_from_shuffled_stats_files(tmp_path):
    """read_stats + raw_scores: steps ordered numerically (10 after 2), rows in any order and
    spread over several files."""
    rng = np.random.default_rng(4)
    steps = [0, 2, 10]
    ids = rng.choice(10_000, 15, replace=False).astype(np.int64)
    n, d, lam = random_stats(rng, len(ids), len(steps))
    rows = [{"sample_id": int(ids[i]), "step": steps[j], "grad_norm": n[i, j], "dot": d[i, j],
             "lambda_norm": lam[i, j]} for i in range(len(ids)) for j in range(len(steps))]
    random.Random(0).shuffle(rows)
    paths = []
    for k, chunk in enumerate((rows[:20], rows[20:])):
        table = pa.Table.from_pylist(chunk, schema=pa.schema([
            ("sample_id", pa.int64()), ("step", pa.int32()), ("grad_norm", pa.float64()),
            ("dot", pa.float64()), ("lambda_norm", pa.float64())]))
        paths.append(str(tmp_path / f"stats-{k}.parquet"))
        pq.write_table(table, paths[-1])
    for score, ref in (("lqs", lambda i: ref_lqs_row(list(n[i]), list(d[i]), list(lam[i]), 0.2)),
                       ("pds", lambda i: ref_pds_row(list(d[i]), 0.2))):
        out = tmp_path / f"labels-{score}.parquet"
        lqs_labels(paths, str(out), lr=0.2, steps=12, interval=2, score=score,
                   normalize="zscore_clip3", valid_size=0.2, seed=0)
        got = pd.read_parquet(out).set_index("sample_id")
        assert sorted(got.index) == sorted(ids.tolist())
        for i, sid in enumerate(ids):
            assert got.loc[sid, "raw"] == pytest.approx(ref(i), rel=1e-12, abs=1e-15)
        assert int((got["split"] == "valid").sum()) == 3


# ---------------------------------------------------------------------------------------------
# 4. permutation and re-sharding of the proxy set: the whole chain
# ---------------------------------------------------------------------------------------------

ANN = dict(lr=0.3, steps=4, interval=2, batch_size=3)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """A saved tiny proxy, a corpus shard, a target set, the step files of the trajectory stage and a
    proxy samples.parquet with non-contiguous sample ids."""
    root = tmp_path_factory.mktemp("annotation")
    model = tiny_mistral(dtype=torch.float32, seed=5)
    model.save_pretrained(root / "proxy")
    torch.manual_seed(6)
    corpus = random_samples(12)
    pq.write_table(pa.table({  # a tokenized shard of one corpus file (its files in its metadata: lqs.splits)
        "doc_id": pa.array(range(len(corpus)), pa.int64()),
        "window": pa.array([0] * len(corpus), pa.int32()),
        "input_ids": pa.array(corpus, pa.list_(pa.int32()))}).replace_schema_metadata(
            splits.files_metadata(["corpus.jsonl"])), root / "shard-0.parquet")
    pq.write_table(pa.table({"input_ids": pa.array(random_samples(3), pa.list_(pa.int32()))}),
                   root / "target.parquet")
    trajectory(str(root / "proxy"), [str(root / "shard-0.parquet")], str(root / "target.parquet"),
               str(root / "traj"), seed=0, micro_batch=2, device="cpu", **ANN)
    samples = random_samples(11)
    sample_ids = torch.randperm(1000)[:len(samples)].tolist()
    table = pa.table({
        "sample_id": pa.array(sample_ids, pa.int64()),
        "doc_id": pa.array(range(100, 100 + len(samples)), pa.int64()),
        "window": pa.array([1] * len(samples), pa.int32()),
        "input_ids": pa.array(samples, pa.list_(pa.int32())),
        "text": pa.array([" ".join(map(str, s)) for s in samples], pa.string())})
    pq.write_table(table, root / "samples.parquet")
    return root, table


ANNOTATED = [0, 2]  # annotated_steps(4, 2)


def run_grad_stats(root, samples_path, tag: str, num_parts: int, micro_batch: int) -> list[str]:
    paths = []
    for t in ANNOTATED:
        for part in range(num_parts):
            out = root / tag / f"stats-{t}-{part}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            grad_stats(str(samples_path), str(step_file(root / "traj", t)), str(root / "proxy"), str(out),
                       step=t, part=part, num_parts=num_parts, micro_batch=micro_batch, device="cpu")
            paths.append(str(out))
    return paths


def read_stats_table(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths]).set_index(["sample_id", "step"]).sort_index()


def make_labels(paths, out, score: str) -> pd.DataFrame:
    lqs_labels(paths, str(out), lr=ANN["lr"], steps=ANN["steps"], interval=ANN["interval"],
               score=score, normalize="zscore_clip3", valid_size=0.3, seed=0)
    return pd.read_parquet(out).set_index("sample_id").sort_index()


# name: (shuffled rows?, num_parts, micro_batch). micro_batch 1: every sample alone, so results
# must be bit-identical; micro_batch 4: regrouped padded micro-batches, equal to fp32 rounding.
VARIANTS = {
    "parts1": (False, 1, 1), "parts2": (False, 2, 1), "parts3": (False, 3, 1),
    "shuffled1": (True, 1, 1), "shuffled3": (True, 3, 1),
    "batched-parts1": (False, 1, 4), "batched-parts3": (False, 3, 4), "batched-shuffled2": (True, 2, 4),
}


@pytest.fixture(scope="module")
def variant_stats(annotated):
    root, table = annotated
    perm = np.random.default_rng(7).permutation(len(table))
    assert (perm != np.arange(len(table))).any()
    shuffled = root / "samples-shuffled.parquet"
    pq.write_table(table.take(pa.array(perm)), shuffled)
    return {name: run_grad_stats(root, shuffled if shuf else root / "samples.parquet", name, parts, mb)
            for name, (shuf, parts, mb) in VARIANTS.items()}


def test_step_files_hold_theta_and_lambda(annotated):
    root, _ = annotated
    model = AutoModelForCausalLM.from_pretrained(root / "proxy", attn_implementation="eager")
    names = param_names(model)
    assert sorted(p.name for p in (root / "traj").glob("step-*.safetensors")) == \
        [f"step-{t}.safetensors" for t in ANNOTATED]
    keys = set(load_file(str(step_file(root / "traj", 0))))
    assert keys == {f"theta.{k}" for k in names} | {f"lambda.{k}" for k in names}
    theta0, _ = load_step(step_file(root / "traj", 0))
    for k, v in get_params(model).items():
        assert torch.equal(theta0[k], v)  # θ_0 is the proxy checkpoint


@pytest.mark.parametrize("score", ["lqs", "pds"])
def test_labels_invariant_under_permutation_and_resharding(annotated, variant_stats, score, tmp_path):
    root, table = annotated
    ids = sorted(table["sample_id"].to_pylist())
    stats = {name: read_stats_table(paths) for name, paths in variant_stats.items()}
    labels = {name: make_labels(paths, tmp_path / f"{name}.parquet", score)
              for name, paths in variant_stats.items()}
    ref_stats, ref_labels = stats["parts1"], labels["parts1"]
    assert ref_labels.index.tolist() == ids
    assert ref_labels["raw"].nunique() == len(ids)
    assert ref_stats.index.tolist() == [(i, t) for i in ids for t in ANNOTATED]
    for name, lab in labels.items():
        exact = VARIANTS[name][2] == 1
        assert lab.index.tolist() == ids, name
        assert stats[name].index.equals(ref_stats.index), name
        assert (lab["split"] == ref_labels["split"]).all(), name
        if exact:
            np.testing.assert_allclose(lab["raw"], ref_labels["raw"], rtol=0, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(lab["score"], ref_labels["score"], rtol=0, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(stats[name].to_numpy(), ref_stats.to_numpy(), rtol=0, atol=1e-12,
                                       err_msg=name)
        else:
            scale = np.abs(ref_labels["raw"]).max()
            np.testing.assert_allclose(lab["raw"], ref_labels["raw"], rtol=0, atol=1e-4 * scale, err_msg=name)
            np.testing.assert_allclose(lab["score"], ref_labels["score"], rtol=0, atol=1e-4, err_msg=name)
            np.testing.assert_allclose(stats[name]["grad_norm"], ref_stats["grad_norm"], rtol=STATS_TOL,
                                       err_msg=name)

    # ... and the labels belong to their samples: the stats match a float64 brute force per
    # sample id, from the step files, and each label matches the formula applied to them.
    model64 = AutoModelForCausalLM.from_pretrained(root / "proxy", attn_implementation="eager")
    model64 = model64.to(torch.float64).eval()
    by_id = dict(zip(table["sample_id"].to_pylist(), table["input_ids"].to_pylist()))
    brute = {}
    for t in ANNOTATED:
        theta, lam = load_step(step_file(root / "traj", t))
        set_params(model64, {k: v.double() for k, v in theta.items()})
        lam64 = {k: v.double() for k, v in lam.items()}
        norms, dots = brute_sample_stats(model64, [by_id[i] for i in ids], lam64)
        lam_norm = math.sqrt(sum(float(v.pow(2).sum()) for v in lam64.values()))
        for i, sid in enumerate(ids):
            row = ref_stats.loc[(sid, t)]
            assert row["grad_norm"] == pytest.approx(norms[i], rel=1e-4)
            assert abs(row["dot"] - dots[i]) <= 1e-4 * norms[i] * lam_norm
            assert row["lambda_norm"] == pytest.approx(lam_norm, rel=1e-6)
            brute[(sid, t)] = (norms[i], dots[i], lam_norm)
    for sid in ids:
        n, d, la = ([brute[(sid, t)][j] for t in ANNOTATED] for j in range(3))
        want = ref_lqs_row(n, d, la, ANN["lr"]) if score == "lqs" else ref_pds_row(d, ANN["lr"])
        assert ref_labels.loc[sid, "raw"] == pytest.approx(want, rel=1e-3, abs=1e-6 * max(1.0, abs(want)))


@pytest.mark.parametrize("micro_batch", [1, 4])
def test_modifying_one_sample_changes_only_its_stats(annotated, micro_batch):
    root, table = annotated
    ref_paths = run_grad_stats(root, root / "samples.parquet", f"unmodified-{micro_batch}", 2, micro_batch)
    k = 4
    ids = table["input_ids"].to_pylist()
    ids[k] = list(ids[k])
    ids[k][0] = (ids[k][0] + 1) % VOCAB
    modified = table.set_column(table.schema.get_field_index("input_ids"), "input_ids",
                                pa.array(ids, pa.list_(pa.int32())))
    path = root / f"samples-modified-{micro_batch}.parquet"
    pq.write_table(modified, path)
    paths = run_grad_stats(root, path, f"modified-{micro_batch}", 2, micro_batch)
    ref_stats, stats = read_stats_table(ref_paths), read_stats_table(paths)
    ref_labels = make_labels(ref_paths, root / f"labels-unmodified-{micro_batch}.parquet", "lqs")
    lab = make_labels(paths, root / f"labels-modified-{micro_batch}.parquet", "lqs")
    changed_id = table["sample_id"][k].as_py()
    assert stats.index.equals(ref_stats.index)
    for (sid, t), row in stats.iterrows():
        ref = ref_stats.loc[(sid, t)]
        assert row["lambda_norm"] == ref["lambda_norm"]
        if sid == changed_id:
            assert abs(row["grad_norm"] - ref["grad_norm"]) > 1e3 * STATS_TOL * ref["grad_norm"]
            assert row["dot"] != ref["dot"]
        elif micro_batch == 1:  # each sample alone: bit-identical
            assert row["grad_norm"] == ref["grad_norm"] and row["dot"] == ref["dot"], (sid, t)
        else:  # its micro-batch partners changed: equal up to float32 rounding
            assert abs(row["grad_norm"] - ref["grad_norm"]) <= STATS_TOL * ref["grad_norm"], (sid, t)
            assert abs(row["dot"] - ref["dot"]) <= STATS_TOL * ref["grad_norm"] * ref["lambda_norm"], (sid, t)
    others = lab.index != changed_id
    if micro_batch == 1:
        np.testing.assert_array_equal(lab.loc[others, "raw"], ref_labels.loc[others, "raw"])
    else:
        np.testing.assert_allclose(lab.loc[others, "raw"], ref_labels.loc[others, "raw"], rtol=1e-4)
    assert lab.loc[changed_id, "raw"] != pytest.approx(ref_labels.loc[changed_id, "raw"], rel=1e-3)


# ---------------------------------------------------------------------------------------------
# 5. non-finite values
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameter_raises_naming_the_step(bad):
    model = tiny_mistral(dtype=torch.float32)
    torch.manual_seed(8)
    batches = [random_samples(2) for _ in range(T)]
    target = random_samples(2)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = bad
    with pytest.raises(NonFiniteError, match=r"\bstep 0\b"):
        solve(model, batches, target, LR, {0}, lambda *a: None)


SENTINEL = VOCAB - 1


def _poison_sentinel(model):
    """Embeddings of SENTINEL become NaN: only samples containing it get a non-finite loss."""
    def hook(module, inputs, output):
        return output.masked_fill((inputs[0] == SENTINEL)[..., None], float("nan"))
    return model.get_input_embeddings().register_forward_hook(hook)


def _clean(samples):
    return [[x if x != SENTINEL else 0 for x in s] for s in samples]


def test_non_finite_training_loss_names_step_and_sample():
    model = tiny_mistral(dtype=torch.float32)
    torch.manual_seed(9)
    batches = [_clean(random_samples(3)) for _ in range(T)]
    target = _clean(random_samples(2))
    batches[2][1] = [SENTINEL] + batches[2][1]
    rows = [[{"doc_id": 10 * t + i, "window": 0} for i in range(3)] for t in range(T)]
    handle = _poison_sentinel(model)
    try:
        with pytest.raises(NonFiniteError) as info:
            solve(model, batches, target, 0.01, {0}, lambda *a: None, micro_batch=2, batch_rows=rows)
    finally:
        handle.remove()
    msg = str(info.value)
    assert re.search(r"\bstep 2\b", msg) and "training" in msg, msg
    assert "'doc_id': 21" in msg, msg


def test_non_finite_target_loss_names_final_step():
    model = tiny_mistral(dtype=torch.float32)
    torch.manual_seed(10)
    batches = [_clean(random_samples(2)) for _ in range(T)]
    target = _clean(random_samples(2))
    target[1] = [SENTINEL] + target[1]
    handle = _poison_sentinel(model)
    try:
        with pytest.raises(NonFiniteError, match=rf"target.*\bstep {T}\b"):
            solve(model, batches, target, 0.01, {0}, lambda *a: None)
    finally:
        handle.remove()
