"""Stage `trajectory`: the SGD trajectory of the proxy LM and its costate (docs/stages.md#trajectory).

Draws the training batches from the corpus windows, solves θ_t and λ_t (lqs.costate, as
docs/maths.md#the-trajectory-and-the-costate) and writes step-{t}.safetensors with θ_t and
λ_{t+1} for every annotated step t, the per-step log and the batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from safetensors.torch import save_file

from lqs.config import annotated_steps
from lqs.costate import read_token_lists, solve, step_file
from lqs.io import atomic_path, write_table
from lqs.proxy import Params, load_proxy, set_tf32
from lqs.runtime import resolve_device
from lqs.sample import draw_windows
from lqs.stage import MODELS, Arg, Stage


@dataclass(frozen=True)
class Settings:
    lr: float  # annotation.lr: η
    steps: int  # annotation.steps: T
    interval: int  # annotation.interval: every interval-th step is annotated
    batch_size: int  # annotation.batch_size: samples per SGD step
    seed: int  # annotation.seed: the draw of the training batches
    micro_batch: int  # annotation.micro_batch: samples per gradient pass
    hvp_micro_batch: int | None  # annotation.hvp_micro_batch: per Hessian-vector product pass (None: fitted)
    tf32: bool  # annotation.tf32: float32 matrix products on TF32 tensor cores (GPU; see proxy.set_tf32)
    compile: bool  # annotation.compile: θ and λ updates in multi-tensor kernels (lqs.costate.solve's fused)
    device: str  # device
    trust_remote_code: bool  # models.trust_remote_code


def trajectory(
    proxy_dir: str,
    shard_paths: Sequence[str],
    target_path: str,
    out_dir: str,
    settings: Settings,
) -> dict[str, int]:
    """Draws the training batches from the corpus, solves the trajectory and costate, and writes
    step-{t}.safetensors for t in S, log.parquet and batches.parquet under `out_dir`. Returns
    the SGD steps and the training samples in their batches."""
    s = settings
    steps, batch_size = s.steps, s.batch_size
    device = resolve_device(s.device)
    set_tf32(s.tf32)
    out_dir = Path(out_dir)
    draws = draw_windows(shard_paths, steps * batch_size, s.seed, allow_repeats=True,
                         what="training batch samples")
    rows = draws.to_pylist()
    batches = [[r["input_ids"] for r in rows[t * batch_size:(t + 1) * batch_size]] for t in range(steps)]
    batch_rows = [[{"doc_id": r["doc_id"], "window": r["window"]}
                   for r in rows[t * batch_size:(t + 1) * batch_size]] for t in range(steps)]
    target = read_token_lists(target_path)
    if not target:
        raise ValueError(f"{target_path}: the target set is empty")
    model = load_proxy(proxy_dir, device, s.trust_remote_code)

    def save(t: int, theta: Params, lam: Params) -> None:
        tensors = {f"theta.{k}": v.contiguous() for k, v in theta.items()}
        tensors |= {f"lambda.{k}": v.contiguous() for k, v in lam.items()}
        with atomic_path(step_file(out_dir, t)) as tmp:
            save_file(tensors, str(tmp), metadata={"step": str(t), "lr": repr(s.lr)})

    record = solve(model, batches, target, s.lr, set(annotated_steps(steps, s.interval)), save,
                   micro_batch=s.micro_batch, hvp_micro_batch=s.hvp_micro_batch, batch_rows=batch_rows,
                   device=device, progress=True, fused=s.compile)
    write_table(out_dir / "log.parquet", pa.table(record, schema=pa.schema([
        ("step", pa.int32()), ("train_loss", pa.float64()), ("target_loss", pa.float64()),
        ("lambda_norm", pa.float64())])))
    positions = [p for _ in range(steps) for p in range(batch_size)]
    write_table(out_dir / "batches.parquet", pa.table({
        "step": pa.array([t for t in range(steps) for _ in range(batch_size)], pa.int32()),
        "position": pa.array(positions, pa.int32()),
        "doc_id": draws["doc_id"], "window": draws["window"], "input_ids": draws["input_ids"]}))
    return {"steps": steps, "samples": steps * batch_size}


STAGE = Stage(
    help="SGD trajectory and costate of the proxy LM",
    run=trajectory,
    args=(Arg("proxy_dir"), Arg("shard_paths", "+"), Arg("--target-path"), Arg("--out-dir")),
    settings=Settings,
    counters={"steps": "steps", "samples": "samples"},
    preload=MODELS,
)
