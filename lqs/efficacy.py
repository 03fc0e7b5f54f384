"""Target `efficacy`: does training on the LQS selection beat conventional training, for the
target? (docs/stages.md#the-efficacy-experiment)

Each arm trains a causal LM from scratch on exactly B tokens, one document per sample (its
window 0: the document truncated to corpus.max_length), read in the arm's order:

  conventional   a uniformly random selection of the scored documents, shuffled
  lqs            select_order's training set in its training order (selection/order.parquet)
  lqs_shuffled   the same documents, shuffled

B is `efficacy.tokens`, by default the lqs arm's tokens. A stream stops after exactly B tokens
(its last document cut short); when B exceeds an arm's documents, the stream walks through them
again in the same order (epochs, logged). A seeded sample of `efficacy.corpus_eval_docs`
documents is held out of every arm: their windows are the corpus evaluation set. The target
evaluation set is the target's held-out part (prepare_target) or `efficacy.eval_source`.

The run seed seeds the model's initialisation, the conventional draw and the shuffle, so for a
seed every arm starts from the same weights: arms are compared pairwise over seeds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lqs.io import parquet_batches, parquet_file, read_parquet, write_json, write_table
from lqs.sample import MIN_TOKENS

log = logging.getLogger(__name__)

ARMS = ("conventional", "lqs", "lqs_shuffled")
CLIP = 1.0  # gradient-norm clipping, as in the proxy's pretraining
CURVE_SCHEMA = pa.schema([("arm", pa.string()), ("seed", pa.int64()), ("step", pa.int64()),
                          ("tokens_seen", pa.int64()), ("target_loss", pa.float64()),
                          ("corpus_loss", pa.float64()), ("train_loss", pa.float64())])


# ---------------------------------------------------------------- data: documents and streams


def _first_windows(shard_paths: Sequence[str], doc_ids: np.ndarray | None, columns: list[str]):
    """Record batches of the window-0 rows (of `doc_ids` only, if given): memory is that of the
    rows kept, not of the corpus."""
    wanted = None if doc_ids is None else pa.array(doc_ids, pa.int64())
    for path in shard_paths:
        for batch in parquet_batches(path, ["doc_id", "window", "input_ids"]):
            keep = pc.equal(batch["window"], 0)
            if wanted is not None:
                keep = pc.and_(keep, pc.is_in(batch["doc_id"], value_set=wanted))
            yield batch.filter(keep).select(columns)


def document_lengths(shard_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(doc ids, tokens of each document's window 0) of every tokenized (= scored) document."""
    ids, lengths = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for batch in _first_windows(shard_paths, None, ["doc_id", "input_ids"]):
        ids.append(batch["doc_id"].to_numpy())
        lengths.append(pc.list_value_length(batch["input_ids"]).to_numpy().astype(np.int64))
    return np.concatenate(ids), np.concatenate(lengths)


