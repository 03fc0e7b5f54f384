"""Stage `train_scorer`: train the data scorer on the labels (docs/stages.md#train_scorer).

The scorer's model and the fit are docs/maths.md#the-data-scorer's.

MSE on the labels, AdamW, cosine schedule with warmup, gradient clipping; validation Spearman
after every epoch, and the best epoch's weights are the checkpoint. Beside it, that epoch's
predictions of the validation samples with their exact labels, valid_predictions.parquet: what the
selection's fidelity (lqs.fidelity, stage select_order) and the report's figure are measured on.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from lqs import distributed
from lqs.fidelity import VALID_PREDICTIONS
from lqs.io import atomic_dir, read_parquet, write_json, write_table
from lqs.runtime import NonFiniteError
from lqs.scorer import ScorerModel, Window, forward_batch, load_backbone, save_scorer, spearman, token_budget_batches
from lqs.stage import MODELS, Arg, Stage
from lqs.tokenize import load_tokenizer, tokenize_windows

log = logging.getLogger(__name__)

# VALID_PREDICTIONS, in the checkpoint directory: the kept epoch's predictions of the validation
# samples, beside their labels (docs/stages.md#train_scorer).
VALID_SCHEMA = pa.schema([("sample_id", pa.int64()), ("label", pa.float64()), ("prediction", pa.float64())])


@dataclass(frozen=True)
class Settings:
    lr: float  # scorer.lr: AdamW's peak learning rate
    epochs: int  # scorer.epochs
    batch_size: int  # scorer.batch_size: samples per step (the global batch under torchrun)
    warmup_steps: int  # scorer.warmup_steps: of the cosine schedule
    weight_decay: float  # scorer.weight_decay: of the matrices (not of biases and norms)
    clip: float  # scorer.clip: the gradient norm clipped to
    max_length: int  # scorer.max_length: a sample is scored on its first window of this many tokens
    seed: int  # scorer.seed: torch's draws (the head, dropout) and the batch order
    device: str  # device
    trust_remote_code: bool  # models.trust_remote_code


def _batches(windows: list[Window], batch_size: int, rng: np.random.Generator | None):
    order = np.arange(len(windows)) if rng is None else rng.permutation(len(windows))
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size].tolist()


@torch.no_grad()
def predict(model, windows: list[Window], pad_id: int, device, max_tokens: int = 16384) -> np.ndarray:
    model.eval()
    out = np.zeros(len(windows))
    for rows in token_budget_batches(windows, max_tokens):
        out[rows] = forward_batch(model, [windows[i].ids for i in rows], pad_id, device).cpu().numpy()
    return out


def train_scorer(samples_path: str, labels_path: str, base_dir: str, out_dir: str, settings: Settings) -> dict:
    """Trains the scorer; under torchrun, with DDP: each rank takes a slice of every global batch
    and the loss is scaled so that the averaged gradient is the global batch's, as in one process."""
    from transformers import get_cosine_schedule_with_warmup

    s = settings
    epochs, batch_size, max_length = s.epochs, s.batch_size, s.max_length
    ctx = distributed.setup(s.device)
    device = ctx.device
    torch.manual_seed(s.seed)
    samples = read_parquet(samples_path, columns=["sample_id", "text"]).to_pandas()
    labels = read_parquet(labels_path).to_pandas()
    data = samples.merge(labels, on="sample_id", validate="one_to_one")
    if len(data) != len(samples) or len(data) != len(labels):
        raise ValueError(f"{samples_path} has {len(samples)} samples and {labels_path} {len(labels)} labels, "
                         f"of which {len(data)} match by sample_id: rerun the annotation")
    tokenizer = load_tokenizer(base_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # A proxy window can be longer in the scorer's tokens: it is scored on its first window.
    first = [w[0] for w in tokenize_windows(tokenizer, data["text"].tolist(), max_length)]
    splits = {name: np.flatnonzero(data["split"].to_numpy() == name) for name in ("train", "valid")}
    windows = {name: [Window(int(i), first[i]) for i in rows] for name, rows in splits.items()}
    # trained on float32 labels; validated against the labels as written (float64), which
    # valid_predictions.parquet holds
    valid_labels = data["score"].to_numpy(np.float64)[splits["valid"]]

    model = ScorerModel(load_backbone(base_dir, s.trust_remote_code)).to(device)
    trained = distributed.data_parallel(ctx, model)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    steps_per_epoch = math.ceil(len(windows["train"]) / batch_size)
    schedule = get_cosine_schedule_with_warmup(optimizer, s.warmup_steps, epochs * steps_per_epoch)
    rng = np.random.default_rng(s.seed)  # the same on every rank: one global batch order
    target_train = torch.as_tensor(data["score"].to_numpy(np.float32)[splits["train"]])

    history, best = [], {"valid_spearman": -math.inf}
    for epoch in range(epochs):
        trained.train()
        losses = []
        for rows in tqdm(list(_batches(windows["train"], batch_size, rng)), desc=f"epoch {epoch}",
                         unit="batch", mininterval=5, disable=not ctx.main):
            mine = rows[ctx.rank::ctx.world] or rows[:1]  # a rank with no row reuses one, weighted 0
            weight = len(rows[ctx.rank::ctx.world]) > 0
            pred = forward_batch(trained, [windows["train"][i].ids for i in mine], pad_id, device)
            squared = (pred - target_train[mine].to(device)) ** 2
            # DDP averages gradients over ranks: Σ_local / global × world gives the global mean.
            loss = squared.sum() * (weight * ctx.world / len(rows))
            global_loss = sum(distributed.all_gather(ctx, loss.item())) / ctx.world
            if not math.isfinite(global_loss):
                bad = [int(data["sample_id"].iloc[splits["train"][r]]) for r in rows
                       if not math.isfinite(float(target_train[r]))]
                raise NonFiniteError(f"non-finite scorer training loss at epoch {epoch}, step {len(losses)}"
                                     + (f"; non-finite label for sample_id {bad[0]}" if bad else ""))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
            optimizer.step()
            schedule.step()
            losses.append(global_loss)
        valid_pred = _predict_sharded(ctx, model, windows["valid"], pad_id)
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                   "valid_mse": float(np.mean((valid_pred - valid_labels) ** 2)),
                   "valid_spearman": spearman(valid_pred, valid_labels)}
        history.append(metrics)
        log.info("epoch %d: train loss %.4f, valid mse %.4f, valid spearman %.4f", epoch,
                 metrics["train_loss"], metrics["valid_mse"], metrics["valid_spearman"])
        if metrics["valid_spearman"] > best["valid_spearman"]:
            best = {**metrics, "state": copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}),
                    "predictions": valid_pred}

    model.load_state_dict(best.pop("state"))
    valid_predictions = pa.table([data["sample_id"].to_numpy(np.int64)[splits["valid"]], valid_labels,
                                  best.pop("predictions")], schema=VALID_SCHEMA)
    summary = {"best_epoch": best["epoch"], "valid_spearman": best["valid_spearman"],
               "valid_mse": best["valid_mse"], "history": history, "processes": ctx.world,
               "train_samples": len(windows["train"]), "valid_samples": len(windows["valid"]),
               "samples_trained": epochs * len(windows["train"])}
    if ctx.main:
        with atomic_dir(out_dir) as tmp:
            save_scorer(model.cpu(), tokenizer, tmp, {"max_length": max_length, "pooling": "mean",
                                                      "label": "lqs normalised score"})
            write_json(tmp / "metrics.json", summary)
            write_table(tmp / VALID_PREDICTIONS, valid_predictions.sort_by("sample_id"))
    del trained  # before the process group goes (lqs.distributed.teardown)
    distributed.teardown(ctx)
    return summary


def _predict_sharded(ctx: distributed.Context, model, windows: list[Window], pad_id: int) -> np.ndarray:
    """Predictions for all windows, each rank computing every world-th one."""
    mine = list(range(ctx.rank, len(windows), ctx.world))
    values = predict(model, [windows[i] for i in mine], pad_id, ctx.device) if mine else np.zeros(0)
    out = np.zeros(len(windows))
    for rank, part in enumerate(distributed.all_gather(ctx, values)):
        out[rank::ctx.world] = part
    return out


STAGE = Stage(
    help="train the data scorer on the labels",
    run=train_scorer,
    args=(Arg("samples_path"), Arg("labels_path"), Arg("base_dir"), Arg("--out-dir")),
    settings=Settings,
    counters={"samples": "samples_trained"},
    preload=MODELS,
    distributed=True,
)
