"""lqs/classifier.py: the hashed features of a text by hand, a hand-checkable classifier,
determinism for a seed, the negative sample and the top documents against brute force, and the
refusals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils import murmurhash3_32

from lqs import classifier

RECIPES = [f"a recipe for {dish} with {n} eggs" for n in range(3) for dish in ("bread", "soup", "cake", "pie")]
OTHERS = [f"the {thing} report of {year} was filed late" for year in range(2000, 2004)
          for thing in ("annual", "tax", "board")]


def test_features_of_a_two_word_text_by_hand():
    """ "Hello world": the unigrams hello, world and the bigram "hello world", each counted once,
    hashed by MurmurHash3 (seed 0) into |h| mod 2^20 with no sign flip, then L2-normalised."""
    vector = classifier.vectorizer().transform(["Hello world"])
    expected = {abs(murmurhash3_32(term, seed=0)) % 2**20 for term in ("hello", "world", "hello world")}
    assert len(expected) == 3  # no collision between the three
    assert vector.shape == (1, 2**20)
    assert sorted(vector.indices) == sorted(expected)
    np.testing.assert_allclose(vector.data, [1 / np.sqrt(3)] * 3)


def test_a_target_word_raises_the_score():
    """Every positive says "recipe" and no negative does: a new text with it scores above one without."""
    model = classifier.train(RECIPES, OTHERS, seed=0)
    with_word, without = model.score(["my grandmother's recipe", "my grandmother's report"])
    assert with_word > 0 > without
    assert model.coef[abs(murmurhash3_32("recipe", seed=0)) % 2**20] > 0
    scores = model.score(RECIPES + OTHERS)
    assert scores.dtype == np.float64 and scores.shape == (len(RECIPES) + len(OTHERS),)
    assert (scores[:len(RECIPES)].min() > scores[len(RECIPES):].max())


def test_scoring_in_batches_matches_scoring_at_once():
    model = classifier.train(RECIPES, OTHERS, seed=0)
    texts = RECIPES + OTHERS + ["", "x"]
    np.testing.assert_array_equal(model.score(iter(texts), batch_size=5), model.score(texts))
    assert model.score([]).shape == (0,)


def test_the_same_seed_gives_the_same_classifier():
    a, b = classifier.train(RECIPES, OTHERS, seed=3), classifier.train(RECIPES, OTHERS, seed=3)
    np.testing.assert_array_equal(a.coef, b.coef)
    assert a.intercept == b.intercept
    texts = ["a recipe for soup", "the board report"]
    np.testing.assert_array_equal(a.score(texts), b.score(texts))


@pytest.mark.parametrize("positives, negatives, missing", [([], OTHERS, "positive"), (RECIPES, [], "negative"),
                                                           ([], [], "positive")])
def test_empty_training_sides_are_refused(positives, negatives, missing):
    with pytest.raises(ValueError, match=f"no {missing} .* texts to train on"):
        classifier.train(positives, negatives, seed=0)


def test_non_strings_are_refused():
    with pytest.raises(ValueError, match="item 1 is a NoneType"):
        classifier.train(["a recipe", None], OTHERS, seed=0)
    model = classifier.train(RECIPES, OTHERS, seed=0)
    with pytest.raises(ValueError, match="texts to score: item 0 is a int"):
        model.score([3])


def test_negative_sample_avoids_the_excluded_and_is_seeded():
    rng = np.random.default_rng(0)
    candidates = rng.permutation(1000)[:700]
    excluded = rng.choice(1000, size=200, replace=False)
    sample = classifier.negative_sample(candidates, excluded, 300, seed=7)
    assert len(sample) == 300 and len(set(sample.tolist())) == 300
    assert np.all(np.diff(sample) > 0)
    assert set(sample.tolist()) <= set(candidates.tolist()) - set(excluded.tolist())
    np.testing.assert_array_equal(sample, classifier.negative_sample(candidates, excluded, 300, seed=7))
    assert not np.array_equal(sample, classifier.negative_sample(candidates, excluded, 300, seed=8))
    pool = np.setdiff1d(candidates, excluded)
    np.testing.assert_array_equal(classifier.negative_sample(candidates, excluded, len(pool), seed=1), pool)
    assert classifier.negative_sample(candidates, excluded, 0, seed=1).shape == (0,)
    with pytest.raises(ValueError, match=f"asked for {len(pool) + 1} negative documents, but only {len(pool)}"):
        classifier.negative_sample(candidates, excluded, len(pool) + 1, seed=1)


@pytest.mark.parametrize("seed", range(5))
def test_top_documents_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    doc_ids = rng.permutation(10 * n)[:n]
    scores = rng.integers(0, 20, size=n).astype(np.float64)  # many ties
    excluded = rng.choice(10 * n, size=int(rng.integers(0, n)), replace=False)
    allowed = [(s, d) for d, s in zip(doc_ids.tolist(), scores.tolist()) if d not in set(excluded.tolist())]
    k = int(rng.integers(0, len(allowed) + 1))
    expected = [d for _, d in sorted(allowed, key=lambda sd: (-sd[0], sd[1]))[:k]]
    assert classifier.top_documents(doc_ids, scores, k, excluded).tolist() == expected


def test_top_documents_refusals():
    with pytest.raises(ValueError, match="asked for the top 3 documents, but 2 are outside"):
        classifier.top_documents(np.array([1, 2, 3]), np.array([0.0, 1.0, 2.0]), 3, np.array([2]))
    with pytest.raises(ValueError, match="doc ids but"):
        classifier.top_documents(np.array([1, 2]), np.array([0.0]), 1, np.array([], np.int64))
    with pytest.raises(ValueError, match="1 scores are NaN"):
        classifier.top_documents(np.array([1, 2]), np.array([0.0, np.nan]), 1, np.array([], np.int64))
