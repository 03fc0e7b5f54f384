"""Stage `efficacy_train`: one efficacy arm trained from scratch for one seed, with its loss curves
(docs/stages.md#the-efficacy-experiment)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lqs.efficacy import (
    CLASSIFIER_ARMS,
    CURVE_SCHEMA,
    arm_documents,
    budget_stream,
    build_lm,
    document_lengths,
    evaluate,
    lr_factor,
    pack_steps,
    read_order,
    read_windows,
)
from lqs.io import read_parquet, write_table
from lqs.stage import MODELS, Arg, Stage

log = logging.getLogger(__name__)

CLIP = 1.0  # gradient-norm clipping, as in the proxy's pretraining


@dataclass(frozen=True)
class Settings:
    model: dict[str, Any] | None  # efficacy.model (null: the proxy's architecture)
    tokens: int | None  # efficacy.tokens (null: the lqs arm's tokens)
    lr: float  # efficacy.lr
    batch_tokens: int  # efficacy.batch_tokens
    warmup_steps: int  # efficacy.warmup_steps
    weight_decay: float  # efficacy.weight_decay
    eval_every: int  # efficacy.eval_every
    device: str  # device
    trust_remote_code: bool  # models.trust_remote_code


def _read_ids(path: str, what: str) -> list[np.ndarray]:
    column = read_parquet(path, ["input_ids"])["input_ids"].combine_chunks()
    if len(column) == 0:
        raise ValueError(f"{path}: the {what} evaluation set is empty")
    values, offsets = column.values.to_numpy().copy(), column.offsets.to_numpy()
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(column))]


def efficacy_train(shard_paths: Sequence[str], order: str, target_eval: str, corpus_eval: str, tokenizer_dir: str,
                   out: str, arm: str, seed: int, settings: Settings, proxy_dir: str | None = None,
                   arm_order: str | None = None) -> dict:
    """Trains one arm for one seed and writes its curve (arm, seed, step, tokens_seen,
    target_loss, corpus_loss, train_loss) at step 0, every `efficacy.eval_every` steps and at the end.
    `order` is the lqs arm's (it sets the budget B); `arm_order` a classifier arm's documents
    (efficacy_classifier's order.parquet for classifier, folded.parquet for classifier_folded),
    for those arms only.

    A step's loss is the token-weighted mean next-token cross-entropy of its documents (padded,
    never concatenated); AdamW, linear warmup then cosine decay to 10%, gradients clipped to
    norm 1; dropout off. Under torchrun the ranks split each step's documents and DDP averages
    the gradients, scaled so that the step equals one process's."""
    import torch

    from lqs import distributed
    from lqs.proxy import collate, sample_losses
    from lqs.runtime import NonFiniteError
    from lqs.tokenize import load_tokenizer

    ctx = distributed.setup(settings.device)
    if ctx.device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    corpus_ids, lengths = document_lengths(shard_paths)
    held_out = read_parquet(corpus_eval, ["doc_id"])["doc_id"].to_numpy()
    order_ids, length_of = read_order(order, corpus_ids), pd.Series(lengths, index=corpus_ids)
    budget = settings.tokens or int(length_of[arm_documents("lqs", seed, corpus_ids, order_ids, held_out)].sum())
    if arm_order is not None and arm not in CLASSIFIER_ARMS:
        raise ValueError(f"arm {arm}: --arm-order is for the {' and '.join(CLASSIFIER_ARMS)} arms only")
    classifier_ids = read_order(arm_order, corpus_ids, "efficacy_classifier") if arm_order is not None else None
    docs = arm_documents(arm, seed, corpus_ids, order_ids, held_out, classifier_ids)
    if budget == 0 or len(docs) == 0:
        raise ValueError(f"{order}: the {'lqs' if budget == 0 else arm} arm has no document to train on (none "
                         "selected, or all of them held out by efficacy.corpus_eval_docs)")
    stream, taken, epochs = budget_stream(docs, length_of[docs].to_numpy(), budget)
    if epochs > 1:
        log.warning("arm %s: %d tokens needed, %d available: %d passes over its %d documents",
                    arm, budget, int(length_of[docs].sum()), epochs, len(docs))
    windows = read_windows(shard_paths, stream)
    steps = pack_steps(taken, settings.batch_tokens)
    target_samples, corpus_samples = _read_ids(target_eval, "target"), _read_ids(corpus_eval, "corpus")

    tokenizer = load_tokenizer(tokenizer_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lm = build_lm(tokenizer, seed, settings.model, proxy_dir,
                  settings.trust_remote_code).to(ctx.device).eval()  # dropout off
    vocab = lm.get_input_embeddings().num_embeddings
    largest = max(int(a.max()) for a in [*windows.values(), *target_samples, *corpus_samples] if len(a))
    if largest >= vocab:
        raise ValueError(f"token id {largest} is outside the efficacy model's vocabulary of {vocab}: "
                         "efficacy.model must fit the proxy tokenizer")
    trained = distributed.data_parallel(ctx, lm)
    decay = [p for p in lm.parameters() if p.ndim >= 2]
    no_decay = [p for p in lm.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings.warmup_steps, len(steps)))
    log.info("arm %s, seed %d: %d tokens, %d documents (%d distinct, %d epochs), %d steps, %d processes",
             arm, seed, budget, len(stream), len(windows), epochs, len(steps), ctx.world)

    rows, seen, since = [], 0, [0.0, 0]  # since the last evaluation: summed CE, predicted tokens

    def record(step: int) -> None:
        rows.append({"arm": arm, "seed": seed, "step": step, "tokens_seen": seen,
                     "target_loss": evaluate(ctx, lm, target_samples, pad_id, settings.batch_tokens),
                     "corpus_loss": evaluate(ctx, lm, corpus_samples, pad_id, settings.batch_tokens),
                     "train_loss": since[0] / since[1] if since[1] else None})
        since[:] = [0.0, 0]
        log.info("step %d/%d, %d tokens: target loss %.4f, corpus loss %.4f", step, len(steps), seen,
                 rows[-1]["target_loss"], rows[-1]["corpus_loss"])

    record(0)
    for step, (a, b) in enumerate(steps, start=1):
        batch = [windows[int(d)][:n] for d, n in zip(stream[a:b], taken[a:b])]
        predicted = sum(len(x) - 1 for x in batch)  # next-token predictions in the whole step
        mine = batch[ctx.rank::ctx.world]
        ids, mask = collate(mine or batch[:1], pad_id, ctx.device)  # a rank without a document: weight 0
        summed = (sample_losses(trained, ids, mask) * mask[:, 1:].sum(1)).sum() * (1.0 if mine else 0.0)
        step_ce = sum(distributed.all_gather(ctx, summed.item()))
        if not math.isfinite(step_ce):
            raise NonFiniteError(f"non-finite training loss at step {step} of arm {arm}, seed {seed} "
                                 f"(documents {stream[a:b].tolist()[:8]}…)")
        optimizer.zero_grad(set_to_none=True)
        # DDP averages over ranks: Σ_local × world / predicted gives the step's token-weighted mean.
        (summed * (ctx.world / max(predicted, 1))).backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), CLIP)
        optimizer.step()
        schedule.step()
        seen += int(taken[a:b].sum())
        since[0] += step_ce
        since[1] += predicted
        if step % settings.eval_every == 0 or step == len(steps):
            record(step)

    info = {"arm": arm, "seed": seed, "budget": budget, "tokens": seen, "documents": len(stream),
            "distinct_documents": len(windows), "epochs": epochs, "steps": len(steps), "processes": ctx.world,
            "parameters": sum(p.numel() for p in lm.parameters())}
    if ctx.main:
        table = pa.Table.from_pylist(rows, schema=CURVE_SCHEMA)
        write_table(out, table.replace_schema_metadata({"efficacy": json.dumps(info)}))
    del trained  # before the process group goes (lqs.distributed.teardown)
    distributed.teardown(ctx)
    return info


STAGE = Stage(
    help="train one efficacy arm from scratch for one seed, with its loss curves",
    run=efficacy_train,
    args=(Arg("shard_paths", "+"), Arg("--order"), Arg("--target-eval"), Arg("--corpus-eval"), Arg("--tokenizer-dir"),
          Arg("--proxy-dir", required=False), Arg("--arm-order", required=False), Arg("--arm"), Arg("--seed", type=int),
          Arg("--out")),
    settings=Settings,
    counters={"tokens": "tokens", "steps": "steps"},
    preload=MODELS,
    distributed=True,
)
