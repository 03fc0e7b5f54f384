"""The efficacy experiment (docs/stages.md#the-efficacy-experiment): the target's held-out split
(lqs.target), the arms' documents (the classifier arms': as many as lqs's, none held out, shuffled
or in the given order), token streams, steps and schedule against brute-force constructions,
training (the same budget B for every arm, losses against a plain per-document computation,
determinism, two gloo processes = one), the summary's paired statistics (vs_conventional, the
decomposition, seeds won, Student-t intervals against a quantile computed by hand and against
scipy) and its caption, the README's table of seeds per effect, and `snakemake efficacy` end to
end on the tiny workflow, five arms (the classifier stage itself: test_efficacy_classifier.py)."""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import GOOD, snakemake, stage_function, tiny_corpus, train_tokenizer, write_jsonl
from transformers import AutoConfig

from lqs import efficacy, select, splits, target
from lqs.stages import efficacy as efficacy_stage
from lqs.stages import efficacy_corpus_eval as efficacy_corpus_eval_stage
from lqs.stages import efficacy_train as efficacy_train_stage
from lqs.stages import prepare_target as prepare_target_stage
from lqs.tokenize import SHARD_SCHEMA, load_tokenizer, tokenize_windows

efficacy_corpus_eval = stage_function(efficacy_corpus_eval_stage)
efficacy_summary = stage_function(efficacy_stage)
efficacy_train = stage_function(efficacy_train_stage)
prepare_target = stage_function(prepare_target_stage)

ARCH = dict(model_type="mistral", hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)
TRAIN = dict(model=ARCH, tokens=None, lr=3e-3, batch_tokens=48, warmup_steps=2, weight_decay=0.01, eval_every=2,
             device="cpu")
VOCAB = 300


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tok")
    write_jsonl(d / "corpus.jsonl", tiny_corpus(40))
    train_tokenizer([str(d / "corpus.jsonl")], str(d / "tokenizer"), text_field="text", vocab_size=VOCAB,
                    max_chars=100_000)
    return str(d / "tokenizer")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Two synthetic shards (60 documents, some with two windows, some of one token), a selection
    in training order (order.parquet), a target evaluation set and the held-out corpus set. The
    shards are one corpus file cut in two: the ids local to either shard are the corpus's."""
    d = tmp_path_factory.mktemp("efficacy-data")
    rng = np.random.default_rng(0)
    shards, doc_id = [], 1000
    for s in range(2):
        rows = []
        for _ in range(30):
            for w in range(int(rng.integers(1, 3))):
                n = 1 if doc_id % 17 == 0 and w == 0 else int(rng.integers(2, 20))
                rows.append({"doc_id": doc_id, "window": w, "input_ids": rng.integers(4, VOCAB, n).tolist()})
            doc_id += 7
        shards.append(str(d / f"shard-{s}.parquet"))
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA.with_metadata(
            splits.files_metadata(["corpus.jsonl"]))), shards[-1])
    all_ids, _ = efficacy.document_lengths(shards)
    order = rng.choice(all_ids, 24, replace=False)
    pq.write_table(pa.table({"doc_id": pa.array(order, pa.int64()), "score": rng.normal(size=24),
                             "tokens": np.zeros(24, np.int64)}), d / "order.parquet")
    pq.write_table(pa.table({"input_ids": pa.array([rng.integers(4, VOCAB, int(n)).tolist() for n in (5, 9, 3, 12)],
                                                   pa.list_(pa.int32()))}), d / "target.parquet")
    assert efficacy_corpus_eval(shards, str(d / "corpus_eval.parquet"), docs=6) == 6
    # the classifier arm's documents: as many as the lqs arm's outside the held-out ones (as
    # efficacy_classifier writes them), mostly others
    held = pq.read_table(d / "corpus_eval.parquet")["doc_id"].to_numpy()
    n = int((~np.isin(order, held)).sum())
    top = rng.permutation(all_ids[~np.isin(all_ids, held)])[:n]
    pq.write_table(pa.table({"doc_id": pa.array(top, pa.int64()), "score": -np.arange(n, dtype=np.float64)}),
                   d / "classifier_order.parquet")
    # the classifier_folded arm's: the same documents in another order (as efficacy_classifier writes them)
    pq.write_table(pa.table({"doc_id": pa.array(top[::-1], pa.int64())}), d / "classifier_folded.parquet")
    return {"dir": d, "shards": shards, "order": str(d / "order.parquet"), "target": str(d / "target.parquet"),
            "corpus_eval": str(d / "corpus_eval.parquet"), "classifier_order": str(d / "classifier_order.parquet"),
            "classifier_folded": str(d / "classifier_folded.parquet")}


def _windows0(shards) -> dict[int, list[int]]:
    rows = pd.concat([pd.read_parquet(p) for p in shards])
    return {int(r.doc_id): list(r.input_ids) for r in rows.itertuples() if r.window == 0}


ARM_ORDER = {"classifier": "classifier_order", "classifier_folded": "classifier_folded"}  # their data keys


def _train(data, tok_dir, out: Path, arm: str, seed: int = 0, **changes) -> pd.DataFrame:
    efficacy_train(data["shards"], data["order"], data["target"], data["corpus_eval"], tok_dir, str(out),
                   arm=arm, seed=seed, arm_order=data[ARM_ORDER[arm]] if arm in ARM_ORDER else None,
                   **(TRAIN | changes))
    return pd.read_parquet(out)


# ---------------------------------------------------------------- the target's held-out split


