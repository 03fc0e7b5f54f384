"""Per-sample gradient statistics at one annotated step (docs/maths.md#per-sample-gradient-statistics;
the stage: lqs.stages.grad_stats).

For each proxy sample x of one part of the proxy set, at step t:
    n_t(x) = ‖∇ℓ(x; θ_t)‖        d_t(x) = ⟨∇ℓ(x; θ_t), λ_{t+1}⟩

Two exact paths:
* fast: one forward and one activation-only backward per micro-batch. Each supported layer's
  per-sample gradient is a function of its captured input a and output gradient g (for a
  linear layer, G_b = Σ_s g_bs a_bsᵀ), reduced straight to ‖G_b‖² and ⟨G_b, Λ⟩ without
  forming the P-vector per sample. Linear (incl. the LM head), embeddings, LayerNorm and
  RMSNorm are covered; a weight shared by several layers (tied embeddings) is summed
  per sample before it is reduced. With compile, the reduction of each materialised per-sample
  gradient to its two sums runs through torch.compile: one fused read instead of two.
* vmap: torch.func vmap over per-sample grad, chunked: the generic fallback for models with
  other parameterised layers, and the reference.
Samples are independent in both, so a label can never land on another sample.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lqs.proxy import Params, attention, collate, sample_losses
from lqs.runtime import compiled

log = logging.getLogger(__name__)

STATS_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("step", pa.int32()), ("grad_norm", pa.float64()),
    ("dot", pa.float64()), ("lambda_norm", pa.float64())])


def part_rows(num_samples: int, part: int, num_parts: int) -> np.ndarray:
    """Row indices of one part of the proxy set: contiguous, near-equal slices."""
    return np.array_split(np.arange(num_samples), num_parts)[part]


# ---------------------------------------------------------------- fast path: per-layer pieces

def _is_rmsnorm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), nn.Parameter)


def _supported(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)) or _is_rmsnorm(module)


def fast_path_covers(model: nn.Module) -> bool:
    """True if every trainable parameter sits directly in a layer type the fast path handles."""
    covered = {id(p) for m in model.modules() if _supported(m) for p in m.parameters(recurse=False)}
    return all(id(p) in covered for p in model.parameters() if p.requires_grad)


def _normalized(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x̂ of a norm layer: its output before the elementwise weight (and bias)."""
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, eps=module.eps)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _bmm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y batched, the result at least fp32; bf16 operands run on a GPU's tensor cores with
    fp32 accumulation and output (a CPU has no such kernel: its bf16 result is upcast)."""
    if x.dtype == torch.bfloat16 and x.is_cuda:
        return torch.bmm(x, y, out_dtype=torch.float32)
    return _at_least_fp32(torch.bmm(x, y))


class _Piece:
    """One layer call's contribution to one parameter's per-sample gradients (batch B).
    a: the layer's input (linear: bf16 under stats_dtype bf16, else ≥ fp32; embedding: ids;
    scale: the normalised input x̂), g: its output gradient, (B, S, features)."""

    def __init__(self, kind: str, a: torch.Tensor | None, g: torch.Tensor, shape: torch.Size):
        self.kind, self.a, self.g, self.shape = kind, a, g, shape

    def materialize(self) -> torch.Tensor:
        """(B, *shape) per-sample gradients, at least fp32."""
        a, g = self.a, self.g
        if self.kind == "linear":
            return _bmm(g.transpose(1, 2), a)
        if self.kind == "embedding":
            out = torch.zeros((g.shape[0], *self.shape), dtype=g.dtype, device=g.device)
            return out.scatter_add_(1, a.unsqueeze(-1).expand_as(g), g)
        if self.kind == "scale":  # norm weight: Σ_s g ⊙ x̂
            return (g * a).sum(1)
        return g.sum(1, dtype=torch.promote_types(g.dtype, torch.float32))  # bias

    def reduce(self, lam: torch.Tensor, row_stats) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖G_b‖², ⟨G_b, Λ⟩) for each sample b in the cheapest exact form: for a linear layer
        G_b = Σ_s g_bs a_bsᵀ costs 2·S·n_in·n_out, its Gram form S²·(n_in + n_out); for an
        embedding, the rows of each sample's tokens summed (a sort, no host sync). row_stats:
        _row_stats or its compiled form, for the materialised G_b."""
        a, g = self.a, self.g
        if self.kind == "linear":
            seq, n_in, n_out = a.shape[1], a.shape[2], g.shape[2]
            if seq * (n_in + n_out) < n_in * n_out:  # Gram form: Σ_ss' (a_s·a_s')(g_s·g_s')
                sq = (_bmm(a, a.transpose(1, 2)) * _bmm(g, g.transpose(1, 2))).sum((1, 2))
                dot = (_at_least_fp32(torch.matmul(g, lam.to(g.dtype))) * a).sum((1, 2))
                return sq, dot
        if self.kind == "embedding":
            batch, vocab = g.shape[0], self.shape[0]
            key, order = (a + vocab * torch.arange(batch, device=a.device)[:, None]).flatten().sort()
            segment = torch.cat([key.new_zeros(1), (key[1:] != key[:-1]).cumsum(0)])  # one per (sample, id)
            summed = torch.zeros_like(g.flatten(0, 1)).index_add_(0, segment, g.flatten(0, 1)[order])
            sample = torch.zeros_like(key).scatter_(0, segment, key // vocab)  # unused segments: 0, sum 0
            sq = torch.zeros(batch, dtype=g.dtype, device=g.device).index_add_(0, sample, _squared_norms(summed))
            dot = (g * lam[a]).sum((1, 2))
            return sq, dot
        return row_stats(self.materialize().flatten(1), lam.flatten())


def _row_stats(rows: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖row‖², ⟨row, λ⟩) of each row of (B, N) per-sample gradients, λ flat (N,). Compiled, both
    sums come from one fused read of the rows (elementwise form: no temporary is written);
    uncompiled, that form would write a (B, N) temporary, so eager runs the two reductions."""
    if torch.compiler.is_compiling():
        return rows.pow(2).sum(1), (rows * lam).sum(1)
    return _squared_norms(rows), rows @ lam


@functools.cache
def _compiled_row_stats():
    """_row_stats through torch.compile, built once per process: where compiling fails, one log
    line says so and the eager form runs. Static shapes: one compilation per parameter shape and
    micro-batch size (the full one and the last), well under 64 for a transformer."""
    return compiled(_row_stats, "the per-sample statistics' reductions", shapes=64, fullgraph=True)


def _squared_norms(rows: torch.Tensor) -> torch.Tensor:
    """‖row‖² of each row. On a GPU in one read (rows.pow(2).sum(1) writes and reads a temporary
    as large as the per-sample gradients); a CPU's vector_norm accumulates fp32 less accurately
    (~1e-4 relative on 2M elements, against 1e-7 for the cascade sum)."""
    return torch.linalg.vector_norm(rows, dim=1).square() if rows.is_cuda else rows.pow(2).sum(1)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))  # bf16 up, fp64 kept


def _pieces(module: nn.Module, x: torch.Tensor, g: torch.Tensor, low: bool) -> list[tuple[nn.Parameter, _Piece]]:
    """Per-parameter pieces of one call of `module` with input x and output gradient g;
    low: a linear layer's product runs on bf16 operands (g is bf16 already under autocast)."""
    batch = g.shape[0]
    g = g.reshape(batch, -1, g.shape[-1])
    if isinstance(module, nn.Embedding):
        ids = x.reshape(batch, -1)
        g = _at_least_fp32(g) * getattr(module, "embed_scale", 1.0)  # scaled word embeddings (XGLM, M2M100)
        if module.padding_idx is not None:  # autograd leaves the padding row's gradient at 0
            g = g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0.0)
        return [(module.weight, _Piece("embedding", ids, g, module.weight.shape))]
    x = x.reshape(batch, -1, x.shape[-1])
    out = []
    if isinstance(module, nn.Linear):
        a, gl = (x.to(torch.bfloat16), g.to(torch.bfloat16)) if low else (_at_least_fp32(x), _at_least_fp32(g))
        out.append((module.weight, _Piece("linear", a, gl, module.weight.shape)))
    elif module.weight is not None:
        out.append((module.weight, _Piece("scale", _normalized(module, _at_least_fp32(x)), _at_least_fp32(g),
                                          module.weight.shape)))
    if getattr(module, "bias", None) is not None:
        out.append((module.bias, _Piece("bias", None, g, module.bias.shape)))
    return out


