"""Stage `efficacy_classifier` (the efficacy experiment's classifier arm) on a tiny tokenized
corpus: its positives are exactly J's target texts, its negatives the seeded sample of accepted
documents outside the corpus evaluation set (never an evaluation or a rejected document), every
accepted document is scored, the classifier arm is the top N by score outside the evaluation set,
N the lqs arm's documents, and the classifier_folded arm the same documents in lqs.select.order's
order by their scores (Folding by hand, too): all against brute force. And efficacy.arms in the
schema."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, corpus_settings, shard_settings, stage_function, write_jsonl, write_plan

from lqs import classifier, config, select, splits, target
from lqs.stages import efficacy_classifier as efficacy_classifier_stage
from lqs.stages import efficacy_corpus_eval as efficacy_corpus_eval_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage

efficacy_classifier = stage_function(efficacy_classifier_stage)
efficacy_corpus_eval = stage_function(efficacy_corpus_eval_stage)
tokenize_shard = stage_function(tokenize_shard_stage)

TARGET = dict(target_text_field="text", target_split="train", target_revision=None, target_max_samples=None,
              target_eval_fraction=0.2, target_seed=3)
FOLDING = {"method": "folding", "folds": 3, "seed": 0}  # ordering.*'s defaults
BAD_LINE = 7  # 0-based: a record without a text, rejected by tokenization


def _line_ids(path) -> list[int]:
    """The doc id of each line of a JSONL file (the corpus's first file): its byte offset."""
    lines = open(path, "rb").read().splitlines(keepends=True)
    return [sum(map(len, lines[:i])) for i in range(len(lines))]


def _corpus_texts() -> list[str]:
    dishes, things = ("bread", "soup", "cake", "pie", "stew"), ("annual", "tax", "board", "audit")
    recipes = [f"a recipe for {d} with {n} eggs and some salt" for n in range(4) for d in dishes]
    reports = [f"the {t} report of {y} was filed late again" for y in range(2000, 2010) for t in things]
    return [text for pair in zip(recipes, reports[:len(recipes)]) for text in pair] + reports[len(recipes):]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tok_dir) -> dict:
    d = tmp_path_factory.mktemp("classifier")
    records = [{"text": text} for text in _corpus_texts()]
    records.insert(BAD_LINE, {"id": "no text"})
    corpus = write_jsonl(d / "corpus.jsonl", records)
    source = write_jsonl(d / "target.jsonl", [{"conversations": [f"How do I make {dish} number {i}?",
                                                                 f"Here is a recipe for {dish} with eggs."]}
                                              for i in range(10) for dish in ("bread", "cake")])
    plan_path, plan = write_plan(d, [corpus], 2)
    assert len(plan.shards) == 2
    shards = [str(d / f"shard-{shard.key}.parquet") for shard in plan.shards]
    for shard, path in zip(plan.shards, shards):
        tokenize_shard(plan_path, shard.key, tok_dir, path, str(d / f"rejects-{shard.key}.jsonl"), max_length=32,
                       on_bad_record="skip", **shard_settings(plan, shard.key))
    ids = _line_ids(corpus)
    accepted = np.sort(np.concatenate([splits.with_corpus_ids(pq.read_table(p), i)["doc_id"].to_numpy()
                                       for p, i in zip(shards, splits.corpus_ids_of_shards(shards))]))
    accepted = np.unique(accepted)
    assert accepted.tolist() == [i for k, i in enumerate(ids) if k != BAD_LINE]
    efficacy_corpus_eval(shards, str(d / "corpus_eval.parquet"), docs=8)
    held = pq.read_table(d / "corpus_eval.parquet")["doc_id"].to_numpy()
    order = np.random.default_rng(1).choice(accepted, 20, replace=False)  # some of them held out
    assert 0 < np.isin(order, held).sum() < len(order)
    pq.write_table(pa.table({"doc_id": pa.array(order, pa.int64())}), d / "order.parquet")
    return {"dir": d, "plan": plan_path, "settings": corpus_settings(plan), "corpus": str(corpus),
            "records": records, "ids": ids, "target": str(source), "shards": shards,
            "accepted": accepted, "held": held, "order": order, "corpus_eval": str(d / "corpus_eval.parquet"),
            "order_path": str(d / "order.parquet")}