def test_split_target_is_disjoint_seeded_and_in_order():
    texts = [f"conversation {i}" for i in range(40)] + ["conversation 3", "conversation 7", "conversation 3"]
    rest, held = target.split_target(texts, 0.25, seed=1)
    assert not set(rest) & set(held)  # copies of a held-out text are held out with it
    assert sorted(rest + held) == sorted(texts)
    assert len(set(held)) == round(0.25 * 40)
    assert rest == [t for t in texts if t in set(rest)] and held == [t for t in texts if t in set(held)]
    assert target.split_target(texts, 0.25, seed=1) == (rest, held)
    assert target.split_target(texts, 0.25, seed=2)[1] != held
    assert target.split_target(texts, 0.0, seed=1) == (texts, [])
    assert len(target.split_target(texts[:5], 0.01, seed=0)[1]) == 1  # a tiny target still holds one out
    with pytest.raises(ValueError, match="target.eval_fraction 0.5: .* 1 distinct"):
        target.split_target(["same", "same"], 0.5, seed=0)


def test_prepare_target_writes_both_parts(tok_dir, tmp_path):
    records = [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(20)]
    source = write_jsonl(tmp_path / "target.jsonl", records)
    out, eval_out = tmp_path / "tokens.parquet", tmp_path / "eval.parquet"
    n = prepare_target(str(source), tok_dir, str(out), text_field="text", max_length=16,
                       eval_out=str(eval_out), eval_fraction=0.2, seed=3)
    texts = target.target_texts(str(source))
    rest, held = target.split_target(texts, 0.2, seed=3)
    tok = load_tokenizer(tok_dir)
    first = {t: w[0] for t, w in zip(texts, tokenize_windows(tok, texts, 16))}
    assert n == len(rest) == 16
    assert pq.read_table(out)["input_ids"].to_pylist() == [first[t] for t in rest]
    assert pq.read_table(eval_out)["input_ids"].to_pylist() == [first[t] for t in held]
    prepare_target(str(source), tok_dir, str(out), text_field="text", max_length=16, eval_out=str(eval_out))
    assert pq.read_table(eval_out).num_rows == 0 and pq.read_table(out).num_rows == 20  # eval_fraction 0
    with pytest.raises(ValueError, match="--eval-out"):
        prepare_target(str(source), tok_dir, str(out), text_field="text", max_length=16, eval_fraction=0.1)


# ---------------------------------------------------------------- streams, steps, schedule


def _brute_stream(doc_ids, lengths, budget):
    """Token by token: walk the sequence (again and again) until `budget` tokens are taken."""
    taken: list[list[int]] = []
    epochs, i, total = 0, 0, 0
    while total < budget:
        if i % len(doc_ids) == 0:
            epochs += 1
        for _ in range(lengths[i % len(doc_ids)]):
            if total == budget:
                break
            if not taken or taken[-1][2] != i:
                taken.append([doc_ids[i % len(doc_ids)], 0, i])
            taken[-1][1] += 1
            total += 1
        i += 1
    return [t[0] for t in taken], [t[1] for t in taken], epochs


def test_budget_stream_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        ids, lengths = rng.permutation(100)[:n], rng.integers(1, 10, n)
        for budget in (1, int(lengths[0]), int(lengths.sum()), int(lengths.sum()) + 1, int(rng.integers(1, 120))):
            got_ids, got_taken, epochs = efficacy.budget_stream(ids, lengths, budget)
            want_ids, want_taken, want_epochs = _brute_stream(ids.tolist(), lengths.tolist(), budget)
            assert (got_ids.tolist(), got_taken.tolist(), epochs) == (want_ids, want_taken, want_epochs)
            assert got_taken.sum() == budget


def test_pack_steps_groups_consecutive_documents_greedily():
    rng = np.random.default_rng(2)
    for _ in range(40):
        lengths = rng.integers(1, 30, int(rng.integers(1, 25))).tolist()
        budget = int(rng.integers(1, 60))
        steps = efficacy.pack_steps(lengths, budget)
        assert [i for a, b in steps for i in range(a, b)] == list(range(len(lengths)))
        for k, (a, b) in enumerate(steps):
            size = sum(lengths[a:b])
            assert b - a == 1 or size <= budget
            if k + 1 < len(steps):
                assert size + lengths[b] > budget  # the next document did not fit


def test_lr_factor_warms_up_then_decays_to_a_tenth():
    f = [efficacy.lr_factor(s, 4, 20) for s in range(20)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and f[4] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[4:], f[5:]))
    assert f[12] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 8 / 15)))
    assert efficacy.lr_factor(0, 0, 1) == pytest.approx(1.0)


