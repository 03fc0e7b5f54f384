"""Annotation speed: per-sample statistics (fast path, precisions, micro-batches) against the
materialise-everything baseline, a kernel profile, and the trajectory stage's parts.

The baseline is what the reference implementation does: vmap over full per-sample gradient
vectors, fp32, micro-batch 8. Every run uses the same model and samples in one process; the
script prints samples/s, peak memory, MFU and the paper-annotation projection, and each run's
Spearman agreement with the first (not a test). A run is PRECISION:MICRO_BATCH, PRECISION one
of fp32, tf32 (fp32 with TF32 matrix products), bf16 (autocast), bf16w (stats_dtype bf16 on a copy
of the model with bf16 weights: no autocast casts, a bf16 residual stream).

    python benchmarks/annotation.py                                   # CPU: a small Mistral
    python benchmarks/annotation.py --preset paper-160m --runs fp32:8 bf16:16 bf16:32
    python benchmarks/annotation.py --preset paper-160m --skip-baseline --profile bf16:16
    python benchmarks/annotation.py --preset paper-160m --skip-baseline --runs --trajectory
    python benchmarks/annotation.py --skip-baseline --compile                # compiled vs eager
    python benchmarks/annotation.py --demo-results results            # bf16-vs-fp32 labels of the demo
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import math
import threading
import time

import numpy as np
import psutil
import torch

from lqs.costate import _axpy, fit_hvp_micro_batch, hvp, solve
from lqs.labels import raw_scores
from lqs.per_sample import per_sample_stats
from lqs.proxy import get_params, loss_and_grad, norm, set_params, set_tf32
from lqs.scorer import spearman

PRESETS = {
    # BSL-160M's architecture (Mistral, 12 layers × 768, vocab 32000), random weights.
    "paper-160m": dict(model=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, num_key_value_heads=12, vocab_size=32000),
                       seq=1024, samples=64),
    "cpu-small": dict(model=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=4, vocab_size=8192),
                      seq=256, samples=32),
    # Seconds on a CPU: checks that every option runs before a GPU is spent on it.
    "smoke": dict(model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
                  seq=64, samples=8),
}
PAPER_WORK = 163_840 * 10  # proxy samples × annotated steps
PAPER_TRAJECTORY = dict(steps=100, batch_size=16, target_tokens=551_000)  # LIMA: ≈ 551k tokens
# H100/H200 SXM dense; fp32 as the issue counts it
PEAK_TFLOPS = {"bf16": 989.0, "bf16w": 989.0, "tf32": 495.0, "fp32": 495.0}


def build(preset: dict, device: torch.device):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    # SDPA, as load_proxy loads the proxy (the vmap path switches to eager itself).
    config = MistralConfig(**preset["model"], max_position_embeddings=max(2048, preset["seq"]),
                           attn_implementation="sdpa", tie_word_embeddings=False)
    model = MistralForCausalLM(config).to(device).eval()
    rng = np.random.default_rng(0)
    samples = rng.integers(3, config.vocab_size, (preset["samples"], preset["seq"])).tolist()
    lam = {n: torch.randn_like(p) * 1e-3 for n, p in model.named_parameters()}
    return model, samples, lam


class RssPeak(threading.Thread):
    """Samples this process's resident memory every few ms; `.peak` is the highest seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()

    def run(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)


