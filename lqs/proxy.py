"""The proxy LM: loading θ as a flat set of named tensors, and the sample loss ℓ(x; θ).

ℓ(x) is the mean cross-entropy of predicting input_ids[1:] from input_ids[:-1]; a batch loss
is the mean of its samples' losses; dropout is off (the model is kept in eval mode).

Attention runs through scaled_dot_product_attention (fused flash / memory-efficient kernels).
Their backward is not differentiable again, so a pass that differentiates twice (the
trajectory's Hessian-vector products) runs under `twice_differentiable()`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]


def norm(v: Params) -> float:
    """‖v‖ of a parameter-shaped vector, accumulated in fp64."""
    return math.sqrt(sum(float(x.double().pow(2).sum()) for x in v.values()))


def load_proxy(path: str, device: str | torch.device = "cpu", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=torch.float32, trust_remote_code=trust_remote_code,
                  use_safetensors=True)  # safetensors only: a pickle is refused, not run
    # transformers' default attention: SDPA where it has it for the architecture, else eager
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """SDPA restricted to its math kernel, whose backward autograd can differentiate again
    (the flash and memory-efficient kernels' backward cannot); eager attention is unaffected."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


@contextlib.contextmanager
def attention(model, implementation: str) -> Iterator[None]:
    """The model's attention switched to `implementation` ("eager", "sdpa") inside the block:
    torch.func transforms need eager, as transformers' SDPA mask checks values in Python."""
    old = model.config._attn_implementation
    if old != implementation:
        model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        if old != implementation:
            model.set_attn_implementation(old)


def set_tf32(enabled: bool) -> None:
    """Float32 matrix products on TF32 tensor cores (GPU only; ~10-bit mantissa products with
    fp32 accumulation): about 2x faster, no longer bit-comparable with a CPU run."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def param_names(model: torch.nn.Module) -> list[str]:
    """θ's coordinates: trainable parameters, tied weights counted once."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def get_params(model: torch.nn.Module) -> Params:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def set_params(model: torch.nn.Module, params: Params) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in params:
                p.copy_(params[name])


def collate(samples: Sequence[Sequence[int]], pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask. To a GPU they go from pinned memory without blocking,
    so the host can prepare the next batch while the GPU still runs the previous one."""
    longest = max(len(s) for s in samples)
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    if device is not None and torch.device(device).type == "cuda":
        return ids.pin_memory().to(device, non_blocking=True), mask.pin_memory().to(device, non_blocking=True)
    return ids.to(device), mask.to(device)


def sample_losses(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ℓ(x; θ) for each row: mean next-token cross-entropy over the row's real tokens.

    The loss runs on a (tokens, vocab) view of the logits: the log-softmax then reduces over
    contiguous rows (the (batch, vocab, seq) layout ran a kernel several times slower). Every
    position is a row; a pad, or the last token, has target -100 and contributes exactly 0."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # upcast half, keep fp64
    targets = F.pad(ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100), (0, 1), value=-100)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(ids.shape)
    return ce.sum(1) / mask[:, 1:].sum(1).clamp(min=1).to(ce.dtype)


def loss_and_grad(model: torch.nn.Module, samples: Sequence[Sequence[int]], micro_batch: int,
                  device=None) -> tuple[float, Params]:
    """Mean sample loss and its gradient, accumulated over micro-batches (bounded memory)."""
    names = param_names(model)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    total = 0.0
    for i in range(0, len(samples), micro_batch):
        ids, mask = collate(samples[i:i + micro_batch], device=device)
        loss = sample_losses(model, ids, mask).sum() / len(samples)
        for g, gi in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if gi is not None:
                g += gi
        total = total + loss.detach()  # on the device: no host sync per micro-batch
    return float(total), dict(zip(names, grads))
