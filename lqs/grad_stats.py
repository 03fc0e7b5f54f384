"""Stage `grad_stats`: per-sample gradient statistics at one annotated step (DESIGN.md §4).

For each proxy sample x of one part of the proxy set, at step t:
    n_t(x) = ‖∇ℓ(x; θ_t)‖        d_t(x) = ⟨∇ℓ(x; θ_t), λ_{t+1}⟩
Each sample's gradient is its own backward pass, so a label can never land on another sample.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from lqs.io import write_table
from lqs.proxy import Params, collate, load_proxy, sample_losses, set_params
from lqs.runtime import resolve_device
from lqs.trajectory import NonFiniteError, load_step

log = logging.getLogger(__name__)

STATS_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("step", pa.int32()), ("grad_norm", pa.float64()),
    ("dot", pa.float64()), ("lambda_norm", pa.float64())])


def part_rows(num_samples: int, part: int, num_parts: int) -> np.ndarray:
    """Row indices of one part of the proxy set: contiguous, near-equal slices."""
    return np.array_split(np.arange(num_samples), num_parts)[part]


def per_sample_stats(model: torch.nn.Module, samples: list[list[int]], lam: Params,
                     dtype: str = "fp32", device=None) -> tuple[np.ndarray, np.ndarray]:
    """(‖g(x)‖, ⟨g(x), λ⟩) for each sample, g(x) the gradient of ℓ(x) at the model's θ."""
    names = list(lam)
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    norms = np.zeros(len(samples))
    dots = np.zeros(len(samples))
    autocast = torch.autocast(device_type=torch.device(device or "cpu").type, dtype=torch.bfloat16,
                              enabled=dtype == "bf16")
    for i, sample in enumerate(tqdm(samples, desc="per-sample gradients", unit="sample", mininterval=5)):
        ids, mask = collate([sample], device=device)
        with autocast:
            loss = sample_losses(model, ids, mask)[0]
        grads = torch.autograd.grad(loss, plist, allow_unused=True)
        sq, dot = 0.0, 0.0
        for g, n in zip(grads, names):
            if g is not None:
                g = g.double()
                sq += float(g.pow(2).sum())
                dot += float((g * lam[n].double()).sum())
        norms[i], dots[i] = math.sqrt(sq), dot
    return norms, dots


def grad_stats(samples_path: str, step_path: str, proxy_dir: str, out: str, *, step: int, part: int,
               num_parts: int, stats_dtype: str = "fp32", device: str = "auto",
               trust_remote_code: bool = False) -> None:
    device = resolve_device(device)
    table = pq.read_table(samples_path, columns=["sample_id", "input_ids"])
    rows = part_rows(len(table), part, num_parts)
    table = table.take(pa.array(rows, pa.int64()))
    model = load_proxy(proxy_dir, device, trust_remote_code)
    theta, lam = load_step(step_path, device)
    set_params(model, theta)
    sample_ids = table["sample_id"].to_numpy()
    norms, dots = per_sample_stats(model, table["input_ids"].to_pylist(), lam, stats_dtype, device)
    bad = np.flatnonzero(~(np.isfinite(norms) & np.isfinite(dots)))
    if len(bad):
        raise NonFiniteError(f"non-finite per-sample gradient at step {step}, sample_id "
                             f"{int(sample_ids[bad[0]])} ({len(bad)} such samples in this part)")
    lam_norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in lam.values()))
    write_table(out, pa.table({
        "sample_id": sample_ids, "step": np.full(len(rows), step, np.int32), "grad_norm": norms,
        "dot": dots, "lambda_norm": np.full(len(rows), lam_norm)}, schema=STATS_SCHEMA))