class Peak:
    """Seconds and peak memory above the starting point of a block (GPU: allocator; CPU: RSS)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.sampler = RssPeak()
            self.base = self.sampler.process.memory_info().rss
            self.sampler.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.base
            self.total_peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.sampler.done.set()
            self.sampler.join()
            self.peak_bytes = self.total_peak_bytes = self.sampler.peak - self.base
        self.seconds = time.perf_counter() - self.start


def parse_run(text: str) -> tuple[str, int]:
    precision, micro_batch = text.split(":")
    if precision not in PEAK_TFLOPS:
        raise argparse.ArgumentTypeError(f"{text}: precision must be one of {sorted(PEAK_TFLOPS)}")
    return precision, int(micro_batch)


@functools.cache
def bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16)


def stats(model, samples, lam, device, method: str, precision: str, micro_batch: int, compile: bool = False):
    set_tf32(precision == "tf32")
    dtype = "bf16" if precision.startswith("bf16") else "fp32"
    model = bf16_copy(model) if precision == "bf16w" else model
    return per_sample_stats(model, samples, lam, dtype, device, micro_batch, method, compile=compile)


def measure(model, samples, lam, device, method: str, precision: str, micro_batch: int,
            compile: bool = False) -> dict:
    """Throughput and peak memory above the starting point (model, samples and λ excluded). The
    warm-up covers the last, smaller micro-batch too: compiling happens there, not in the timing."""
    warm_up = samples[:micro_batch + len(samples) % micro_batch]
    stats(model, warm_up, lam, device, method, precision, micro_batch, compile)
    with Peak(device) as p:
        norms, dots = stats(model, samples, lam, device, method, precision, micro_batch, compile)
    return {"run": f"{method} {precision}:{micro_batch}" + (" compiled" if compile else ""),
            "samples_per_s": len(samples) / p.seconds, "peak_gib": p.peak_bytes / 2**30, "norms": norms,
            "dots": dots, "precision": precision}


def compiled_vs_eager(model, samples, lam, device, runs: list[tuple[str, int]], lam_norm: float,
                      repeats: int = 2) -> dict:
    """Each run eager and compiled (annotation.compile) side by side, alternating `repeats` times
    (the fastest of each counts: a shared host's load moves single timings): samples/s of each,
    their ratio, the largest difference between them and, for bf16 runs, each one's Spearman
    (one-step lqs labels) against the eager fp32 run (measured here if not a run)."""
    out, fp32 = {}, None
    for precision, micro_batch in runs:
        pair = [measure(model, samples, lam, device, "fast", precision, micro_batch, compile)
                for _ in range(repeats) for compile in (False, True)]
        eager, fast = (max(pair[i::2], key=lambda r: r["samples_per_s"]) for i in (0, 1))
        diff = agreement(fast, eager, lam_norm)
        row = {"eager_samples_per_s": eager["samples_per_s"], "compiled_samples_per_s": fast["samples_per_s"],
               "ratio": fast["samples_per_s"] / eager["samples_per_s"],
               "max_rel_norm_diff": diff["max_rel_norm_diff"],
               "max_dot_diff_over_max_dot": diff["max_dot_diff_over_max_dot"]}
        if precision == "fp32":
            fp32 = fp32 or eager
        elif precision.startswith("bf16"):
            fp32 = fp32 or measure(model, samples, lam, device, "fast", "fp32", micro_batch)
            row |= {"spearman_lqs_vs_fp32_eager": agreement(eager, fp32, lam_norm)["spearman_lqs_one_step"],
                    "spearman_lqs_vs_fp32_compiled": agreement(fast, fp32, lam_norm)["spearman_lqs_one_step"]}
        out[eager["run"]] = row
        print(f"{eager['run']:>16} eager {row['eager_samples_per_s']:7.2f} samples/s, compiled "
              f"{row['compiled_samples_per_s']:7.2f}: ratio {row['ratio']:.2f}; max rel diff norm "
              f"{row['max_rel_norm_diff']:.1e}, dot {row['max_dot_diff_over_max_dot']:.1e}"
              + (f"; Spearman(lqs) vs fp32: eager {row['spearman_lqs_vs_fp32_eager']:.5f}, compiled "
                 f"{row['spearman_lqs_vs_fp32_compiled']:.5f}" if "spearman_lqs_vs_fp32_eager" in row else ""))
    return out


def axpy_fused_vs_eager(model, device, repeats: int = 20) -> dict:
    """The trajectory's θ update (lqs.costate._axpy over the model's parameters), per-tensor
    against multi-tensor kernels: ms of each and their largest difference."""
    theta = get_params(model)
    grad = {n: torch.randn_like(v) for n, v in theta.items()}
    out = {}
    for fused in (False, True):
        _axpy(-1e-3, grad, theta, fused)  # warm-up
        with Peak(device) as p:
            for _ in range(repeats):
                result = _axpy(-1e-3, grad, theta, fused)
        out["fused_ms" if fused else "eager_ms"] = 1e3 * p.seconds / repeats
        out["fused" if fused else "eager"] = result
    eager, fused = out.pop("eager"), out.pop("fused")
    out["max_abs_diff"] = max(float((eager[n] - fused[n]).abs().max()) for n in eager)
    print(f"trajectory axpy over θ: eager {out['eager_ms']:.2f} ms, multi-tensor {out['fused_ms']:.2f} ms, "
          f"max |diff| {out['max_abs_diff']:.1e}")
    return out


def agreement(run: dict, ref: dict, lam_norm: float) -> dict:
    def one_step(r):
        return raw_scores(r["norms"][:, None], r["dots"][:, None], np.full((len(r["norms"]), 1), lam_norm), 1.0, "lqs")

    return {"spearman_grad_norm": spearman(run["norms"], ref["norms"]),
            "spearman_dot": spearman(run["dots"], ref["dots"]),
            "spearman_lqs_one_step": spearman(one_step(run), one_step(ref)),
            "max_rel_norm_diff": float(np.max(np.abs(run["norms"] - ref["norms"]) / ref["norms"])),
            "max_dot_diff_over_max_dot": float(np.max(np.abs(run["dots"] - ref["dots"])) / np.max(np.abs(ref["dots"])))}


def profile(model, samples, lam, device, precision: str, micro_batch: int, rows: int = 15) -> None:
    """The top kernels (GPU) or operators (CPU) of the fast path over two micro-batches."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch = samples[:2 * micro_batch]
    stats(model, batch[:micro_batch], lam, device, "fast", precision, micro_batch)  # warm-up
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with Peak(device) as p, torch_profile(activities=activities) as prof:
        stats(model, batch, lam, device, "fast", precision, micro_batch)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind and getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1
    print(f"profile: fast path {precision}:{micro_batch}, {len(batch)} samples in {p.seconds * 1e3:.0f} ms "
          f"(profiled), {'kernels' if cuda else 'operators'} {total / 1e3:.0f} ms; top {rows}:")
    for e in sorted(events, key=lambda e: -getattr(e, key))[:rows]:
        print(f"  {100 * getattr(e, key) / total:5.1f}%  {getattr(e, key) / 1e3:9.1f} ms  {e.count:6d}×  {e.key[:110]}")