def test_arm_documents(data):
    ids, _ = efficacy.document_lengths(data["shards"])
    order = pq.read_table(data["order"])["doc_id"].to_numpy()
    held = pq.read_table(data["corpus_eval"])["doc_id"].to_numpy()
    assert set(held) & set(order)  # the fixture holds out some selected documents
    lqs = efficacy.arm_documents("lqs", 0, ids, order, held)
    assert lqs.tolist() == [d for d in order if d not in set(held)]
    shuffled = efficacy.arm_documents("lqs_shuffled", 0, ids, order, held)
    assert sorted(shuffled) == sorted(lqs) and shuffled.tolist() != lqs.tolist()
    assert efficacy.arm_documents("lqs_shuffled", 0, ids, order, held).tolist() == shuffled.tolist()
    conventional = [efficacy.arm_documents("conventional", s, ids, order, held) for s in (0, 0, 1)]
    assert sorted(conventional[0]) == sorted(set(ids) - set(held))
    assert conventional[0].tolist() == conventional[1].tolist() != conventional[2].tolist()
    # the classifier arm: its own documents, as many as lqs's, never a held-out one, shuffled by the seed
    top = pq.read_table(data["classifier_order"])["doc_id"].to_numpy()
    with_held = np.concatenate([top, held[:2]])  # held-out documents in its order are dropped too
    arm = [efficacy.arm_documents("classifier", s, ids, order, held, with_held) for s in (0, 0, 1)]
    assert sorted(arm[0]) == sorted(top) and len(arm[0]) == len(lqs) and not set(arm[0]) & set(held)
    assert arm[0].tolist() == arm[1].tolist() != arm[2].tolist() and arm[0].tolist() != top.tolist()
    # the classifier_folded arm: the same documents in the given order, whatever the seed
    folded = pq.read_table(data["classifier_folded"])["doc_id"].to_numpy()
    arm = [efficacy.arm_documents("classifier_folded", s, ids, order, held, np.concatenate([held[:2], folded]))
           for s in (0, 1)]
    assert arm[0].tolist() == arm[1].tolist() == folded.tolist() and sorted(folded) == sorted(top)
    with pytest.raises(ValueError, match="the classifier arm has 7 documents outside the evaluation set but the lqs "
                                         rf"arm {len(lqs)}: the classifier's order.parquet is stale \(rerun "
                                         "efficacy_classifier"):
        efficacy.arm_documents("classifier", 0, ids, order, held, top[:7])
    with pytest.raises(ValueError, match="the classifier_folded arm has 7 documents .* the classifier's folded.parquet "
                                         "is stale"):
        efficacy.arm_documents("classifier_folded", 0, ids, order, held, folded[:7])
    for name, output in (("classifier", "order"), ("classifier_folded", "folded")):
        with pytest.raises(ValueError, match=f"the {name} arm needs the classifier's documents "
                                             rf"\(efficacy_classifier's {output}.parquet\)"):
            efficacy.arm_documents(name, 0, ids, order, held)
    with pytest.raises(ValueError, match="unknown efficacy arm"):
        efficacy.arm_documents("random", 0, ids, order, held)


def test_efficacy_corpus_eval(data, tmp_path):
    table = pq.read_table(data["corpus_eval"]).to_pylist()
    windows = _windows0(data["shards"])
    assert len(table) == 6 and all(r["input_ids"] == windows[r["doc_id"]] and len(r["input_ids"]) >= 2 for r in table)
    with pytest.raises(ValueError, match="efficacy.corpus_eval_docs 60: .* hold out fewer"):
        efficacy_corpus_eval(data["shards"], str(tmp_path / "x.parquet"), docs=60)


# ---------------------------------------------------------------- training


def test_arms_train_on_exactly_equal_tokens(data, tok_dir, tmp_path):
    ids, lengths = efficacy.document_lengths(data["shards"])
    order = pq.read_table(data["order"])["doc_id"].to_numpy()
    held = set(pq.read_table(data["corpus_eval"])["doc_id"].to_pylist())
    length = dict(zip(ids.tolist(), lengths.tolist()))
    budget = sum(length[d] for d in order if d not in held)  # the lqs arm's window-0 tokens
    top = pq.read_table(data["classifier_order"])["doc_id"].to_pylist()
    available = {"conventional": sum(n for d, n in length.items() if d not in held), "lqs": budget,
                 "lqs_shuffled": budget, "classifier": sum(length[d] for d in top),
                 "classifier_folded": sum(length[d] for d in top)}
    assert available["conventional"] < 4 * budget and available["classifier"] != budget
    for tokens, want in ((None, budget), (4 * budget, 4 * budget)):  # 4x: every arm needs several epochs
        seen, distinct = {}, {}
        for arm in efficacy.ARMS:
            curve = _train(data, tok_dir, tmp_path / f"{arm}.parquet", arm, tokens=tokens)
            seen[arm] = curve["tokens_seen"].iloc[-1]
            info = json.loads(pq.read_schema(tmp_path / f"{arm}.parquet").metadata[b"efficacy"])
            assert info["budget"] == info["tokens"] == want  # the same B for every arm, the lqs arm's by default
            assert info["epochs"] == math.ceil(want / available[arm])
            assert curve["step"].tolist() == sorted(set(list(range(0, info["steps"] + 1, 2)) + [info["steps"]]))
            distinct[arm] = info["distinct_documents"]
        assert seen == dict.fromkeys(efficacy.ARMS, want)
    # several epochs: every document of the arm
    assert distinct["lqs"] == distinct["classifier"] == distinct["classifier_folded"] == len(top)


