"""The efficacy experiment (target `efficacy`): does training on the LQS selection beat
conventional training, for the target, and is it the scores or the order?
(docs/stages.md#the-efficacy-experiment) Its documents, token streams, steps, schedule, model and
evaluation, and the paired statistics; its stages are `efficacy_corpus_eval`, `efficacy_train`
and `efficacy` (lqs/stages/).

Each arm trains a causal LM from scratch on exactly B tokens, one document per sample (its
window 0: the document truncated to corpus.max_length), read in the arm's order:

  conventional       a uniformly random selection of the scored documents, shuffled
  lqs                select_order's training set in its training order (selection/order.parquet)
  lqs_shuffled       the same documents, shuffled
  classifier         as many documents as the lqs arm, the top ones by a target-vs-corpus text
                     classifier's score (efficacy_classifier's order.parquet, lqs/classifier.py), shuffled
  classifier_folded  the classifier arm's documents in the lqs arm's ordering (ordering.*, Folding by
                     default) by the classifier's scores (efficacy_classifier's folded.parquet)

B is `efficacy.tokens`, by default the lqs arm's tokens. A stream stops after exactly B tokens
(its last document cut short); when B exceeds an arm's documents, the stream walks through them
again in the same order (epochs, logged). A seeded sample of `efficacy.corpus_eval_docs`
documents is held out of every arm: their windows are the corpus evaluation set. The target
evaluation set is the target's held-out part (prepare_target) or `efficacy.eval_source`.

The run seed seeds the model's initialisation, the conventional draw and the shuffle, so for a
seed every arm starts from the same weights: arms are compared pairwise over seeds
(`paired_difference`: the mean difference with its 95% interval from Student's t), and `caption`
states the comparisons in words for the report. DECOMPOSITION splits the lqs arm's difference
to the classifier into the selection's part and the order's, for each scorer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lqs.io import parquet_batches, read_parquet
from lqs.splits import corpus_ids_of_shards, with_corpus_ids

# efficacy.arms' values, in the summary's order
ARMS = ("conventional", "lqs", "lqs_shuffled", "classifier", "classifier_folded")
# The arms whose documents are the classifier's (efficacy_classifier's order.parquet or folded.parquet).
CLASSIFIER_ARMS = ("classifier", "classifier_folded")
# The comparisons that separate the scores from the order (name, arm, other: arm − other, paired
# by seed). Per seed, total = selection + order_lqs = like_for_like + order_classifier.
DECOMPOSITION = (
    ("selection", "lqs_shuffled", "classifier"),  # the scorers' documents, both shuffled
    ("order_lqs", "lqs", "lqs_shuffled"),  # the LQS documents, in order against shuffled
    ("order_classifier", "classifier_folded", "classifier"),  # the classifier's documents, likewise
    ("like_for_like", "lqs", "classifier_folded"),  # each scorer's documents, each in its own order
    ("total", "lqs", "classifier"),  # the lqs arm against the classifier arm as first run
)
CONFIDENCE = 0.95  # the paired differences' intervals (Student's t)
CURVE_SCHEMA = pa.schema([("arm", pa.string()), ("seed", pa.int64()), ("step", pa.int64()),
                          ("tokens_seen", pa.int64()), ("target_loss", pa.float64()),
                          ("corpus_loss", pa.float64()), ("train_loss", pa.float64())])


# ---------------------------------------------------------------- data: documents and streams


def _first_windows(shard_paths: Sequence[str], doc_ids: np.ndarray | None, columns: list[str]):
    """Record batches of the window-0 rows (of `doc_ids` only, if given): memory is that of the
    rows kept, not of the corpus. Doc ids are the corpus's (lqs.splits)."""
    wanted = None if doc_ids is None else pa.array(doc_ids, pa.int64())
    for path, indices in zip(shard_paths, corpus_ids_of_shards(shard_paths)):
        for batch in parquet_batches(path, ["doc_id", "window", "input_ids"]):
            batch = with_corpus_ids(batch, indices)
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


def read_order(path: str, known: np.ndarray, producer: str = "select_order") -> np.ndarray:
    """An arm's documents in training order (the lqs arm's, or the classifier's), checked against
    the tokenized corpus; `producer` is the rule that wrote them."""
    order = read_parquet(path, ["doc_id"])["doc_id"].to_numpy()
    if len(np.unique(order)) != len(order):
        raise ValueError(f"{path}: a document appears more than once (rerun {producer})")
    unknown = order[~np.isin(order, known)]
    if len(unknown):
        raise ValueError(f"{path}: doc_id {unknown[0]} is not in the tokenized corpus (rerun {producer})")
    return order


