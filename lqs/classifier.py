"""A cheap target-vs-corpus text classifier, in the manner of DCLM's and PreSelect's fastText
filters: the efficacy experiment's `classifier` arm trains it on the target texts (positives)
against a seeded sample of corpus documents (negatives), and keeps the corpus documents it rates
most target-like.

Features: word unigrams and bigrams hashed into 2^20 buckets (scikit-learn's HashingVectorizer:
lowercased, tokens of two or more word characters, counts, each document's vector L2-normalised),
so there is no vocabulary to fit or store and any text can be scored.

Model: L2-regularised logistic regression, scikit-learn's `LogisticRegression` with the
`liblinear` solver in its dual form, C = 1, classes weighted to balance. Why this and not
`SGDClassifier(loss="log_loss")`: the training sets are small (the target set, some thousands of
texts, and a sample of the corpus of similar size) while the features are 2^20 sparse columns,
which is exactly the case liblinear's dual coordinate descent is made for (its cost grows with the
non-zeros, not with 2^20), and it converges to the one optimum of a strictly convex problem to a
tolerance, where SGD stops wherever its epochs and learning-rate schedule leave it. The seed only
sets the order of liblinear's coordinate updates, so one seed gives the same weights on every run.
Balanced class weights keep the model from leaning to whichever side has more texts. Why not
fastText, as DCLM uses: its official Python bindings are unmaintained (the repository is archived;
last release 0.9.3, June 2024, with several community forks since), and its multi-threaded
(Hogwild) training gives different weights from run to run; scikit-learn is well kept, with wheels
for Linux and Python 3.11-3.12, and its fit is a deterministic convex optimisation.

Scores are the model's decision values, the log-odds that a text is target-like (the probability
is their logistic sigmoid): they rank exactly as the probability does, but do not round to 1.0 for
the most confident texts, where float64 probabilities would tie.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

N_FEATURES = 2**20
SCORE_BATCH = 4096  # texts vectorised at once when scoring: a few MB of sparse features
# The Parquet key-value metadata key of efficacy_classifier's outputs: its counts and CPU seconds (JSON).
METADATA_KEY = b"classifier"


def vectorizer():
    """The fixed feature map (stateless: nothing is fitted)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(ngram_range=(1, 2), analyzer="word", alternate_sign=False, n_features=N_FEATURES,
                             lowercase=True)


@dataclass(frozen=True)
class Classifier:
    """A trained classifier: the weight of each hashed feature and the intercept."""

    coef: np.ndarray  # float64, shape (N_FEATURES,)
    intercept: float

    def score(self, texts: Iterable[str], batch_size: int = SCORE_BATCH) -> np.ndarray:
        """The log-odds (float64, one per text, in order) that each text is target-like; texts are
        vectorised `batch_size` at a time, so memory stays bounded however many there are."""
        features = vectorizer()
        scores = []
        texts = iter(texts)
        while batch := list(itertools.islice(texts, batch_size)):
            _check_texts(batch, "texts to score")
            scores.append(features.transform(batch) @ self.coef + self.intercept)
        return np.concatenate(scores).astype(np.float64, copy=False) if scores else np.zeros(0, np.float64)


def _check_texts(texts: Sequence[str], what: str) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"classifier: {what}: item {i} is a {type(text).__name__}, not a string")


def train(positives: Sequence[str], negatives: Sequence[str], seed: int) -> Classifier:
    """Trains the classifier: `positives` (target texts) against `negatives` (corpus texts)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    for texts, what in ((positives, "positive (target)"), (negatives, "negative (corpus)")):
        if len(texts) == 0:
            raise ValueError(f"classifier: no {what} texts to train on")
        _check_texts(texts, f"{what} texts")
    features = vectorizer().transform(list(itertools.chain(positives, negatives)))
    labels = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(negatives), np.int64)])
    model = LogisticRegression(solver="liblinear", dual=True, C=1.0, class_weight="balanced", max_iter=1000,
                               random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(features, labels)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):  # still the same weights for the same inputs and seed
            log.warning("classifier: liblinear stopped at %d iterations before reaching its tolerance",
                        model.max_iter)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return Classifier(coef=model.coef_[0].astype(np.float64), intercept=float(model.intercept_[0]))


def negative_sample(candidate_ids: np.ndarray, excluded_ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample, without replacement, of `n` distinct ids of `candidate_ids` that are not in
    `excluded_ids` (the efficacy evaluation documents), sorted ascending (int64)."""
    pool = np.setdiff1d(np.asarray(candidate_ids, np.int64), np.asarray(excluded_ids, np.int64))
    if n < 0:
        raise ValueError(f"classifier: negative_sample: n must be at least 0, got {n}")
    if n > len(pool):
        raise ValueError(f"classifier: asked for {n} negative documents, but only {len(pool)} corpus documents are "
                         "outside the evaluation documents")
    return np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))


def top_documents(doc_ids: np.ndarray, scores: np.ndarray, n: int, excluded_ids: np.ndarray) -> np.ndarray:
    """The ids of the `n` highest-scoring documents not in `excluded_ids`, highest first, ties
    broken by doc_id ascending (int64)."""
    doc_ids, scores = np.asarray(doc_ids, np.int64), np.asarray(scores, np.float64)
    if doc_ids.shape != scores.shape or doc_ids.ndim != 1:
        raise ValueError(f"classifier: top_documents: {doc_ids.shape} doc ids but {scores.shape} scores")
    if np.isnan(scores).any():
        raise ValueError(f"classifier: top_documents: {int(np.isnan(scores).sum())} scores are NaN")
    keep = ~np.isin(doc_ids, np.asarray(excluded_ids, np.int64))
    doc_ids, scores = doc_ids[keep], scores[keep]
    if n < 0 or n > len(doc_ids):
        raise ValueError(f"classifier: asked for the top {n} documents, but {len(doc_ids)} are outside the "
                         "evaluation documents")
    order = np.lexsort((doc_ids, -scores))  # the last key is the primary one
    return doc_ids[order[:n]]