def _run(setup, out_dir, monkeypatch=None, corpus_eval=None, order=None, **settings) -> tuple[dict, list]:
    calls = []
    if monkeypatch is not None:
        real = classifier.train

        def spy(positives, negatives, seed):
            calls.append((list(positives), list(negatives), seed))
            return real(positives, negatives, seed)

        monkeypatch.setattr(classifier, "train", spy)
    result = efficacy_classifier(setup["plan"], setup["shards"], setup["target"], order or setup["order_path"],
                                 corpus_eval or setup["corpus_eval"], str(out_dir / "scores.parquet"),
                                 str(out_dir / "order.parquet"), str(out_dir / "folded.parquet"),
                                 **(setup["settings"] | TARGET | {"negatives": None, "ordering": FOLDING} | settings))
    return result, calls


def test_the_classifier_sees_jays_texts_and_no_evaluation_document(setup, tmp_path, monkeypatch):
    result, calls = _run(setup, tmp_path, monkeypatch)
    assert len(calls) == 1
    positives, negatives, seed = calls[0]
    # positives: J's texts, the target's train part as prepare_target splits it
    texts = target.target_texts(setup["target"])
    j, held_texts = target.split_target(texts, 0.2, seed=3)
    assert positives == j and not set(positives) & set(held_texts) and len(j) == 16

    # negatives: the seeded sample, by brute force, of accepted documents outside the evaluation set
    text_of = {i: r.get("text") for i, r in zip(setup["ids"], setup["records"])}
    pool = sorted(set(setup["accepted"].tolist()) - set(setup["held"].tolist()))
    drawn = sorted(np.random.default_rng(efficacy_classifier_stage.SEED).choice(pool, len(j), replace=False).tolist())
    assert negatives == [text_of[i] for i in drawn] and seed == efficacy_classifier_stage.SEED
    assert not {text_of[i] for i in setup["held"].tolist()} & set(negatives)  # no evaluation document
    assert None not in negatives  # nor the rejected record

    # every accepted document scored, in input order, by the classifier the stage trained
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores["doc_id"].to_pylist() == setup["accepted"].tolist()
    model = classifier.train(positives, negatives, seed)
    want = model.score([text_of[i] for i in setup["accepted"].tolist()])
    np.testing.assert_allclose(scores["score"].to_numpy(), want, rtol=1e-12, atol=1e-12)
    recipe = ["recipe" in text_of[i] for i in setup["accepted"].tolist()]
    assert scores["score"].to_numpy()[recipe].min() > scores["score"].to_numpy()[~np.array(recipe)].max()

    # the arm: the top N outside the evaluation set, N the lqs arm's documents outside it
    arm = pq.read_table(tmp_path / "order.parquet")
    n = int((~np.isin(setup["order"], setup["held"])).sum())
    ranked = sorted((-s, i) for i, s in zip(setup["accepted"].tolist(), want.tolist())
                    if i not in set(setup["held"].tolist()))
    assert arm["doc_id"].to_pylist() == [i for _, i in ranked[:n]] and arm.num_rows == n
    assert not set(arm["doc_id"].to_pylist()) & set(setup["held"].tolist())
    assert arm["score"].to_pylist() == [-s for s, _ in ranked[:n]]

    # the classifier_folded arm: the same documents in Folding order by the classifier's scores,
    # by hand (ascending by score, ties by doc_id; then every third from the first, second, third)
    folded = pq.read_table(tmp_path / "folded.parquet")
    score_of = dict(zip(setup["accepted"].tolist(), want.tolist()))
    ascending = sorted(arm["doc_id"].to_pylist(), key=lambda i: (score_of[i], i))
    assert folded["doc_id"].to_pylist() == ascending[0::3] + ascending[1::3] + ascending[2::3]
    assert folded["score"].to_pylist() == [score_of[i] for i in folded["doc_id"].to_pylist()]
    # and by lqs.select.order, given the scores in input order as select_order gives the lqs arm's
    ids = np.sort(arm["doc_id"].to_numpy())
    assert folded["doc_id"].to_pylist() == ids[select.order(np.array([score_of[i] for i in ids]))].tolist()

    info = json.loads(pq.read_schema(tmp_path / "order.parquet").metadata[classifier.METADATA_KEY])
    assert info == json.loads(pq.read_schema(tmp_path / "scores.parquet").metadata[classifier.METADATA_KEY])
    assert info == json.loads(pq.read_schema(tmp_path / "folded.parquet").metadata[classifier.METADATA_KEY])
    assert {k: info[k] for k in ("positives", "negatives", "documents", "selected")} == {
        "positives": 16, "negatives": 16, "documents": len(setup["accepted"]), "selected": n}
    assert set(info["cpu_seconds"]) == {"read_negatives", "train", "score"}
    assert result == {"documents": len(setup["accepted"]), "positives": 16, "negatives": 16, "selected": n}


