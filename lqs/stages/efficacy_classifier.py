"""Stage `efficacy_classifier`: the efficacy experiment's `classifier` and `classifier_folded` arms,
the cheap selection to compare LQS with: a target-vs-corpus text classifier (lqs/classifier.py)
trained on CPU, every accepted document scored, and the arms' documents: the top ones by score
(order.parquet, highest first) and the same documents in the lqs arm's training order by the
classifier's scores (folded.parquet: lqs.select.order with ordering.*, Folding by default)
(docs/stages.md#the-efficacy-experiment).

Positives: the target texts the annotation's J uses (the target set's train part, as
prepare_target splits it: lqs.target.target_split with the same settings). Negatives: a seeded
sample of the documents tokenization accepted, outside the corpus evaluation set
(efficacy_corpus_eval's), as many as the positives unless efficacy.classifier_negatives says. No
evaluation document is trained on or selected. The corpus is read twice, streamed: once for the
negatives' texts (stopping when it has them all), once to score every document.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lqs import classifier, corpus
from lqs.batch_scoring import accepted_records, chunked, corpus_accepted_documents
from lqs.corpus import CorpusReading
from lqs.io import read_parquet, write_table
from lqs.select import order as training_order
from lqs.splits import planned_splits
from lqs.stage import Arg, Stage
from lqs.target import target_split

log = logging.getLogger(__name__)

SEED = 0  # the negatives' draw and liblinear's coordinate order: one classifier for every run seed
SCORES_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64())])


@dataclass(frozen=True)
class Settings:
    corpus: CorpusReading  # every shard's splits, corpus.text_field, max_chars
    target_text_field: str  # target.text_field
    target_split: str  # target.split
    target_revision: str | None  # target.revision
    target_max_samples: int | None  # target.max_samples
    target_eval_fraction: float  # target.eval_fraction
    target_seed: int  # target.seed
    negatives: int | None  # efficacy.classifier_negatives (null: as many as the positives)
    ordering: dict[str, Any]  # ordering.* (method, folds, seed): the lqs arm's, for classifier_folded


def _texts_of(records: Iterator[corpus.Record], doc_ids: np.ndarray) -> list[str]:
    """The texts of `doc_ids` (ascending), read until the last of them."""
    wanted, texts = set(doc_ids.tolist()), []
    for record in records:
        if record.doc_id in wanted:
            texts.append(record.text)
            if len(texts) == len(wanted):
                break
    return texts


def efficacy_classifier(plan: str, tokenized_shards: Sequence[str], target: str, order: str,
                        corpus_eval: str, scores_out: str, order_out: str, folded_out: str, settings: Settings) -> dict:
    """Trains the classifier and writes `scores_out` (doc_id, score: the log-odds of being
    target-like, for every accepted document, in input order), `order_out` (doc_id, score: the
    classifier arm's documents, the top N by score outside the corpus evaluation set, highest
    first, N the lqs arm's documents outside it: `order`'s) and `folded_out` (the same documents
    and scores in the classifier_folded arm's training order: lqs.select.order of their scores
    with ordering.*, given in input order as select_order gives the lqs arm's, so that ties fall
    the same way). All three carry the classifier's counts and CPU seconds as Parquet metadata
    (classifier.METADATA_KEY)."""
    s = settings
    start = time.perf_counter()
    positives, _ = target_split(target, text_field=s.target_text_field, split=s.target_split,
                                revision=s.target_revision, max_samples=s.target_max_samples,
                                eval_fraction=s.target_eval_fraction, seed=s.target_seed)
    held_out = read_parquet(corpus_eval, ["doc_id"])["doc_id"].to_numpy()
    accepted = np.concatenate([np.zeros(0, np.int64)] + [ids for ids, _ in corpus_accepted_documents(tokenized_shards)])
    pool = len(np.setdiff1d(accepted, held_out))
    wanted = len(positives) if s.negatives is None else s.negatives
    if wanted > pool:
        if s.negatives is not None:
            raise ValueError(f"efficacy.classifier_negatives {s.negatives}: only {pool} corpus documents are outside "
                             "the efficacy evaluation documents; ask for fewer")
        log.warning("%d target texts but only %d corpus documents outside the evaluation documents: %d negatives",
                    wanted, pool, pool)
        wanted = pool
    negative_ids = classifier.negative_sample(accepted, held_out, wanted, SEED)

    def records() -> Iterator[corpus.Record]:
        return accepted_records(s.corpus.records(planned_splits(plan, None, s.corpus.splits_sha256)), tokenized_shards)

    cpu = {}
    clock = time.process_time()
    negatives = _texts_of(records(), negative_ids)
    if len(negatives) != len(negative_ids):
        raise RuntimeError(f"{len(negative_ids) - len(negatives)} of the corpus documents tokenization accepted are "
                           f"gone from the corpus; {corpus.RETOKENIZE}")
    cpu["read_negatives"], clock = time.process_time() - clock, time.process_time()
    model = classifier.train(positives, negatives, SEED)
    cpu["train"], clock = time.process_time() - clock, time.process_time()
    ids, scores = [], []
    for chunk in chunked(records(), classifier.SCORE_BATCH):
        ids.append(np.array([r.doc_id for r in chunk], np.int64))
        scores.append(model.score([r.text for r in chunk]))
    ids = np.concatenate([np.zeros(0, np.int64), *ids])
    scores = np.concatenate([np.zeros(0, np.float64), *scores])
    if not np.array_equal(ids, np.sort(accepted)):
        raise RuntimeError(f"{len(accepted)} corpus documents were accepted by tokenization but {len(ids)} of them "
                           f"were found to score; {corpus.RETOKENIZE}")
    cpu["score"] = time.process_time() - clock

    lqs = read_parquet(order, ["doc_id"])["doc_id"].to_numpy()
    n = int((~np.isin(lqs, held_out)).sum())  # the lqs arm's documents
    top = classifier.top_documents(ids, scores, n, held_out)
    info = {"positives": len(positives), "negatives": len(negatives), "documents": len(ids), "selected": len(top),
            "seed": SEED, "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
            "seconds": round(time.perf_counter() - start, 3)}
    metadata = {classifier.METADATA_KEY: json.dumps(info).encode()}
    write_table(scores_out, pa.table({"doc_id": ids, "score": scores}, schema=SCORES_SCHEMA.with_metadata(metadata)))
    top_scores = scores[np.searchsorted(ids, top)]  # ids ascend (input order)
    write_table(order_out, pa.table({"doc_id": top, "score": top_scores}, schema=SCORES_SCHEMA.with_metadata(metadata)))
    by_id = np.argsort(top, kind="stable")  # input order
    folded = by_id[training_order(top_scores[by_id], **s.ordering)]
    write_table(folded_out, pa.table({"doc_id": top[folded], "score": top_scores[folded]},
                                     schema=SCORES_SCHEMA.with_metadata(metadata)))
    log.info("classifier: %d positives (target texts), %d negatives (corpus documents); %d documents scored; "
             "the top %d outside the %d evaluation documents kept", len(positives), len(negatives), len(ids), len(top),
             len(held_out))
    log.info("classifier CPU seconds: %.2f reading the negatives, %.2f training, %.2f reading and scoring",
             cpu["read_negatives"], cpu["train"], cpu["score"])
    return {key: info[key] for key in ("documents", "positives", "negatives", "selected")}


STAGE = Stage(
    help="the efficacy experiment's classifier arms: train a target-vs-corpus classifier and score every document",
    run=efficacy_classifier,
    args=(Arg("--plan"), Arg("--tokenized-shards", "+"), Arg("--target"), Arg("--order"),
          Arg("--corpus-eval"), Arg("--scores-out"), Arg("--order-out"), Arg("--folded-out")),
    settings=Settings,
    counters={"documents": "documents", "positives": "positives", "negatives": "negatives"},
    # scikit-learn, imported before the clock starts (about a second): the CPU seconds are the work's
    preload=("sklearn.feature_extraction.text", "sklearn.linear_model"),
)