def test_training_losses_against_a_per_document_computation(data, tok_dir, tmp_path):
    """Step 0's evaluation and the first step's training loss (token-weighted over the step's
    documents) recomputed one document at a time from the same initial weights."""
    curve = _train(data, tok_dir, tmp_path / "lqs.parquet", "lqs", seed=5, eval_every=1)
    model = efficacy.build_lm(load_tokenizer(tok_dir), 5, ARCH, None).eval()
    windows = _windows0(data["shards"])

    def ce_sum(ids) -> float:
        ids = torch.tensor([int(i) for i in ids], dtype=torch.long)[None]
        return float(F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="sum"))

    with torch.no_grad():
        for name, path in (("target_loss", data["target"]), ("corpus_loss", data["corpus_eval"])):
            samples = pq.read_table(path)["input_ids"].to_pylist()
            assert curve[name].iloc[0] == pytest.approx(np.mean([ce_sum(s) / (len(s) - 1) for s in samples]), rel=1e-5)
        held = set(pq.read_table(data["corpus_eval"])["doc_id"].to_pylist())
        docs, size = [], 0
        for d in pq.read_table(data["order"])["doc_id"].to_pylist():  # the first step, packed by hand
            if d in held:
                continue
            if docs and size + len(windows[d]) > TRAIN["batch_tokens"]:
                break
            docs.append(windows[d])
            size += len(windows[d])
        want = sum(ce_sum(x) for x in docs if len(x) > 1) / sum(len(x) - 1 for x in docs)
    assert curve["tokens_seen"].iloc[1] == size
    assert curve["train_loss"].iloc[1] == pytest.approx(want, rel=1e-5)
    assert pd.isna(curve["train_loss"].iloc[0])


def test_training_is_deterministic_and_paired_by_seed(data, tok_dir, tmp_path):
    runs = {(arm, seed, k): _train(data, tok_dir, tmp_path / f"{arm}-{seed}-{k}.parquet", arm, seed)
            for arm in ("conventional", "lqs") for seed in (0, 1) for k in (0, 1)}
    for arm in ("conventional", "lqs"):
        pd.testing.assert_frame_equal(runs[arm, 0, 0], runs[arm, 0, 1], check_exact=True)
        assert runs[arm, 0, 0]["target_loss"].iloc[-1] != runs[arm, 1, 0]["target_loss"].iloc[-1]
    first = {key: tuple(run[["target_loss", "corpus_loss"]].iloc[0]) for key, run in runs.items()}
    assert first["conventional", 0, 0] == first["lqs", 0, 0] != first["lqs", 1, 0]  # same init for a seed
    assert runs["conventional", 0, 0]["target_loss"].iloc[-1] != runs["lqs", 0, 0]["target_loss"].iloc[-1]


def test_bad_inputs_are_clear_errors(data, tok_dir, tmp_path):
    order = pq.read_table(data["order"])
    bad = tmp_path / "order.parquet"
    pq.write_table(pa.concat_tables([order, order.slice(0, 1)]), bad)
    with pytest.raises(ValueError, match=f"{bad}: a document appears more than once"):
        efficacy_train(**_args(data, tok_dir, tmp_path, order=str(bad)))
    pq.write_table(order.set_column(0, "doc_id", pa.array([3] * len(order), pa.int64())).slice(0, 1), bad)
    with pytest.raises(ValueError, match="doc_id 3 is not in the tokenized corpus"):
        efficacy_train(**_args(data, tok_dir, tmp_path, order=str(bad)))
    pq.write_table(order.slice(0, 0), bad)
    with pytest.raises(ValueError, match="the lqs arm has no document"):
        efficacy_train(**_args(data, tok_dir, tmp_path, order=str(bad)))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([], pa.list_(pa.int32()))}), empty)
    with pytest.raises(ValueError, match="the target evaluation set is empty"):
        efficacy_train(**_args(data, tok_dir, tmp_path, target_eval=str(empty)))
    proxy = tmp_path / "proxy"  # efficacy.model null: the proxy's architecture, here too small a vocabulary
    AutoConfig.for_model(**ARCH, vocab_size=50).save_pretrained(proxy)
    with pytest.raises(ValueError, match="token id .* outside the efficacy model's vocabulary of 50"):
        efficacy_train(**_args(data, tok_dir, tmp_path, model=None, proxy_dir=str(proxy)))
    with pytest.raises(ValueError, match="efficacy.model: needs model_type"):
        efficacy_train(**_args(data, tok_dir, tmp_path, model={"hidden_size": 16}))
    with pytest.raises(ValueError, match="efficacy.model: leave out vocab_size"):
        efficacy_train(**_args(data, tok_dir, tmp_path, model=ARCH | {"vocab_size": 50}))
    assert not (tmp_path / "out.parquet").exists()


def test_the_classifier_arm_needs_its_documents_and_only_it(data, tok_dir, tmp_path):
    with pytest.raises(ValueError, match="the classifier arm needs the classifier's documents"):
        efficacy_train(**_args(data, tok_dir, tmp_path, arm="classifier"))
    with pytest.raises(ValueError, match="arm lqs: --arm-order is for the classifier and classifier_folded arms only"):
        efficacy_train(**_args(data, tok_dir, tmp_path, arm_order=data["classifier_order"]))
    bad = tmp_path / "classifier.parquet"
    pq.write_table(pa.table({"doc_id": pa.array([3], pa.int64())}), bad)
    with pytest.raises(ValueError, match=r"doc_id 3 is not in the tokenized corpus \(rerun efficacy_classifier\)"):
        efficacy_train(**_args(data, tok_dir, tmp_path, arm="classifier", arm_order=str(bad)))


def _args(data, tok_dir, tmp_path, **changes) -> dict:
    return {"shard_paths": data["shards"], "order": data["order"], "target_eval": data["target"],
            "corpus_eval": data["corpus_eval"], "tokenizer_dir": tok_dir, "out": str(tmp_path / "out.parquet"),
            "arm": "lqs", "seed": 0} | TRAIN | changes