def test_the_classifier_folded_arm_follows_the_ordering_settings(setup, tmp_path):
    """ordering.* is the lqs arm's: another method or number of folds orders the same documents anew."""
    _run(setup, tmp_path)
    top = pq.read_table(tmp_path / "order.parquet").to_pandas()
    by_id = top.sort_values("doc_id")
    ids, scores = by_id["doc_id"].to_numpy(), by_id["score"].to_numpy()
    orders = {}
    for ordering in ({"method": "folding", "folds": 2, "seed": 0}, {"method": "ascending", "folds": 3, "seed": 0},
                     {"method": "shuffle", "folds": 3, "seed": 5}):
        _run(setup, tmp_path, ordering=ordering)
        got = pq.read_table(tmp_path / "folded.parquet")["doc_id"].to_pylist()
        assert got == ids[select.order(scores, **ordering)].tolist()
        orders[ordering["method"]] = got
    assert orders["ascending"] == [i for _, i in sorted(zip(top["score"], top["doc_id"]))]  # ties by doc_id
    assert len({tuple(o) for o in orders.values()}) == 3


def test_the_number_of_negatives(setup, tmp_path, monkeypatch, caplog):
    _, calls = _run(setup, tmp_path, monkeypatch, negatives=5)
    assert len(calls[0][1]) == 5
    pool = len(set(setup["accepted"].tolist()) - set(setup["held"].tolist()))
    with pytest.raises(ValueError, match=f"efficacy.classifier_negatives {pool + 1}: only {pool} corpus documents"):
        _run(setup, tmp_path, negatives=pool + 1)
    # null, and fewer documents than target texts outside the evaluation set: every one of them
    keep = setup["accepted"][:3]
    held = tmp_path / "held.parquet"
    pq.write_table(pa.table({"doc_id": pa.array(np.setdiff1d(setup["accepted"], keep), pa.int64())}), held)
    order = tmp_path / "lqs.parquet"
    pq.write_table(pa.table({"doc_id": pa.array(keep[:2], pa.int64())}), order)
    calls.clear()
    with caplog.at_level(logging.WARNING):
        _run(setup, tmp_path, corpus_eval=str(held), order=str(order))
    assert len(calls[0][1]) == 3 and "16 target texts but only 3 corpus documents" in caplog.text
    assert pq.read_table(tmp_path / "order.parquet").num_rows == 2


def test_a_corpus_edited_since_tokenization_is_an_error(setup, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    records = list(setup["records"])
    records[3] = {"text": records[3]["text"][:-4] + "milk"}  # the same length: every line where it was
    write_jsonl(corpus, records)
    plan_path, plan = write_plan(tmp_path, [corpus], 2)
    with pytest.raises(RuntimeError, match="the corpus changed since it was tokenized"):
        efficacy_classifier(plan_path, setup["shards"], setup["target"], setup["order_path"],
                            setup["corpus_eval"], str(tmp_path / "s.parquet"), str(tmp_path / "o.parquet"),
                            str(tmp_path / "f.parquet"), negatives=len(setup["accepted"]) - 8,
                            ordering=FOLDING, **corpus_settings(plan), **TARGET)
    assert not [p for p in ("s", "o", "f") if (tmp_path / f"{p}.parquet").exists()]


def test_efficacy_arms_in_the_schema():
    schema = yaml.safe_load((ROOT / "lqs" / "schema.yaml").read_text())
    arms = schema["properties"]["efficacy"]["properties"]["arms"]
    assert arms["default"] == ["conventional", "lqs", "lqs_shuffled", "classifier", "classifier_folded"]
    from lqs.efficacy import ARMS

    assert tuple(arms["items"]["enum"]) == ARMS

    def errors(value):
        return config.schema_errors({"corpus": {"path": "x.jsonl"}, "models": {"proxy": {"repo": "a"},
                                                                              "scorer": {"repo": "b"}},
                                     "efficacy": {"arms": value}}, schema)

    assert errors(["lqs", "random"]) == ['efficacy.arms.1: "random" is not valid: expected one of conventional, lqs, '
                                         'lqs_shuffled, classifier, classifier_folded']
    assert len(errors(["lqs", "lqs"])) == 1 and "non-unique" in errors(["lqs", "lqs"])[0]
    assert len(errors([])) == 1 and errors([])[0].startswith("efficacy.arms: [] is not valid")
    assert errors(["conventional", "classifier"]) == []