def read_windows(shard_paths: Sequence[str], doc_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Window 0 of each of `doc_ids`, as int32 arrays."""
    out = {}
    for batch in _first_windows(shard_paths, np.unique(doc_ids), ["doc_id", "input_ids"]):
        # A writable copy: torch refuses to wrap Arrow's read-only buffers without a warning.
        values, offsets = batch["input_ids"].values.to_numpy().copy(), batch["input_ids"].offsets.to_numpy()
        for i, doc_id in enumerate(batch["doc_id"].to_numpy()):
            out[int(doc_id)] = values[offsets[i]:offsets[i + 1]]
    return out


def held_out_corpus(shard_paths: Sequence[str], out: str, *, docs: int, seed: int = 0) -> int:
    """Writes the corpus evaluation set (doc_id, input_ids): `docs` documents of at least two
    tokens drawn with a fixed seed, the same for every arm and run seed; no arm trains on them."""
    doc_ids, lengths = document_lengths(shard_paths)
    eligible = doc_ids[lengths >= MIN_TOKENS]
    if docs >= len(eligible):
        raise ValueError(f"efficacy.corpus_eval_docs {docs}: the corpus has {len(eligible)} documents of at least "
                         f"{MIN_TOKENS} tokens, and the arms need documents to train on: hold out fewer")
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, docs, replace=False))
    windows = read_windows(shard_paths, chosen)
    write_table(out, pa.table({"doc_id": pa.array(chosen, pa.int64()),
                               "input_ids": pa.array([windows[d] for d in chosen], pa.list_(pa.int32()))}))
    return docs


def read_order(path: str, known: np.ndarray) -> np.ndarray:
    """The lqs arm's documents in training order, checked against the tokenized corpus."""
    order = read_parquet(path, ["doc_id"])["doc_id"].to_numpy()
    if len(np.unique(order)) != len(order):
        raise ValueError(f"{path}: a document appears more than once (rerun select_order)")
    unknown = order[~np.isin(order, known)]
    if len(unknown):
        raise ValueError(f"{path}: doc_id {unknown[0]} is not in the tokenized corpus (rerun select_order)")
    return order


def arm_documents(arm: str, seed: int, corpus_ids: np.ndarray, order: np.ndarray,
                  held_out: np.ndarray) -> np.ndarray:
    """The arm's document sequence, before the token budget, held-out documents removed. The
    conventional arm is a seeded permutation of the whole corpus: any prefix of it is a uniformly
    random selection, already shuffled."""
    rng = np.random.default_rng(seed)
    if arm == "conventional":
        return rng.permutation(corpus_ids[~np.isin(corpus_ids, held_out)])
    lqs = order[~np.isin(order, held_out)]
    if arm == "lqs":
        return lqs
    if arm == "lqs_shuffled":
        return rng.permutation(lqs)
    raise ValueError(f"unknown efficacy arm {arm!r} (one of {', '.join(ARMS)})")


def budget_stream(doc_ids: np.ndarray, lengths: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The first `budget` tokens of the sequence, repeated in the same order as often as needed:
    (doc ids, tokens taken from each, epochs). Only the last document is cut short."""
    total = int(lengths.sum())
    if total == 0:
        raise ValueError("the arm has no documents to train on")
    epochs = -(-budget // total)
    ids, taken = np.tile(doc_ids, epochs), np.tile(lengths, epochs)
    end = np.cumsum(taken)
    last = int(np.searchsorted(end, budget))  # the first document whose end reaches the budget
    taken = taken[:last + 1].copy()
    taken[last] -= end[last] - budget
    return ids[:last + 1], taken, epochs


def pack_steps(lengths: Sequence[int], batch_tokens: int) -> list[tuple[int, int]]:
    """Consecutive documents grouped into steps of at most `batch_tokens` tokens (a longer
    document is a step of its own), as [start, end) ranges."""
    steps, start, size = [], 0, 0
    for i, n in enumerate(lengths):
        if size and size + n > batch_tokens:
            steps.append((start, i))
            start, size = i, 0
        size += n
    if size:
        steps.append((start, len(lengths)))
    return steps


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0.1 at the last step (`step` counts from 0)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- training


def build_lm(tokenizer, seed: int, model: dict[str, Any] | None, proxy_dir: str | None,
             trust_remote_code: bool = False):
    """A causal LM initialised from scratch with `seed`: `efficacy.model`'s architecture, or the
    proxy's (its config.json) when that is null."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lqs.models import build_model

    if model is not None:
        if "model_type" not in model:
            raise ValueError("efficacy.model: needs model_type (transformers config kwargs, e.g. mistral)")
        if "vocab_size" in model:
            raise ValueError("efficacy.model: leave out vocab_size, the model is sized to the proxy tokenizer")
        return build_model(model, tokenizer, causal_lm=True, seed=seed)
    if proxy_dir is None:
        raise ValueError("efficacy.model is null (the proxy's architecture), but no proxy directory was given")
    config = AutoConfig.from_pretrained(proxy_dir, trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)


def evaluate(ctx, model, samples: Sequence[np.ndarray], pad_id: int, batch_tokens: int) -> float:
    """Mean over `samples` of the per-sample loss ℓ (lqs.proxy.sample_losses), each rank
    computing every world-th sample."""
    import torch

    from lqs import distributed
    from lqs.proxy import collate, sample_losses

    mine = [samples[i] for i in range(ctx.rank, len(samples), ctx.world)]
    total = 0.0
    with torch.no_grad():
        for a, b in pack_steps([len(s) for s in mine], batch_tokens):
            ids, mask = collate(mine[a:b], pad_id, ctx.device)
            total += float(sample_losses(model, ids, mask).double().sum())
    return sum(distributed.all_gather(ctx, total)) / len(samples)


def _read_ids(path: str, what: str) -> list[np.ndarray]:
    column = read_parquet(path, ["input_ids"])["input_ids"].combine_chunks()
    if len(column) == 0:
        raise ValueError(f"{path}: the {what} evaluation set is empty")
    values, offsets = column.values.to_numpy().copy(), column.offsets.to_numpy()
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(column))]


