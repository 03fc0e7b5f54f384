"""Stage `pretrain_proxy`: θ_0 from an architecture, briefly trained (docs/stages.md#pretrain_proxy--fetch_proxy).

The demo's proxy (models.proxy.arch), trained on corpus windows as PDS pretrains its proxy before
annotation. Saved as a float32 Hugging Face directory."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from lqs.io import atomic_dir
from lqs.models import build_model
from lqs.proxy import collate, sample_losses
from lqs.runtime import NonFiniteError, resolve_device
from lqs.sample import draw_windows
from lqs.stage import MODELS, Arg, Stage
from lqs.tokenize import load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    arch: dict[str, Any]  # models.proxy.arch
    steps: int  # models.pretrain.steps
    batch_size: int  # models.pretrain.batch_size
    lr: float  # models.pretrain.lr
    seed: int  # models.pretrain.seed
    device: str  # device


def pretrain_proxy(tokenizer_dir: str, shard_paths: Sequence[str], out_dir: str, settings: Settings) -> dict[str, int]:
    """Pretrains the proxy from its architecture; returns the steps, samples and tokens trained on."""
    steps, batch_size = settings.steps, settings.batch_size
    device = resolve_device(settings.device)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = build_model(settings.arch, tokenizer, causal_lm=True, seed=settings.seed)
    model = model.to(device).eval()  # eval: dropout off
    windows = draw_windows(shard_paths, steps * batch_size, settings.seed, allow_repeats=True,
                           what="pretraining samples")["input_ids"].to_pylist()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    for step in tqdm(range(steps), desc="pretrain proxy", unit="step", mininterval=5):
        ids, mask = collate(windows[step * batch_size:(step + 1) * batch_size], device=device)
        loss = sample_losses(model, ids, mask).mean()
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite proxy pretraining loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % max(1, steps // 10) == 0:
            log.info("step %d: loss %.4f", step, loss.item())
    with atomic_dir(out_dir) as tmp:
        model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {"steps": steps, "samples": len(windows), "tokens": sum(map(len, windows))}


STAGE = Stage(
    help="initialise the proxy LM from an architecture and pretrain it briefly",
    run=pretrain_proxy,
    args=(Arg("tokenizer_dir"), Arg("shard_paths", "+"), Arg("--out-dir")),
    settings=Settings,
    counters={"steps": "steps", "samples": "samples", "tokens": "tokens"},
    preload=MODELS,
)