def arm_documents(arm: str, seed: int, corpus_ids: np.ndarray, order: np.ndarray, held_out: np.ndarray,
                  classifier_order: np.ndarray | None = None) -> np.ndarray:
    """The arm's document sequence, before the token budget, held-out documents removed. The
    conventional arm is a seeded permutation of the whole corpus: any prefix of it is a uniformly
    random selection, already shuffled. `order` is the lqs arm's (selection/order.parquet); a
    classifier arm's documents are `classifier_order` (efficacy_classifier's order.parquet for the
    classifier arm, which shuffles them, or its folded.parquet for classifier_folded, read in that
    order), which must be as many as the lqs arm's."""
    rng = np.random.default_rng(seed)
    if arm == "conventional":
        return rng.permutation(corpus_ids[~np.isin(corpus_ids, held_out)])
    lqs = order[~np.isin(order, held_out)]
    if arm == "lqs":
        return lqs
    if arm == "lqs_shuffled":
        return rng.permutation(lqs)
    if arm in CLASSIFIER_ARMS:
        output = "order.parquet" if arm == "classifier" else "folded.parquet"
        if classifier_order is None:
            raise ValueError(f"the {arm} arm needs the classifier's documents (efficacy_classifier's {output})")
        docs = classifier_order[~np.isin(classifier_order, held_out)]
        if len(docs) != len(lqs):
            raise ValueError(f"the {arm} arm has {len(docs)} documents outside the evaluation set but the lqs arm "
                             f"{len(lqs)}: the classifier's {output} is stale (rerun efficacy_classifier)")
        return rng.permutation(docs) if arm == "classifier" else docs
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


# ---------------------------------------------------------------- paired statistics


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The mean of `values` (paired per-seed differences), its standard error std(ddof=1) / √n,
    the degrees of freedom n − 1 and the two-sided `confidence` interval mean ± t·se, t the
    (1 + confidence) / 2 quantile of Student's t with n − 1 degrees of freedom (scipy.stats.t).
    With one value there is no standard error: se, dof and the interval are None."""
    from scipy import stats

    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return {"mean": mean, "stderr": None, "dof": None, "ci95": None}
    se = float(np.std(values, ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * se
    return {"mean": mean, "stderr": se, "dof": n - 1, "ci95": [mean - half, mean + half]}


def paired_difference(arm: str, other: str, target: Mapping[str, np.ndarray],
                      corpus: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """`arm` − `other`, paired by seed: `target[a]` and `corpus[a]` hold arm a's final losses,
    one per seed, in the same seed order for every arm. For the target and the corpus loss, the
    per-seed differences' `interval` (mean, standard error, degrees of freedom, 95% interval),
    and in how many seeds each arm had the lower target loss (a tie counts for neither)."""
    diff = target[arm] - target[other]
    return {"arm": arm, "other": other, "target_loss": interval(diff),
            "corpus_loss": interval(corpus[arm] - corpus[other]),
            "seeds_won": {arm: int((diff < 0).sum()), other: int((diff > 0).sum())}}


def verdict(ci95: Sequence[float] | None) -> str:
    """A difference in words from its 95% interval: "lower" or "higher" only when the interval
    excludes 0, else "no difference detected"."""
    if ci95 is None:
        return "one seed, so no interval"
    low, high = ci95
    if high < 0:
        return "lower"
    if low > 0:
        return "higher"
    return "no difference detected"


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "\N{MINUS SIGN}")


def comparisons(summary: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, paired difference) of every comparison in the summary: each arm against
    conventional, then the decomposition's, in DECOMPOSITION's order."""
    out = [(f"{arm} − conventional", d) for arm, d in summary.get("vs_conventional", {}).items()]
    return out + [(f"{d['arm']} − {d['other']} ({name.replace('_', ' ')})", d)
                  for name, d in summary.get("decomposition", {}).items()]


def describe(d: Mapping[str, Any]) -> str:
    """A difference's mean, 95% interval (Student's t, its degrees of freedom) and verdict."""
    if d["ci95"] is None:
        return f"{_signed(d['mean'])}: {verdict(None)}"
    low, high = d["ci95"]
    return (f"{_signed(d['mean'])}, 95% interval [{_signed(low)}, {_signed(high)}] (t, {d['dof']} dof): "
            f"{verdict(d['ci95'])}")


def caption(summary: Mapping[str, Any]) -> str:
    """One paragraph stating the summary's paired differences (vs_conventional, decomposition)
    with their 95% intervals and verdicts, the seeds each arm won, and the number of seeds."""
    seeds = summary["seeds"]
    plural = "s" * (seeds > 1)
    pairs = comparisons(summary)
    if not pairs:
        return (f"Measured over {seeds} seed{plural}: only the {', '.join(summary['arms'])} arm ran, so there is "
                "nothing to compare (efficacy.arms).")
    target = "; ".join(f"{label} {describe(d['target_loss'])} ({d['arm']} lower in {d['seeds_won'][d['arm']]} of "
                       f"{seeds} seed{plural}, {d['other']} in {d['seeds_won'][d['other']]})" for label, d in pairs)
    corpus = "; ".join(f"{label} {describe(d['corpus_loss'])}" for label, d in pairs)
    return (f"Measured over {seeds} seed{plural}, at the last evaluation, on {summary['budget']:,} training tokens "
            "per arm. A difference is the mean over seeds of the paired per-seed differences (negative: the first "
            f"arm's loss is lower) with its {CONFIDENCE:.0%} interval from Student's t with seeds − 1 degrees of "
            "freedom; it is called lower or higher only when the interval excludes zero, and otherwise no difference "
            "detected, which with few seeds is not evidence of no difference. Decomposition: selection is the "
            "scorers' documents, both shuffled; order, each scorer's documents in order against shuffled; like for "
            f"like, each scorer's documents in its own order. Held-out target loss: {target}. Held-out corpus loss: "
            f"{corpus}.")


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
