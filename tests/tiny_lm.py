"""Tiny LMs and the independent references the annotation tests compare with: Mistral and XGLM
architectures small enough for float64 brute force, random token samples, a per-sample loss
written without lqs.proxy, and the per-sample statistics and costate solve they are checked
against (tests/test_annotation.py, tests/test_compiled.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import AutoModelForCausalLM, MistralConfig, XGLMConfig

from lqs.costate import solve
from lqs.proxy import set_params

VOCAB = 50
T = 4  # SGD steps of the trajectories run_solve solves, at learning rate LR
LR = 0.5


def tiny_mistral(dtype=torch.float64, tie: bool = False, seed: int = 0, attn: str = "eager") -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                        tie_word_embeddings=tie)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    return _roughen(model, seed).to(dtype).eval()


def tiny_xglm(dtype=torch.float64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = XGLMConfig(vocab_size=VOCAB, d_model=16, ffn_dim=32, num_layers=1, attention_heads=2,
                     max_position_embeddings=64)  # ties its embeddings by default
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return _roughen(model, seed).to(dtype).eval()


def _roughen(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Larger random weights than the HF init (std 0.02): more varied per-sample gradients."""
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def random_samples(n: int, lo: int = 2, hi: int = 12) -> list[list[int]]:
    """Random token sequences of lo..hi tokens (global torch RNG: seed it first)."""
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, ()))
        out.append(torch.randint(0, VOCAB, (length,)).tolist())
    return out


def own_loss(model, params: dict | None, sample: list[int]) -> torch.Tensor:
    """ℓ(x): mean next-token cross-entropy of x[1:] given x[:-1], one unpadded sample, written
    independently of lqs.proxy."""
    ids = torch.tensor(sample, dtype=torch.long)
    if params is None:
        logits = model(input_ids=ids[None]).logits[0, :-1]
    else:
        logits = functional_call(model, params, args=(), kwargs={"input_ids": ids[None]}).logits[0, :-1]
    return F.cross_entropy(logits, ids[1:])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def brute_sample_stats(model, samples, lam: dict) -> tuple[np.ndarray, np.ndarray]:
    """‖g(x)‖ and ⟨g(x), λ⟩ from each sample's full flattened gradient over the distinct
    parameter tensors (a tied tensor once, with both of its uses' contributions)."""
    unique: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in unique:
            unique[id(p)] = (p, lam[name])
    params = [p for p, _ in unique.values()]
    lam_flat = torch.cat([v.reshape(-1).double() for _, v in unique.values()])
    norms, dots = [], []
    for s in samples:
        g = torch.cat([x.reshape(-1).double() for x in torch.autograd.grad(own_loss(model, None, s), params)])
        norms.append(float(g.norm()))
        dots.append(float(g @ lam_flat))
    return np.array(norms), np.array(dots)


def run_solve(model, theta0, batches, target, checkpoint_every, fused: bool = False):
    set_params(model, theta0)
    saved = {}

    def on_save(t, theta, lam):
        assert t not in saved, f"step {t} saved twice"
        saved[t] = ({k: v.detach().clone() for k, v in theta.items()},
                    {k: v.detach().clone() for k, v in lam.items()})

    record = solve(model, batches, target, LR, set(range(T)), on_save, micro_batch=2,
                   checkpoint_every=checkpoint_every, fused=fused)
    return saved, record