def train_arm(shard_paths: Sequence[str], order: str, target_eval: str, corpus_eval: str, tokenizer_dir: str,
              out: str, *, arm: str, seed: int, model: dict[str, Any] | None, tokens: int | None, lr: float,
              batch_tokens: int, warmup_steps: int, weight_decay: float, eval_every: int,
              proxy_dir: str | None = None, device: str = "auto", trust_remote_code: bool = False) -> dict:
    """Trains one arm for one seed and writes its curve (arm, seed, step, tokens_seen,
    target_loss, corpus_loss, train_loss) at step 0, every `eval_every` steps and at the end.

    A step's loss is the token-weighted mean next-token cross-entropy of its documents (padded,
    never concatenated); AdamW, linear warmup then cosine decay to 10%, gradients clipped to
    norm 1; dropout off. Under torchrun the ranks split each step's documents and DDP averages
    the gradients, scaled so that the step equals one process's."""
    import torch

    from lqs import distributed
    from lqs.proxy import collate, sample_losses
    from lqs.runtime import NonFiniteError
    from lqs.tokenize import load_tokenizer

    ctx = distributed.setup(device)
    if ctx.device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    corpus_ids, lengths = document_lengths(shard_paths)
    held_out = read_parquet(corpus_eval, ["doc_id"])["doc_id"].to_numpy()
    order_ids, length_of = read_order(order, corpus_ids), pd.Series(lengths, index=corpus_ids)
    budget = tokens or int(length_of[arm_documents("lqs", seed, corpus_ids, order_ids, held_out)].sum())
    docs = arm_documents(arm, seed, corpus_ids, order_ids, held_out)
    if budget == 0 or len(docs) == 0:
        raise ValueError(f"{order}: the {'lqs' if budget == 0 else arm} arm has no document to train on (none "
                         "selected, or all of them held out by efficacy.corpus_eval_docs)")
    stream, taken, epochs = budget_stream(docs, length_of[docs].to_numpy(), budget)
    if epochs > 1:
        log.warning("arm %s: %d tokens needed, %d available: %d passes over its %d documents",
                    arm, budget, int(length_of[docs].sum()), epochs, len(docs))
    windows = read_windows(shard_paths, stream)
    steps = pack_steps(taken, batch_tokens)
    target_samples, corpus_samples = _read_ids(target_eval, "target"), _read_ids(corpus_eval, "corpus")

    tokenizer = load_tokenizer(tokenizer_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lm = build_lm(tokenizer, seed, model, proxy_dir, trust_remote_code).to(ctx.device).eval()  # dropout off
    vocab = lm.get_input_embeddings().num_embeddings
    largest = max(int(a.max()) for a in [*windows.values(), *target_samples, *corpus_samples] if len(a))
    if largest >= vocab:
        raise ValueError(f"token id {largest} is outside the efficacy model's vocabulary of {vocab}: "
                         "efficacy.model must fit the proxy tokenizer")
    trained = lm if ctx.world == 1 else torch.nn.parallel.DistributedDataParallel(lm)
    decay = [p for p in lm.parameters() if p.ndim >= 2]
    no_decay = [p for p in lm.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, len(steps)))
    log.info("arm %s, seed %d: %d tokens, %d documents (%d distinct, %d epochs), %d steps, %d processes",
             arm, seed, budget, len(stream), len(windows), epochs, len(steps), ctx.world)

    rows, seen, since = [], 0, [0.0, 0]  # since the last evaluation: summed CE, predicted tokens

    def record(step: int) -> None:
        rows.append({"arm": arm, "seed": seed, "step": step, "tokens_seen": seen,
                     "target_loss": evaluate(ctx, lm, target_samples, pad_id, batch_tokens),
                     "corpus_loss": evaluate(ctx, lm, corpus_samples, pad_id, batch_tokens),
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
        if step % eval_every == 0 or step == len(steps):
            record(step)

    info = {"arm": arm, "seed": seed, "budget": budget, "tokens": seen, "documents": len(stream),
            "distinct_documents": len(windows), "epochs": epochs, "steps": len(steps), "processes": ctx.world,
            "parameters": sum(p.numel() for p in lm.parameters())}
    if ctx.main:
        table = pa.Table.from_pylist(rows, schema=CURVE_SCHEMA)
        write_table(out, table.replace_schema_metadata({"efficacy": json.dumps(info)}))
    distributed.teardown(ctx)
    return info


# ---------------------------------------------------------------- summary


def _mean_std(values: pd.Series) -> dict[str, float | None]:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None}


def _stderr(values: pd.Series) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def summarize(run_paths: Sequence[str], target_eval: str, corpus_eval: str, summary_out: str, curves_out: str,
              plot_out: str, *, seeds: int, settings: dict[str, Any]) -> dict:
    """summary.json, curves.parquet and curves.png from the runs' final evaluations. Differences
    to conventional are paired by seed: mean of the per-seed differences, standard error
    std(ddof=1) / √seeds (null for one seed)."""
    from lqs.report import plot_efficacy

    curves = pd.concat([read_parquet(p).to_pandas() for p in run_paths], ignore_index=True)
    info = [json.loads(parquet_file(p).schema_arrow.metadata[b"efficacy"]) for p in run_paths]
    curves = curves.sort_values(["arm", "seed", "step"], ignore_index=True)
    missing = {(a, s) for a in ARMS for s in range(seeds)} - set(zip(curves["arm"], curves["seed"]))
    if missing:
        raise ValueError(f"no curve for arm, seed {sorted(missing)[0]} in {', '.join(run_paths)}")
    final = curves.groupby(["arm", "seed"]).tail(1).set_index(["arm", "seed"])
    arms = {}
    for arm in ARMS:
        runs = final.loc[arm]
        runs_info = [i for i in info if i["arm"] == arm]
        arms[arm] = {"target_loss": _mean_std(runs["target_loss"]), "corpus_loss": _mean_std(runs["corpus_loss"]),
                     "tokens": int(runs["tokens_seen"].iloc[0]), "epochs": max(i["epochs"] for i in runs_info),
                     "steps": {"min": min(i["steps"] for i in runs_info), "max": max(i["steps"] for i in runs_info)}}
    vs = {}
    for arm in ARMS[1:]:
        diff = final.loc[arm] - final.loc["conventional"]  # aligned on seed: paired differences
        vs[arm] = {"target_loss_diff": float(diff["target_loss"].mean()), "stderr": _stderr(diff["target_loss"]),
                   "corpus_loss_diff": float(diff["corpus_loss"].mean()), "corpus_stderr": _stderr(diff["corpus_loss"])}
    summary = {"arms": arms, "vs_conventional": vs, "seeds": seeds, "budget": info[0]["budget"],
               "eval": {"target_samples": parquet_file(target_eval).metadata.num_rows,
                        "corpus_documents": parquet_file(corpus_eval).metadata.num_rows},
               "settings": settings}
    write_table(curves_out, pa.Table.from_pandas(curves, schema=CURVE_SCHEMA, preserve_index=False))
    plot_efficacy(curves, summary, Path(plot_out))
    write_json(summary_out, summary)
    for arm in ARMS:
        a = arms[arm]
        log.info("%-13s target %.4f ± %s, corpus %.4f ± %s%s", arm, a["target_loss"]["mean"], a["target_loss"]["std"],
                 a["corpus_loss"]["mean"], a["corpus_loss"]["std"],
                 f", vs conventional {vs[arm]['target_loss_diff']:+.4f} ± {vs[arm]['stderr']}" if arm in vs else "")
    return summary