@pytest.mark.distributed
def test_two_processes_match_one(data, tok_dir, tmp_path):
    """torchrun with two gloo processes: each takes half of every step's documents; the curve
    equals one process's."""
    settings = json.dumps({k: v for k, v in TRAIN.items()} | {"trust_remote_code": False})
    for nproc in (1, 2):
        run = subprocess.run([sys.executable, "-m", "lqs", "efficacy-train", *data["shards"], "--order", data["order"],
                              "--target-eval", data["target"], "--corpus-eval", data["corpus_eval"],
                              "--tokenizer-dir", tok_dir, "--arm", "lqs_shuffled", "--seed", "2",
                              "--out", str(tmp_path / f"{nproc}.parquet"), "--nproc", str(nproc),
                              "--settings", settings], cwd=tmp_path, capture_output=True, text=True,
                             timeout=240)  # ~20 s; a rank that never exits fails here, not at 600 s
        assert run.returncode == 0, run.stderr[-4000:]
    one, two = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in (1, 2))
    assert json.loads(pq.read_schema(tmp_path / "2.parquet").metadata[b"efficacy"])["processes"] == 2
    pd.testing.assert_frame_equal(one, two, rtol=1e-5)


# ---------------------------------------------------------------- summary


def _runs(tmp_path, final: dict) -> list[str]:
    """Made-up run files: each (arm, seed) with a step-0 evaluation and a final (target, corpus) loss."""
    paths = []
    for (arm, seed), (t, c) in final.items():
        rows = [{"arm": arm, "seed": seed, "step": 0, "tokens_seen": 0, "target_loss": 9.0, "corpus_loss": 9.0,
                 "train_loss": None},
                {"arm": arm, "seed": seed, "step": 5, "tokens_seen": 500, "target_loss": t, "corpus_loss": c,
                 "train_loss": 3.0}]
        info = {"arm": arm, "seed": seed, "budget": 500, "epochs": 1, "steps": 5}
        paths.append(str(tmp_path / f"{arm}-{seed}.parquet"))
        table = pa.Table.from_pylist(rows, schema=efficacy.CURVE_SCHEMA)
        pq.write_table(table.replace_schema_metadata({"efficacy": json.dumps(info)}), paths[-1])
    return paths


