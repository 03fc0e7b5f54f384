"""Stage `grad_stats`: per-sample gradient statistics at one annotated step (docs/stages.md#grad_stats).

For each sample x of one part of the proxy set, n_t(x) = ‖∇ℓ(x; θ_t)‖ and
d_t(x) = ⟨∇ℓ(x; θ_t), λ_{t+1}⟩, by lqs.per_sample (docs/maths.md#per-sample-gradient-statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lqs import distributed
from lqs.costate import load_step
from lqs.io import read_parquet, write_table
from lqs.per_sample import STATS_SCHEMA, part_rows, per_sample_stats
from lqs.proxy import load_proxy, norm, set_params, set_tf32
from lqs.runtime import NonFiniteError
from lqs.stage import MODELS, Arg, Stage


@dataclass(frozen=True)
class Settings:
    step: int  # the annotated step t (the rule's wildcard)
    part: int  # the part of the proxy set (the rule's wildcard)
    num_parts: int  # proxy.num_parts
    stats_dtype: str  # annotation.stats_dtype: fp32 or bf16
    micro_batch: int  # annotation.stats_micro_batch: samples per forward pass
    tf32: bool  # annotation.tf32: float32 matrix products on TF32 tensor cores (GPU; see proxy.set_tf32)
    compile: bool  # annotation.compile: the fast path's reductions through torch.compile
    device: str  # device
    trust_remote_code: bool  # models.trust_remote_code


def grad_stats(samples_path: str, step_path: str, proxy_dir: str, out: str, settings: Settings,
               method: str = "auto") -> dict[str, int]:
    """Writes the stats of one part of the proxy set at one step; under torchrun each rank
    computes every world-th sample of the part and rank 0 writes them all. Returns the part's
    samples and their tokens. method: per_sample_stats's ("auto": the fast path where it covers
    the model)."""
    s = settings
    ctx = distributed.setup(s.device)
    set_tf32(s.tf32)
    table = read_parquet(samples_path, ["sample_id", "input_ids"])
    rows = part_rows(len(table), s.part, s.num_parts)
    table = table.take(pa.array(rows, pa.int64()))
    model = load_proxy(proxy_dir, ctx.device, s.trust_remote_code)
    theta, lam = load_step(step_path, ctx.device)
    set_params(model, theta)
    ids = table["input_ids"].to_pylist()
    mine = ids[ctx.rank::ctx.world]
    norms, dots = np.zeros(len(rows)), np.zeros(len(rows))
    for rank, (n, d) in enumerate(distributed.all_gather(ctx, per_sample_stats(
            model, mine, lam, s.stats_dtype, ctx.device, s.micro_batch, method, progress=ctx.main,
            compile=s.compile))):
        norms[rank::ctx.world], dots[rank::ctx.world] = n, d
    sample_ids = table["sample_id"].to_numpy()
    bad = np.flatnonzero(~(np.isfinite(norms) & np.isfinite(dots)))
    if len(bad):
        raise NonFiniteError(f"non-finite per-sample gradient at step {s.step}, sample_id "
                             f"{int(sample_ids[bad[0]])} ({len(bad)} such samples in this part)")
    lam_norm = norm(lam)
    if ctx.main:
        write_table(out, pa.table({
            "sample_id": sample_ids, "step": np.full(len(rows), s.step, np.int32), "grad_norm": norms,
            "dot": dots, "lambda_norm": np.full(len(rows), lam_norm)}, schema=STATS_SCHEMA))
    distributed.teardown(ctx)
    return {"samples": len(rows), "tokens": sum(map(len, ids))}


STAGE = Stage(
    help="per-sample gradient norms and costate dot products at one step",
    run=grad_stats,
    args=(Arg("samples_path"), Arg("step_path"), Arg("proxy_dir"), Arg("--out")),
    settings=Settings,
    counters={"samples": "samples", "tokens": "tokens"},
    preload=MODELS,
    distributed=True,
)
