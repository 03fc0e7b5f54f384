"""Per-sample statistics: the fast path against the materialise-everything baseline.

The baseline is what the reference implementation does: vmap over full per-sample gradient
vectors, fp32, micro-batch 8. Both run on the same model and samples in one session; the
script prints samples/s, peak memory and their ratios (not a test).

    python benchmarks/annotation.py                       # CPU: a small Mistral
    python benchmarks/annotation.py --preset paper-160m   # GPU: 160M Mistral × 1024 tokens
    python benchmarks/annotation.py --bf16-spearman       # + bf16-vs-fp32 agreement
    python benchmarks/annotation.py --demo-results results  # bf16-vs-fp32 labels of the demo
"""

from __future__ import annotations

import argparse
import json
import gc
import threading
import time

import numpy as np
import psutil
import torch

from lqs.grad_stats import per_sample_stats
from lqs.labels import raw_scores
from lqs.proxy import norm
from lqs.train_scorer import spearman

PRESETS = {
    # BSL-160M's architecture (Mistral, 12 layers × 768, vocab 32000), random weights.
    "paper-160m": dict(model=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, num_key_value_heads=12, vocab_size=32000),
                       seq=1024, samples=64),
    "cpu-small": dict(model=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=4, vocab_size=8192),
                      seq=256, samples=32),
}
PAPER_WORK = 163_840 * 10  # proxy samples × annotated steps


def build(preset: dict, device: torch.device):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(**preset["model"], max_position_embeddings=max(2048, preset["seq"]),
                           attn_implementation="eager", tie_word_embeddings=False)
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


def measure(model, samples, lam, device, method, micro_batch, dtype="fp32"):
    """Throughput and peak memory above the starting point (model, samples and λ excluded)."""
    per_sample_stats(model, samples[:micro_batch], lam, dtype, device, micro_batch, method)  # warm-up
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        sampler = RssPeak()
        base = sampler.process.memory_info().rss
        sampler.start()
    start = time.perf_counter()
    norms, dots = per_sample_stats(model, samples, lam, dtype, device, micro_batch, method)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        sampler.done.set()
        sampler.join()
        peak = sampler.peak
    seconds = time.perf_counter() - start
    return {"method": method, "dtype": dtype, "micro_batch": micro_batch,
            "samples_per_s": len(samples) / seconds, "peak_bytes": peak - base,
            "norms": norms, "dots": dots}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default=None)
    parser.add_argument("--fast-micro-batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--skip-baseline", action="store_true",
                        help="only the fast path (the baseline at 160M on a CPU takes very long)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (default: H100 dense bf16 989, tf32 495)")
    parser.add_argument("--bf16-spearman", action="store_true")
    parser.add_argument("--demo-results", default=None, help="a finished demo's results/ directory")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = dict(PRESETS[args.preset or ("paper-160m" if device.type == "cuda" else "cpu-small")])
    if args.samples:
        preset["samples"] = args.samples
    model, samples, lam = build(preset, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"device {device}, {params / 1e6:.1f}M parameters, {len(samples)} samples × {preset['seq']} tokens")

    fast = measure(model, samples, lam, device, "fast", args.fast_micro_batch)
    rows = [fast]
    result = {"fast_samples_per_s": fast["samples_per_s"], "fast_peak_gib": fast["peak_bytes"] / 2**30}
    if not args.skip_baseline:
        base = measure(model, samples, lam, device, "vmap", 8)
        agree = max(np.max(np.abs(fast["norms"] - base["norms"]) / base["norms"]),
                    np.max(np.abs(fast["dots"] - base["dots"])) / np.max(np.abs(base["dots"])))
        rows.insert(0, base)
        result |= {"speedup": fast["samples_per_s"] / base["samples_per_s"],
                   "memory_ratio": fast["peak_bytes"] / max(base["peak_bytes"], 1),
                   "max_relative_disagreement": float(agree)}
    for r in rows:
        print(f"{r['method']:>5} mb={r['micro_batch']:<3} {r['samples_per_s']:8.2f} samples/s  "
              f"peak {r['peak_bytes'] / 2**30:7.3f} GiB above the model's")
    if device.type == "cuda":
        flops_per_sample = 6 * params * preset["seq"]  # forward + backward, model FLOPs
        peak = (args.peak_tflops or 495.0) * 1e12  # fp32 runs on TF32 tensor cores at best
        result["mfu"] = fast["samples_per_s"] * flops_per_sample / peak
        result["paper_annotation_gpu_hours"] = PAPER_WORK / fast["samples_per_s"] / 3600
        if not args.skip_baseline:
            result["baseline_paper_annotation_gpu_hours"] = PAPER_WORK / base["samples_per_s"] / 3600
    if args.bf16_spearman:
        bf16 = measure(model, samples, lam, device, "fast", args.fast_micro_batch, "bf16")
        lam_norm = norm(lam)
        one_step = lambda r: raw_scores(r["norms"][:, None], r["dots"][:, None], np.full((len(samples), 1), lam_norm), 1.0, "lqs")
        result["bf16_vs_fp32_spearman"] = {"grad_norm": spearman(bf16["norms"], fast["norms"]),
                                           "dot": spearman(bf16["dots"], fast["dots"]),
                                           "lqs_one_step": spearman(one_step(bf16), one_step(fast))}
        result["bf16_speedup"] = bf16["samples_per_s"] / fast["samples_per_s"]
    if args.demo_results:
        result["demo_bf16_vs_fp32_label_spearman"] = demo_labels_spearman(args.demo_results, device)
    print(json.dumps(result, indent=2))


def demo_labels_spearman(results: str, device: torch.device) -> float:
    """Recomputes a finished demo's lqs labels with fp32 and bf16 statistics; their Spearman."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from lqs.proxy import load_proxy, set_params
    from lqs.trajectory import load_step

    root = Path(results)
    samples = pq.read_table(root / "proxy/samples.parquet")["input_ids"].to_pylist()
    info = json.loads((root / "annotation/labels.json").read_text())
    model = load_proxy(str(root / "models/proxy"), device)
    stats = {"fp32": ([], [], []), "bf16": ([], [], [])}
    for t in info["annotated_steps"]:
        theta, lam = load_step(root / f"annotation/trajectory/step-{t}.safetensors", device)
        set_params(model, theta)
        lam_norm = norm(lam)
        for dtype, (n, d, ln) in stats.items():
            norms, dots = per_sample_stats(model, samples, lam, dtype, device, 16, "fast")
            n.append(norms), d.append(dots), ln.append(np.full(len(samples), lam_norm))
    labels = {dtype: raw_scores(*(np.stack(x, 1) for x in arrays), info["lr"], info["score"])
              for dtype, arrays in stats.items()}
    return spearman(labels["bf16"], labels["fp32"])


if __name__ == "__main__":
    main()
