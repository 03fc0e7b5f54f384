"""The SGD trajectory of the proxy LM and its costate λ, exactly as
docs/maths.md#the-trajectory-and-the-costate (the stage: lqs.stages.trajectory).

    θ_{t+1} = θ_t − η ∇L_t(θ_t)                                   t = 0 … T−1
    λ_T = ∇J(θ_T)
    λ_t = λ_{t+1} + ∇J(θ_t) − η ∇²L_t(θ_t) λ_{t+1}                  t = T−1 … 1

Memory: only every c-th θ (c ≈ √T) is kept from the forward pass; the backward pass
recomputes each segment of c steps from its checkpoint, so at most ~2√T parameter copies
exist at once (in host memory when the model is on a GPU). Hessian-vector products are exact
(double backward, attention on SDPA's math kernel); they need several times the memory of a
gradient per sample, so they run in their own micro-batches, by default the largest that fits
the GPU (measured on the first one).
A step file, step-{t}.safetensors, holds θ_t and λ_{t+1} of an annotated step t.
Fused (annotation.compile): the parameter-dict arithmetic (the updates of θ and λ, the HVP's
sum over micro-batches) runs in multi-tensor (torch._foreach_*) kernels, a few launches for all
of θ on a GPU instead of one per tensor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from lqs.io import read_parquet
from lqs.proxy import Params, collate, get_params, loss_and_grad, norm, sample_losses, set_params, twice_differentiable
from lqs.runtime import NonFiniteError

log = logging.getLogger(__name__)


def step_file(out_dir: str | Path, t: int) -> Path:
    return Path(out_dir) / f"step-{t}.safetensors"


def _axpy(a: float, x: Params, y: Params, fused: bool = False) -> Params:
    """a·x + y; fused: in multi-tensor kernels (equal to rounding: a·x + y may be one fused
    multiply-add there)"""
    if fused:
        return dict(zip(y, torch._foreach_add(list(y.values()), [x[k] for k in y], alpha=a)))
    return {k: y[k] + a * x[k] for k in y}


def hvp(model: torch.nn.Module, samples: Sequence[Sequence[int]], v: Params, micro_batch: int,
        device=None, fused: bool = False) -> Params:
    """∇²L(θ) v for L the mean sample loss over `samples`, θ the model's current parameters:
    Σ over micro-batches of ∇(∇L_mb · v), exact for any micro-batch size. fused: the sum over
    micro-batches in multi-tensor kernels (the same additions)."""
    names = list(v)
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    out = {n: torch.zeros_like(v[n]) for n in names}
    for i in range(0, len(samples), micro_batch):
        ids, mask = collate(samples[i:i + micro_batch], device=device)
        with twice_differentiable():
            loss = sample_losses(model, ids, mask).sum() / len(samples)
            grads = torch.autograd.grad(loss, plist, create_graph=True)
            dot = sum((g * v[n]).sum() for g, n in zip(grads, names))
            hs = torch.autograd.grad(dot, plist)
            if fused:
                torch._foreach_add_(list(out.values()), list(hs))
            else:
                for n, h in zip(names, hs):
                    out[n] += h
    return out


def fit_hvp_micro_batch(model: torch.nn.Module, samples: Sequence[Sequence[int]], v: Params, limit: int,
                        device) -> int:
    """The largest HVP micro-batch ≤ limit that fits the GPU's free memory: the peak of an HVP
    over the longest sample alone and over two copies of it gives the memory per sample and
    the fixed part. On a CPU: limit."""
    device = torch.device(device or "cpu")
    if device.type != "cuda" or limit == 1:
        return limit
    longest = max(samples, key=len)
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        hvp(model, [longest] * n, v, n, device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_sample = max(peaks[1] - peaks[0], 1)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch
    fits = int((0.9 * free - (peaks[0] - per_sample)) // per_sample)
    log.info("HVP memory: %.2f GiB per %d-token sample, %.2f GiB free: micro-batch %d",
             per_sample / 2**30, len(longest), free / 2**30, max(1, min(limit, fits)))
    return max(1, min(limit, fits))


def _to_host(theta: Params) -> Params:
    """θ kept in host memory while the model is on a GPU: checkpoints cost no GPU memory."""
    return {k: v.to("cpu", non_blocking=True) for k, v in theta.items()}


def _to_device(theta: Params, device) -> Params:
    return {k: v.to(device, non_blocking=True) for k, v in theta.items()}


def _mean_loss(model, samples, micro_batch: int, device) -> float:
    total = 0.0
    for i in range(0, len(samples), micro_batch):
        ids, mask = collate(samples[i:i + micro_batch], device=device)
        total += float(sample_losses(model, ids, mask).sum())
    return total / len(samples)


def _check_finite(model, samples, batch_rows, t: int, what: str, loss: float, grad: Params,
                  micro_batch: int, device) -> None:
    if math.isfinite(loss) and bool(torch.stack([torch.isfinite(g).all() for g in grad.values()]).all()):
        return
    culprit = ""
    with torch.no_grad():
        for i in range(0, len(samples), micro_batch):
            ids, mask = collate(samples[i:i + micro_batch], device=device)
            bad = (~torch.isfinite(sample_losses(model, ids, mask))).nonzero().flatten().tolist()
            if bad:
                culprit = f"; first bad sample: {batch_rows[i + bad[0]]}"
                break
    raise NonFiniteError(f"non-finite {what} loss or gradient at step {t} (loss={loss}){culprit}")


def solve(
    model: torch.nn.Module,
    batches: Sequence[Sequence[Sequence[int]]],
    target: Sequence[Sequence[int]],
    lr: float,
    save_steps: set[int],
    on_save: Callable[[int, Params, Params], None],
    *,
    micro_batch: int = 16,
    hvp_micro_batch: int | None = None,
    checkpoint_every: int | None = None,
    batch_rows: Sequence[Sequence[dict]] | None = None,
    device=None,
    progress: bool = False,
    fused: bool = False,
) -> dict[str, list]:
    """Runs the forward SGD and the backward costate; calls on_save(t, θ_t, λ_{t+1}) for t in
    save_steps. Returns the per-step log (train loss, target loss, ‖λ_t‖).
    micro_batch: samples per gradient pass; hvp_micro_batch: per Hessian-vector product pass
    (None: the largest ≤ micro_batch that fits, see fit_hvp_micro_batch); fused: the updates
    of θ and λ and the HVP's sum in multi-tensor kernels (the same values to rounding)."""
    T = len(batches)
    c = checkpoint_every or max(1, math.isqrt(T - 1) + 1 if T > 1 else 1)
    batch_rows = batch_rows or [[{"position": i} for i in range(len(b))] for b in batches]
    record = {"step": list(range(T + 1)), "train_loss": [None] * (T + 1),
              "target_loss": [None] * (T + 1), "lambda_norm": [None] * (T + 1)}
    num_segments = -(-T // c)
    bar = tqdm(total=3 * T + 1 - num_segments, desc="trajectory", unit="step", disable=not progress, mininterval=5)

    def sgd_step(theta: Params, t: int) -> Params:
        set_params(model, theta)
        loss, grad = loss_and_grad(model, batches[t], micro_batch, device)
        _check_finite(model, batches[t], batch_rows[t], t, "training", loss, grad, micro_batch, device)
        record["train_loss"][t] = loss
        bar.update()
        return _axpy(-lr, grad, theta, fused)

    def target_grad(theta: Params, t: int) -> Params:
        set_params(model, theta)
        loss, grad = loss_and_grad(model, target, micro_batch, device)
        _check_finite(model, target, [{"target_index": i} for i in range(len(target))], t,
                      "target", loss, grad, micro_batch, device)
        record["target_loss"][t] = loss
        return grad

    # Forward, keeping θ_t only at segment starts.
    checkpoints: dict[int, Params] = {}
    theta = get_params(model)
    for t in range(T):
        if t % c == 0:
            checkpoints[t] = _to_host(theta)
        theta = sgd_step(theta, t)

    lam = target_grad(theta, T)  # λ_T
    record["lambda_norm"][T] = norm(lam)
    bar.update()
    del theta

    # Backward, one segment at a time, recomputing the segment's θ from its checkpoint.
    for start in sorted(checkpoints, reverse=True):
        stop = min(start + c, T)
        checkpoint = checkpoints.pop(start)  # on the host already, and never changed: kept as is
        theta = _to_device(checkpoint, device)
        thetas = [checkpoint]
        for t in range(start, stop - 1):
            theta = sgd_step(theta, t)
            thetas.append(_to_host(theta))
        del theta
        for t in range(stop - 1, start - 1, -1):
            theta_t = _to_device(thetas.pop(), device)
            if t in save_steps:
                on_save(t, theta_t, lam)
            bar.update()
            if t == 0:  # λ_0 is never used; J(θ_0) only for the log
                set_params(model, theta_t)
                with torch.no_grad():
                    record["target_loss"][0] = _mean_loss(model, target, micro_batch, device)
                break
            set_params(model, theta_t)
            if hvp_micro_batch is None:
                hvp_micro_batch = fit_hvp_micro_batch(model, batches[t], lam, micro_batch, device)
            hv = hvp(model, batches[t], lam, hvp_micro_batch, device, fused)
            lam = _axpy(1.0, target_grad(theta_t, t), _axpy(-lr, hv, lam, fused), fused)
            record["lambda_norm"][t] = norm(lam)
    bar.close()
    return record


def read_token_lists(path: str, column: str = "input_ids") -> list[list[int]]:
    return read_parquet(path, [column])[column].to_pylist()


def load_step(path: str | Path, device="cpu") -> tuple[Params, Params]:
    """θ_t and λ_{t+1} from a step file."""
    from safetensors.torch import load_file

    tensors = load_file(str(path), device=str(device))
    theta = {k[len("theta."):]: v for k, v in tensors.items() if k.startswith("theta.")}
    lam = {k[len("lambda."):]: v for k, v in tensors.items() if k.startswith("lambda.")}
    return theta, lam