@functools.cache
def _t_quantile(p: float, dof: int) -> float:
    """Student's t quantile by hand: the density integrated by Simpson's rule from 0, and the
    point where 0.5 + that integral reaches p found by bisection."""
    const = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))

    def cdf(q: float, n: int = 4000) -> float:
        h = q / n
        f = [const * (1 + (i * h) ** 2 / dof) ** (-(dof + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 100.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def test_t_quantiles_by_hand_match_the_tables_and_scipy():
    from scipy import stats

    # the printed tables' t_{0.975, dof}: with 3 seeds (2 dof) the 95% interval is ± 4.30 standard errors
    for dof, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262)):
        assert _t_quantile(0.975, dof) == pytest.approx(table, abs=5e-4)
        assert _t_quantile(0.975, dof) == pytest.approx(stats.t.ppf(0.975, dof), rel=1e-6)


def _brute_paired(final, arm, other, seeds) -> dict:
    """arm − other, seed by seed, with plain loops; the interval from the hand-computed t quantile."""
    t = [final[arm, s][0] - final[other, s][0] for s in range(seeds)]
    c = [final[arm, s][1] - final[other, s][1] for s in range(seeds)]

    def stats(d):
        mean = sum(d) / len(d)
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
        half = _t_quantile(0.975, len(d) - 1) * se
        return {"mean": mean, "stderr": se, "dof": len(d) - 1, "ci95": [mean - half, mean + half]}

    return {"arm": arm, "other": other, "target_loss": stats(t), "corpus_loss": stats(c),
            "seeds_won": {arm: sum(x < 0 for x in t), other: sum(x > 0 for x in t)}}


def _approx(d: dict) -> dict:
    """A paired difference for pytest.approx (which compares numbers, not strings or nesting)."""
    return {f"{part}.{k}": v for part in ("target_loss", "corpus_loss") for k, v in d[part].items() if k != "ci95"} | \
        {f"{part}.ci95.{i}": d[part]["ci95"][i] for part in ("target_loss", "corpus_loss") for i in (0, 1)}


def test_summary_statistics_are_paired_by_seed(data, tmp_path):
    rng = np.random.default_rng(4)
    seeds = 5
    final = {(arm, seed): rng.normal(3, 0.2, 2) for arm in efficacy.ARMS for seed in range(seeds)}
    final["classifier_folded", 2] = final["classifier", 2].copy()  # a tie: won by neither
    for seed in range(seeds):  # a clear gain of the lqs arm over conventional
        final["lqs", seed] = final["conventional", seed] - (0.5 + 0.01 * seed)
    template = tmp_path / "caption.rst"
    template.write_text("The figure's fixed text.\n")
    paths = _runs(tmp_path, final)
    classifier_order = tmp_path / "classifier_order.parquet"
    cost = {"positives": 4, "negatives": 4, "documents": 60, "selected": 23, "seed": 0,
            "cpu_seconds": {"read_negatives": 0.1, "train": 0.2, "score": 0.3}, "seconds": 1.0}
    pq.write_table(pa.table({"doc_id": pa.array([1], pa.int64())}).replace_schema_metadata(
        {"classifier": json.dumps(cost)}), classifier_order)
    out = {k: str(tmp_path / f"out.{k}") for k in ("json", "parquet", "png", "rst")}
    returned = efficacy_summary(paths, data["target"], data["corpus_eval"], out["json"], out["parquet"], out["png"],
                                caption_template=str(template), caption_out=out["rst"],
                                classifier=str(classifier_order), seeds=seeds, arms=list(efficacy.ARMS),
                                settings={"lr": 1})
    summary = json.loads(Path(out["json"]).read_text())
    assert returned == summary and list(returned["arms"]) == list(efficacy.ARMS)  # the figure's order
    assert set(summary) == {"arms", "vs_conventional", "decomposition", "seeds", "budget", "eval", "classifier",
                            "caption", "settings", "provenance"}
    assert summary["eval"] == {"target_samples": 4, "corpus_documents": 6} and summary["budget"] == 500
    assert summary["classifier"] == cost
    for arm in efficacy.ARMS:
        t = [final[arm, s][0] for s in range(seeds)]
        assert summary["arms"][arm]["target_loss"] == pytest.approx({"mean": np.mean(t), "std": np.std(t, ddof=1)})
        assert summary["arms"][arm]["tokens"] == 500
    assert set(summary["vs_conventional"]) == {"lqs", "lqs_shuffled", "classifier", "classifier_folded"}
    assert {name: (d["arm"], d["other"]) for name, d in summary["decomposition"].items()} == {
        "selection": ("lqs_shuffled", "classifier"), "order_lqs": ("lqs", "lqs_shuffled"),
        "order_classifier": ("classifier_folded", "classifier"), "like_for_like": ("lqs", "classifier_folded"),
        "total": ("lqs", "classifier")}
    pairs = [*summary["vs_conventional"].values(), *summary["decomposition"].values()]
    for got in pairs:
        want = _brute_paired(final, got["arm"], got["other"], seeds)
        assert got["seeds_won"] == want["seeds_won"] and got["target_loss"]["dof"] == seeds - 1
        assert _approx(got) == pytest.approx(_approx(want), rel=1e-6)
    won = summary["decomposition"]["order_classifier"]["seeds_won"]
    assert won["classifier_folded"] + won["classifier"] == seeds - 1  # the tie
    # the decomposition adds up, seed by seed and so in the mean
    d = {name: x["target_loss"]["mean"] for name, x in summary["decomposition"].items()}
    assert d["total"] == pytest.approx(d["selection"] + d["order_lqs"])
    assert d["total"] == pytest.approx(d["like_for_like"] + d["order_classifier"])
    assert len(pd.read_parquet(out["parquet"])) == 2 * 5 * seeds and Path(out["png"]).stat().st_size > 0
    # the caption: the fixed text, then the paragraph of the summary, whose numbers it states
    caption = Path(out["rst"]).read_text()
    assert caption == "The figure's fixed text.\n\n" + summary["caption"] + "\n"
    assert summary["caption"].startswith(f"Measured over {seeds} seeds")

    def signed(x):
        return f"{x:+.3f}".replace("-", "−")

    for label, key in (("lqs_shuffled − classifier (selection)", "selection"),
                       ("classifier_folded − classifier (order classifier)", "order_classifier")):
        x = summary["decomposition"][key]
        t = x["target_loss"]
        assert (f"{label} {signed(t['mean'])}, 95% interval [{signed(t['ci95'][0])}, {signed(t['ci95'][1])}] "
                f"(t, 4 dof): {efficacy.verdict(t['ci95'])} ({x['arm']} lower in {x['seeds_won'][x['arm']]} of "
                f"{seeds} seeds, classifier in {x['seeds_won']['classifier']})") in summary["caption"]
    lqs = summary["vs_conventional"]["lqs"]["target_loss"]
    assert lqs["ci95"][1] < 0 and "lqs − conventional −0.520, 95% interval" in summary["caption"]
    with pytest.raises(ValueError, match="no curve for arm, seed"):
        efficacy_summary(paths[:-1], data["target"], data["corpus_eval"], out["json"], out["parquet"], out["png"],
                         seeds=seeds, arms=list(efficacy.ARMS), settings={})


def test_summary_of_fewer_arms(data, tmp_path):
    final = {(arm, seed): (3.0 + seed / 10, 4.0) for arm in ("conventional", "lqs") for seed in range(2)}
    out = {k: str(tmp_path / f"out.{k}") for k in ("json", "parquet", "png")}
    summary = efficacy_summary(_runs(tmp_path, final), data["target"], data["corpus_eval"], out["json"],
                               out["parquet"], out["png"], seeds=2, arms=["lqs", "conventional"], settings={})
    assert list(summary["arms"]) == ["conventional", "lqs"] and summary["decomposition"] == {}
    assert summary["vs_conventional"]["lqs"]["seeds_won"] == {"lqs": 0, "conventional": 0}  # equal in every seed
    assert ("lqs − conventional +0.000, 95% interval [+0.000, +0.000] (t, 1 dof): no difference detected (lqs lower "
            "in 0 of 2 seeds, conventional in 0)") in summary["caption"]
    # without classifier_folded: only the selection and the lqs arm's order
    final = {(arm, seed): (3.0 + seed / 10, 4.0) for arm in ("conventional", "lqs", "lqs_shuffled", "classifier")
             for seed in range(2)}
    summary = efficacy_summary(_runs(tmp_path, final), data["target"], data["corpus_eval"], out["json"],
                               out["parquet"], out["png"], seeds=2, arms=sorted({arm for arm, _ in final}),
                               settings={})
    assert list(summary["decomposition"]) == ["selection", "order_lqs", "total"]
    one = {("classifier", 0): (3.0, 4.0)}
    summary = efficacy_summary(_runs(tmp_path, one), data["target"], data["corpus_eval"], out["json"],
                               out["parquet"], out["png"], seeds=1, arms=["classifier"], settings={})
    assert summary["vs_conventional"] == {} and summary["decomposition"] == {}
    assert "only the classifier arm ran" in summary["caption"]


NONE = "no difference detected"


@pytest.mark.parametrize("ci, words", [([-0.3, -0.01], "lower"), ([0.01, 0.4], "higher"), ([-0.3, 0.01], NONE),
                                       ([-0.01, 0.3], NONE), ([0.0, 0.2], NONE), ([0.0, 0.0], NONE),
                                       ([-0.01, -0.01], "lower"), (None, "one seed")])
def test_a_difference_is_lower_or_higher_only_when_its_interval_excludes_zero(ci, words):
    assert efficacy.verdict(ci).startswith(words)


def test_the_interval_of_one_seed_and_of_three():
    assert efficacy.interval(np.array([0.2])) == {"mean": 0.2, "stderr": None, "dof": None, "ci95": None}
    # three seeds, by hand: mean −0.1, sd 0.1, se 0.1 / √3, t_{0.975, 2} = 4.3027
    got = efficacy.interval(np.array([-0.2, -0.1, 0.0]))
    se = 0.1 / math.sqrt(3)
    assert got["dof"] == 2 and got["mean"] == pytest.approx(-0.1) and got["stderr"] == pytest.approx(se)
    assert got["ci95"] == pytest.approx([-0.1 - 4.302653 * se, -0.1 + 4.302653 * se], rel=1e-6)
    assert efficacy.verdict(got["ci95"]) == "no difference detected"  # 1.7 standard errors: not at 3 seeds
    text = efficacy.caption({"seeds": 3, "budget": 76922, "arms": {"conventional": {}, "lqs": {}},
                             "vs_conventional": {"lqs": {"arm": "lqs", "other": "conventional", "target_loss": got,
                                                         "corpus_loss": efficacy.interval(np.array([0.4, 0.5, 0.6])),
                                                         "seeds_won": {"lqs": 2, "conventional": 0}}}})
    assert ("Held-out target loss: lqs − conventional −0.100, 95% interval [−0.348, +0.148] (t, 2 dof): no difference "
            "detected (lqs lower in 2 of 3 seeds, conventional in 0).") in text
    assert "Held-out corpus loss: lqs − conventional +0.500, 95% interval [+0.252, +0.748] (t, 2 dof): higher." in text
    assert text.startswith("Measured over 3 seeds") and "76,922 training tokens per arm" in text and "\n" not in text


def test_the_readme_table_of_seeds_per_effect():
    """The README's table: for an effect of d standard deviations of the paired difference, the
    fewest seeds n with t_{0.975, n−1} / √n < d, from the hand-computed quantile."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    effects, = [[float(x) for x in line.split("|")[2:-1]] for line in readme.splitlines()
                if line.startswith("| effect d ")]
    seeds, = [[int(x) for x in line.split("|")[2:-1]] for line in readme.splitlines() if line.startswith("| seeds n ")]
    want = [next(n for n in range(2, 100) if _t_quantile(0.975, n - 1) / math.sqrt(n) < d) for d in effects]
    assert seeds == want and len(effects) >= 5


# ---------------------------------------------------------------- snakemake efficacy, end to end


def _job_stats(output: str) -> dict[str, int]:
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return {}
    stats, i = {}, lines.index("Job stats:") + 3  # title, header, dashes
    while lines[i].split() and lines[i].split()[0] != "total":
        rule, count = lines[i].split()
        stats[rule] = int(count)
        i += 1
    return stats


def _with_config(workdir: Path, **sections) -> None:
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        config[key] = config.get(key, {}) | value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.workflow
def test_snakemake_efficacy_end_to_end(completed_workflow, tmp_path):
    workdir = tmp_path / "wf"
    shutil.copytree(completed_workflow, workdir, symlinks=True)
    results = workdir / "results"
    # Not part of `all`; the selection must select for lqs and conventional to differ.
    assert not [r for r in _job_stats(snakemake(workdir, "-n").stdout) if r.startswith("efficacy")]
    seeds = 2
    # efficacy.arms without the classifier: no classifier job
    _with_config(workdir, selection={"ratio": 0.5}, efficacy={"seeds": seeds, "arms": ["lqs", "conventional"]})
    planned = _job_stats(snakemake(workdir, "-n", "efficacy").stdout)
    assert planned == {"select_order": 1, "efficacy_corpus_eval": 1, "efficacy_train": 2 * seeds, "efficacy": 1}
    _with_config(workdir, efficacy={"seeds": seeds, "batch_tokens": 128, "eval_every": 4, "corpus_eval_docs": 8,
                                    "arms": list(efficacy.ARMS)})
    planned = _job_stats(snakemake(workdir, "-n", "efficacy").stdout)
    assert planned == {"select_order": 1, "efficacy_corpus_eval": 1, "efficacy_classifier": 1,
                       "efficacy_train": 5 * seeds, "efficacy": 1}
    snakemake(workdir, "efficacy")

    # the target's held-out split: the seeded texts, tokenized; none of them reaches J
    texts = target.target_texts(str(workdir / "data/target.jsonl"))
    rest, held = target.split_target(texts, 0.1, seed=0)
    assert len(held) == 1 and len(rest) == 11
    tok = load_tokenizer(results / "models/tokenizer")
    j = pq.read_table(results / "target/tokens.parquet")["input_ids"].to_pylist()
    held_ids = pq.read_table(results / "target/eval_tokens.parquet")["input_ids"].to_pylist()
    assert held_ids == [w[0] for w in tokenize_windows(tok, held, 32)]
    assert j == [w[0] for w in tokenize_windows(tok, rest, 32)] and not [x for x in held_ids if x in j]
    commands = snakemake(workdir, "-n", "-p", "--forcerun", "trajectory", "results/annotation/trajectory/log.parquet")
    trajectory = [line for line in commands.stdout.splitlines() if "lqs trajectory" in line]
    assert trajectory and all("--target-path results/target/tokens.parquet" in line and "eval_tokens" not in line
                              for line in trajectory)

    summary = json.loads((results / "efficacy/summary.json").read_text())
    curves = pd.read_parquet(results / "efficacy/curves.parquet")
    assert set(summary["arms"]) == set(efficacy.ARMS)
    assert set(summary["vs_conventional"]) == {"lqs", "lqs_shuffled", "classifier", "classifier_folded"}
    assert set(summary["decomposition"]) == {"selection", "order_lqs", "order_classifier", "like_for_like", "total"}
    assert summary["seeds"] == seeds and summary["eval"] == {"target_samples": 1, "corpus_documents": 8}
    final = curves.groupby(["arm", "seed"]).tail(1)
    assert len(final) == 5 * seeds and set(final["tokens_seen"]) == {summary["budget"]}  # exactly equal tokens
    order = pq.read_table(results / "selection/order.parquet")["doc_id"].to_numpy()
    held_docs = pq.read_table(results / "efficacy/eval/corpus.parquet")["doc_id"].to_numpy()
    ids, lengths = efficacy.document_lengths(sorted(map(str, results.glob("corpus/shard-*.parquet"))))
    assert summary["budget"] == lengths[np.isin(ids, order[~np.isin(order, held_docs)])].sum()
    assert 0 < len(order) < len(ids)
    # the classifier: trained on J's 11 texts against as many corpus documents; every document
    # scored; its arm as many documents as lqs's, none held out
    scores = pq.read_table(results / "efficacy/classifier/scores.parquet")
    assert sorted(scores["doc_id"].to_pylist()) == sorted(ids.tolist())
    top = pq.read_table(results / "efficacy/classifier/order.parquet")["doc_id"].to_numpy()
    assert len(top) == (~np.isin(order, held_docs)).sum() and not np.isin(top, held_docs).any()
    # the classifier_folded arm: those documents in Folding order (the default ordering.*) by their scores
    folded = pq.read_table(results / "efficacy/classifier/folded.parquet").to_pandas()
    by_id = folded.sort_values("doc_id")
    assert folded["doc_id"].tolist() == by_id["doc_id"].to_numpy()[select.order(by_id["score"].to_numpy())].tolist()
    assert sorted(folded["doc_id"]) == sorted(top)
    assert {k: summary["classifier"][k] for k in ("positives", "negatives", "selected")} == \
        {"positives": 11, "negatives": 11, "selected": len(top)}
    caption = (results / "efficacy/caption.rst").read_text()
    assert caption == (workdir / "report/efficacy.rst").read_text().rstrip() + "\n\n" + summary["caption"] + "\n"
    report = snakemake(workdir, "efficacy", "--report", "report.html")  # the figure's caption is that file
    assert "ERROR" not in report.stdout + report.stderr
    assert f"Measured over {seeds} seeds" in (workdir / "report.html").read_text(errors="replace")
    for arm in efficacy.ARMS:
        got = summary["arms"][arm]
        losses = final[final["arm"] == arm]["target_loss"]
        assert got["target_loss"]["mean"] == pytest.approx(losses.mean()) and got["tokens"] == summary["budget"]
    assert (results / "efficacy/curves.png").stat().st_size > 0
    assert _job_stats(snakemake(workdir, "-n", "efficacy").stdout) == {}  # complete: nothing reruns

    # an explicit evaluation set instead of the held-out split
    write_jsonl(workdir / "data/eval.jsonl", [{"text": f"An evaluation text number {i}."} for i in range(3)])
    _with_config(workdir, efficacy={"eval_source": "data/eval.jsonl"})
    planned = _job_stats(snakemake(workdir, "-n", "efficacy").stdout)
    assert planned == {"prepare_eval_source": 1, "efficacy_train": 5 * seeds, "efficacy": 1}
    snakemake(workdir, "results/efficacy/eval/target.parquet")
    eval_texts = target.target_texts(str(workdir / "data/eval.jsonl"))
    assert pq.read_table(results / "efficacy/eval/target.parquet")["input_ids"].to_pylist() == \
        [w[0] for w in tokenize_windows(tok, eval_texts, 32)]
    _with_config(workdir, efficacy={"eval_source": "someone/eval-set", "eval_split": "validation"})
    planned = _job_stats(snakemake(workdir, "-n", "efficacy").stdout)  # a hub data set: fetched first
    assert planned == {"fetch_eval_source": 1, "prepare_eval_source": 1, "efficacy_train": 5 * seeds, "efficacy": 1}
    # no evaluation set at all: a clear error before any job
    _with_config(workdir, efficacy={"eval_source": None}, target={"eval_fraction": 0})
    run = snakemake(workdir, "-n", "efficacy", check=False)
    assert run.returncode != 0
    assert "target.eval_fraction is 0" in run.stdout + run.stderr and "efficacy.eval_source" in run.stdout + run.stderr