class _Reducer:
    """Accumulates Σ over parameters of ‖G_b‖² and ⟨G_b, Λ⟩ as layer gradients arrive. A weight
    used by several layer calls (tied embeddings) is summed per sample over all of its calls
    before it is reduced."""

    def __init__(self, batch: int, lam_by_param: dict[int, torch.Tensor], low: bool, device, row_stats):
        self.lam_by_param, self.low, self.row_stats = lam_by_param, low, row_stats
        self.sq = torch.zeros(batch, dtype=torch.float64, device=device)
        self.dot = torch.zeros_like(self.sq)
        self.calls: dict[int, int] = defaultdict(int)  # parameter → layer calls in the forward
        self.partial: dict[int, tuple[torch.Tensor, int]] = {}  # shared weight → (Σ per-sample grads, calls)

    def count(self, module: nn.Module) -> None:
        for p in module.parameters(recurse=False):
            self.calls[id(p)] += 1

    def add(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
        for param, piece in _pieces(module, x, g, self.low):
            key = id(param)
            if self.calls[key] == 1:
                self._accumulate(*piece.reduce(self.lam_by_param[key], self.row_stats))
                continue
            grad, seen = self.partial.pop(key, (0, 0))
            grad, seen = grad + piece.materialize(), seen + 1
            if seen < self.calls[key]:
                self.partial[key] = grad, seen
            else:
                self._reduce_whole(key, grad)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        for key, (grad, _) in self.partial.items():  # a call whose output got no gradient adds 0
            self._reduce_whole(key, grad)
        return self.sq, self.dot

    def _reduce_whole(self, key: int, grad: torch.Tensor) -> None:
        self._accumulate(*self.row_stats(grad.flatten(1), self.lam_by_param[key].flatten()))

    def _accumulate(self, sq: torch.Tensor, dot: torch.Tensor) -> None:
        self.sq += sq.double()
        self.dot += dot.double()


def _fast_micro_batch(model: nn.Module, ids, mask, lam_by_param: dict[int, torch.Tensor], autocast, low: bool,
                      row_stats):
    """One forward, then one backward that computes activation gradients only (no weight
    gradients). Each layer's pieces are reduced by a hook as soon as its output gradient
    exists, so the activation gradients are never all held at once."""
    reducer = _Reducer(ids.shape[0], lam_by_param, low, ids.device, row_stats)
    roots = []  # calls whose input needs no gradient (embeddings): where the backward ends

    def capture(module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        reducer.count(module)
        if not output.requires_grad:
            return
        if not x.requires_grad:
            roots.append((module, x, output))
            return
        box = [x.detach()]
        output.register_hook(lambda g: reducer.add(module, box.pop(), g))  # box: x freed once used

    handles = [m.register_forward_hook(capture, with_kwargs=True) for m in model.modules() if _supported(m)]
    try:
        with autocast:
            loss = sample_losses(model, ids, mask).sum()  # Σ_b ℓ_b: each sample's own gradient
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(loss, [out for _, _, out in roots], allow_unused=True)
    for (module, x, _), g in zip(roots, grads):
        if g is not None:
            reducer.add(module, x, g)
    return reducer.finish()


# ---------------------------------------------------------------- generic path

def _vmap_micro_batch(model: nn.Module, ids, mask, lam: Params, autocast):
    from torch.func import functional_call, grad, vmap

    names = list(lam)
    params = {n: p.detach() for n, p in model.named_parameters() if n in lam}

    def loss(p, sample_ids, sample_mask):
        with autocast:
            return sample_losses(lambda **inputs: functional_call(model, p, (), inputs),
                                 sample_ids[None], sample_mask[None])[0]

    with attention(model, "eager"):
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, ids, mask)  # B × P: the whole vector
    sq = sum(grads[n].flatten(1).double().pow(2).sum(1) for n in names)
    dot = sum(grads[n].flatten(1).double() @ lam[n].flatten().double() for n in names)
    return sq, dot


def per_sample_stats(model: nn.Module, samples: Sequence[Sequence[int]], lam: Params, dtype: str = "fp32",
                     device=None, micro_batch: int = 8, method: str = "auto",
                     progress: bool = False, compile: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(‖g(x)‖, ⟨g(x), λ⟩) for each sample, g(x) = ∇ℓ(x; θ) at the model's parameters.

    method: "fast", "vmap", or "auto" (fast when it covers every parameter of the model).
    dtype "bf16" runs the model under bf16 autocast and the fast path's per-layer products on
    bf16 operands with fp32 accumulation; norms and dots accumulate in fp32/fp64.
    compile: the fast path reduces its materialised per-sample gradients with torch.compile'd
    kernels (the same sums to fp32 rounding; uncompiled, with one log line, where compiling fails).
    """
    if method == "auto":
        method = "fast" if fast_path_covers(model) else "vmap"
    elif method == "fast" and not fast_path_covers(model):
        raise ValueError("the fast path does not cover every parameterised layer of this model")
    device = torch.device(device or next(model.parameters()).device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    params = dict(model.named_parameters())
    lam = {n: _at_least_fp32(v.to(device)).to(torch.promote_types(params[n].dtype, torch.float32))
           for n, v in lam.items()}
    lam_by_param = {id(params[n]): v for n, v in lam.items()}
    row_stats = _compiled_row_stats() if compile else _row_stats
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))  # similar lengths together
    bar = tqdm(total=len(samples), desc=f"per-sample gradients ({method})", unit="sample",
               disable=not progress, mininterval=5)
    sqs, dots = [], []  # kept on the device: no host sync per micro-batch
    for start in range(0, len(order), micro_batch):
        ids, mask = collate([samples[i] for i in order[start:start + micro_batch]], device=device)
        if method == "fast":
            sq, dot = _fast_micro_batch(model, ids, mask, lam_by_param, autocast, dtype == "bf16", row_stats)
        else:
            sq, dot = _vmap_micro_batch(model, ids, mask, lam, autocast)
        sqs.append(sq)
        dots.append(dot)
        bar.update(len(ids))
    bar.close()
    norms, products = np.zeros(len(samples)), np.zeros(len(samples))
    if samples:
        norms[order] = torch.cat(sqs).clamp(min=0).sqrt().cpu().numpy()
        products[order] = torch.cat(dots).cpu().numpy()
    return norms, products