def trajectory_bench(model, preset: dict, device: torch.device, micro_batch: int, tf32: bool,
                     budget_gib: float = 24.0) -> dict:
    """The trajectory stage's parts at this model size: an SGD step on a 16-sample batch, the
    target gradient per sample, a Hessian-vector product (micro-batch fitted to the card and to
    `budget_gib`), the peak of a real 3-step solve; the paper's T = 100 with the LIMA target
    projected from them."""
    set_tf32(tf32)
    seq, rng = preset["seq"], np.random.default_rng(1)
    vocab = model.config.vocab_size
    batch = rng.integers(3, vocab, (PAPER_TRAJECTORY["batch_size"], seq)).tolist()
    target = rng.integers(3, vocab, (4 * micro_batch, seq)).tolist()
    lam = {n: torch.randn_like(p) * 1e-3 for n, p in get_params(model).items()}
    theta0 = get_params(model)
    out = {"tf32": tf32, "micro_batch": micro_batch}

    loss_and_grad(model, batch[:micro_batch], micro_batch, device)  # warm-up
    with Peak(device) as p:
        loss_and_grad(model, batch, micro_batch, device)
    out |= {"sgd_step_s": p.seconds, "sgd_step_peak_gib": p.peak_bytes / 2**30}
    with Peak(device) as p:
        loss_and_grad(model, target, micro_batch, device)
    out |= {"target_grad_s_per_sample": p.seconds / len(target)}

    hvp_mb = fit_hvp_micro_batch(model, batch, lam, PAPER_TRAJECTORY["batch_size"], device)
    if device.type == "cuda":  # memory per sample and the micro-batch that fits budget_gib in all
        peaks = []
        for n in (1, 2):
            with Peak(device) as p:
                hvp(model, batch[:1] * n, lam, n, device)
            peaks.append(p.peak_bytes)
        per_sample, fixed = peaks[1] - peaks[0], 2 * peaks[0] - peaks[1]
        held = torch.cuda.memory_allocated(device)
        hvp_mb_budget = max(1, min(16, int((budget_gib * 2**30 * 0.9 - held - fixed) // per_sample)))
        out |= {"hvp_gib_per_sample": per_sample / 2**30, "hvp_micro_batch_fitted": hvp_mb,
                f"hvp_micro_batch_{budget_gib:g}gib": hvp_mb_budget}
        hvp_mb = hvp_mb_budget
    hvp(model, batch[:hvp_mb], lam, hvp_mb, device)  # warm-up
    with Peak(device) as p:
        hvp(model, batch, lam, hvp_mb, device)
    out |= {"hvp_micro_batch": hvp_mb, "hvp_s": p.seconds, "hvp_peak_gib": p.peak_bytes / 2**30}

    # A real solve, 3 steps: the stage's peak with θ, λ, checkpoints and gradients held.
    set_params(model, theta0)
    saved = {}
    with Peak(device) as p:
        solve(model, [batch] * 3, target[:micro_batch], 1e-3, {0}, lambda t, th, la: saved.update(la),
              micro_batch=micro_batch, hvp_micro_batch=hvp_mb, device=device)
    set_params(model, theta0)
    out |= {"solve_3_steps_s": p.seconds, "solve_3_steps_total_peak_gib": p.total_peak_bytes / 2**30,
            "lambda_1": torch.cat([v.flatten().double().cpu() for v in saved.values()])}

    steps = PAPER_TRAJECTORY["steps"]
    c = math.isqrt(steps - 1) + 1
    sgd_steps = steps + steps - math.ceil(steps / c)  # forward, then each segment recomputed
    target_samples = PAPER_TRAJECTORY["target_tokens"] / seq
    parts = {"sgd": sgd_steps * out["sgd_step_s"],
             "target": (steps + 1) * target_samples * out["target_grad_s_per_sample"],
             "hvp": (steps - 1) * out["hvp_s"]}
    out["paper_projection_minutes"] = {k: v / 60 for k, v in parts.items()} | {"total": sum(parts.values()) / 60}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--runs", type=parse_run, nargs="*", default=[("fp32", 8), ("bf16", 8)],
                        help="fast-path runs, PRECISION:MICRO_BATCH; the first is the agreement reference")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="no vmap baseline (at 160M on a CPU it takes very long)")
    parser.add_argument("--profile", type=parse_run, default=None, metavar="PRECISION:MICRO_BATCH",
                        help="print the top kernels of the fast path in this configuration")
    parser.add_argument("--compile", action="store_true",
                        help="each run of --runs eager and compiled side by side (annotation.compile), and the "
                             "trajectory's θ update per-tensor and multi-tensor")
    parser.add_argument("--trajectory", action="store_true", help="time the trajectory stage's parts")
    parser.add_argument("--trajectory-micro-batch", type=int, default=8)
    parser.add_argument("--demo-results", default=None, help="a finished demo's results/ directory")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = dict(PRESETS[args.preset or ("paper-160m" if device.type == "cuda" else "cpu-small")])
    if args.samples:
        preset["samples"] = args.samples
    model, samples, lam = build(preset, device)
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, {params / 1e6:.1f}M parameters, {len(samples)} samples × {preset['seq']} tokens")
    result: dict = {"device": name, "runs": {}}
    lam_norm = norm(lam)
    # --compile measures the runs itself, each eager beside compiled
    runs = [] if args.compile else [measure(model, samples, lam, device, "fast", *run) for run in args.runs]
    if not args.skip_baseline:
        runs.append(measure(model, samples, lam, device, "vmap", "fp32", 8))
    flops_per_sample = 6 * params * preset["seq"]  # forward + backward, model FLOPs
    for r in runs:
        row = {k: r[k] for k in ("samples_per_s", "peak_gib")}
        if r is not runs[0]:
            row |= agreement(r, runs[0], lam_norm)
        if device.type == "cuda":
            row["mfu"] = r["samples_per_s"] * flops_per_sample / (PEAK_TFLOPS[r["precision"]] * 1e12)
            row["paper_annotation_gpu_hours"] = PAPER_WORK / r["samples_per_s"] / 3600
        result["runs"][r["run"]] = row
        print(f"{r['run']:>16} {r['samples_per_s']:8.2f} samples/s  peak {r['peak_gib']:7.3f} GiB above the model's"
              + (f"  MFU {row['mfu']:.1%}  paper {row['paper_annotation_gpu_hours']:.2f} GPU-hours"
                 if "mfu" in row else "")
              + (f"  Spearman(lqs) {row['spearman_lqs_one_step']:.5f}" if "spearman_lqs_one_step" in row else ""))
    if not args.skip_baseline:
        base = runs[-1]["samples_per_s"]
        result["speedup_vs_vmap"] = {r["run"]: r["samples_per_s"] / base for r in runs[:-1]}
    if args.compile:
        result["compiled_vs_eager"] = compiled_vs_eager(model, samples, lam, device, args.runs, lam_norm)
        result["trajectory_axpy"] = axpy_fused_vs_eager(model, device)
    if args.profile:
        profile(model, samples, lam, device, *args.profile)
    if args.trajectory:
        modes = (False, True) if device.type == "cuda" else (False,)
        result["trajectory"] = [trajectory_bench(model, preset, device, args.trajectory_micro_batch, tf32)
                                for tf32 in modes]
        lams = [r.pop("lambda_1") for r in result["trajectory"]]
        if len(lams) == 2:  # what TF32 costs the costate: λ_1 of the 3-step solve against fp32
            result["trajectory_tf32_lambda_1_relative_error"] = float((lams[1] - lams[0]).norm() / lams[0].norm())
    if args.demo_results:
        result["demo_bf16_vs_fp32_label_spearman"] = demo_labels_spearman(args.demo_results, device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")


def demo_labels_spearman(results: str, device: torch.device) -> float:
    """Recomputes a finished demo's lqs labels with fp32 and bf16 statistics; their Spearman."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from lqs.costate import load_step
    from lqs.proxy import load_proxy

    root = Path(results)
    samples = pq.read_table(root / "proxy/samples.parquet")["input_ids"].to_pylist()
    info = json.loads((root / "annotation/labels.json").read_text())
    model = load_proxy(str(root / "models/proxy"), device)
    stats_by_dtype = {"fp32": ([], [], []), "bf16": ([], [], [])}
    for t in info["annotated_steps"]:
        theta, lam = load_step(root / f"annotation/trajectory/step-{t}.safetensors", device)
        set_params(model, theta)
        lam_norm = norm(lam)
        for dtype, (n, d, ln) in stats_by_dtype.items():
            norms, dots = per_sample_stats(model, samples, lam, dtype, device, 16, "fast")
            n.append(norms), d.append(dots), ln.append(np.full(len(samples), lam_norm))
    labels = {dtype: raw_scores(*(np.stack(x, 1) for x in arrays), info["lr"], info["score"])
              for dtype, arrays in stats_by_dtype.items()}
    return spearman(labels["bf16"], labels["fp32"])


if __name__ == "__main__":
    main()
