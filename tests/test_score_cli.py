"""`lqs score` checks its flags and outputs before scoring, never writes over an input, replaces an
existing output only with --overwrite, keeps its rejects file with its output, fails when nothing
was scored and names its own flags in hints; a scorer checkpoint records the SHA-256 of its
weights and refuses weights that are not those (issue 20, part E)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import score_error as lqs_score
from helpers import stage_function, tiny_corpus, train_tokenizer, write_jsonl
from transformers import MistralConfig, MistralModel, XGLMConfig, XGLMModel

import lqs.score
import lqs.scorer
from lqs import cli, corpus
from lqs.scorer import ScorerModel, save_scorer
from lqs.stages import fetch_scorer as fetch_scorer_stage
from lqs.tokenize import load_tokenizer

fetch_scorer = stage_function(fetch_scorer_stage)




def _ids(tokenizer) -> dict:
    return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory) -> Path:
    """A tiny XGLM scorer checkpoint, as train_scorer saves it."""
    d = tmp_path_factory.mktemp("scorer")
    train_tokenizer([str(write_jsonl(d / "train.jsonl", tiny_corpus(40)))], str(d / "tokenizer"),
                    text_field="text", vocab_size=300, max_chars=10**6)
    tokenizer = load_tokenizer(d / "tokenizer")
    torch.manual_seed(0)
    backbone = XGLMModel(XGLMConfig(d_model=32, ffn_dim=64, num_layers=1, attention_heads=2,
                                    max_position_embeddings=64, **_ids(tokenizer)))
    save_scorer(ScorerModel(backbone), tokenizer, d / "ckpt", {"max_length": 16})
    # another backbone of the same width (32), for the swap
    MistralModel(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, max_position_embeddings=64, **_ids(tokenizer))
                 ).save_pretrained(d / "other")
    return d / "ckpt"


@pytest.fixture
def no_scoring(monkeypatch):
    """Fails the test if lqs score loads the scorer: what is checked up front must fail before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the scorer was loaded: the check came after scoring started")
    monkeypatch.setattr(lqs.score, "loaded_scorer", refuse)


def _input(tmp_path: Path, n: int = 6, bad: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(d) for d in tiny_corpus(n)]
    for i, line in (bad or {}).items():
        lines[i] = line
    return write_jsonl(tmp_path / "in.jsonl", lines)


# ---------------------------------------------------------------- 9. numeric flags


@pytest.mark.parametrize("flag, value", [("--max-windows-per-doc", "0"), ("--max-tokens", "-5"),
                                         ("--max-chars", "0"), ("--tokenizer-workers", "0"),
                                         ("--max-tokens", "many")])
def test_numeric_flags_are_refused_up_front(scorer_dir, tmp_path, capsys, flag, value):
    src = _input(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["score", str(src), "--scorer", str(scorer_dir), "--out", str(tmp_path / "s.jsonl"), flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # argparse: usage, then the one error line
    assert f"argument {flag}: must be a whole number of at least 1, not '{value}'" in error
    assert not (tmp_path / "s.jsonl").exists()


# ---------------------------------------------------------------- outputs checked before scoring


def test_out_a_directory_or_in_a_missing_one_is_refused_up_front(scorer_dir, tmp_path, caplog, no_scoring):
    src = _input(tmp_path)
    (tmp_path / "scored").mkdir()
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", tmp_path / "scored", "--overwrite")
    assert code == 1 and f"--out {tmp_path / 'scored'} is a directory" in error
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", tmp_path / "nowhere" / "s.jsonl")
    assert code == 1 and f"--out {tmp_path / 'nowhere' / 's.jsonl'}: its directory" in error
    assert "does not exist" in error and not (tmp_path / "nowhere").exists()


def test_unwritable_output_directory_is_refused_up_front(scorer_dir, tmp_path, caplog, no_scoring, monkeypatch):
    src = _input(tmp_path)
    (tmp_path / "locked").mkdir()
    access = os.access  # as root, chmod would not stop the write: the permission is simulated
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != tmp_path / "locked" and access(p, mode, **kw))
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--on-bad-record", "skip",
                            "--out", tmp_path / "s.jsonl", "--rejects", tmp_path / "locked" / "r.jsonl")
    assert code == 1 and f"--rejects {tmp_path / 'locked' / 'r.jsonl'}: its directory" in error
    assert "is not writable" in error


@pytest.mark.parametrize("where", ["out is the input", "rejects is the input", "out inside a directory input"])
def test_an_output_never_lands_on_an_input(scorer_dir, tmp_path, caplog, no_scoring, where):
    src = _input(tmp_path, bad={2: "not json"})
    before = src.read_bytes()
    args = {"out is the input": [src, "--out", src],
            "rejects is the input": [src, "--out", tmp_path / "s.jsonl", "--rejects", src],
            "out inside a directory input": [tmp_path, "--out", tmp_path / "s.jsonl"]}[where]
    code, error = lqs_score(caplog, *args, "--scorer", scorer_dir, "--on-bad-record", "skip", "--overwrite")
    assert code == 1 and "INPUT" in error and ("--rejects" if "rejects" in where else "--out") in error
    assert src.read_bytes() == before and not (tmp_path / "s.jsonl").exists()


def test_an_existing_output_is_replaced_only_with_overwrite(scorer_dir, tmp_path, caplog, monkeypatch):
    src, out = _input(tmp_path), tmp_path / "s.jsonl"
    out.write_text("an earlier run's results\n")
    with monkeypatch.context() as m:
        m.setattr(lqs.score, "loaded_scorer", lambda *a, **k: pytest.fail("scored before refusing"))
        code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out)
    assert code == 1 and f"--out {out} exists: pass --overwrite to replace it" in error
    assert out.read_text() == "an earlier run's results\n"

    out.chmod(0o444)  # read-only for a reason: not replaced, even with --overwrite
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--overwrite")
    assert code == 1 and f"--out {out} is read-only" in error and out.read_text() == "an earlier run's results\n"

    out.chmod(0o644)
    assert lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--overwrite") == (0, "")
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [d["id"] for d in tiny_corpus(6)]


# ---------------------------------------------------------------- rejects, exit status


def test_rejects_file_goes_with_its_output(scorer_dir, tmp_path, caplog):
    src, out = _input(tmp_path, bad={1: "not json", 4: '{"text": " "}'}), tmp_path / "s.jsonl"
    rejects = tmp_path / "s.jsonl.rejects.jsonl"
    assert lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--on-bad-record", "skip")[0] == 0
    assert [r["line"] for r in map(json.loads, rejects.read_text().splitlines())] == [2, 5]

    out.unlink()  # the earlier rejects file still belongs to this --out: not replaced without --overwrite
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--on-bad-record", "skip")
    assert code == 1 and f"{rejects}" in error and "--overwrite" in error and not out.exists()

    _input(tmp_path, bad={3: "not json"})
    assert lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--on-bad-record", "skip",
                     "--overwrite")[0] == 0
    assert [r["line"] for r in map(json.loads, rejects.read_text().splitlines())] == [4]  # replaced

    _input(tmp_path)  # a clean rerun: no stale rejects beside the new output
    assert lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--on-bad-record", "skip",
                     "--overwrite")[0] == 0
    assert len(out.read_text().splitlines()) == 6 and not rejects.exists()


def test_nothing_scored_is_a_failure(scorer_dir, tmp_path, caplog):
    src = write_jsonl(tmp_path / "in.jsonl", ["not json", '{"text": ""}', '{"body": "no text field"}'])
    out = tmp_path / "s.jsonl"
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--on-bad-record", "skip")
    assert code == 1 and "nothing was scored: all 3 records were rejected" in error
    assert len((tmp_path / "s.jsonl.rejects.jsonl").read_text().splitlines()) == 3  # the reasons are written


# ---------------------------------------------------------------- hints name the caller's settings


def test_hints_name_lqs_score_flags(scorer_dir, tmp_path, caplog):
    src = _input(tmp_path, bad={2: "not json"})
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", tmp_path / "a.jsonl")
    assert code == 1 and "--on-bad-record skip" in error and "corpus.on_bad_record" not in error

    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", tmp_path / "b.jsonl", "--score-field", "id")
    assert code == 1 and "choose another --score-field" in error and "output.score_field" not in error

    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", tmp_path / "c.jsonl", "--max-chars", "300",
                            "--on-bad-record", "skip")
    reasons = [r["reason"] for r in map(json.loads, (tmp_path / "c.jsonl.rejects.jsonl").read_text().splitlines())]
    assert code == 0 and any("text longer than --max-chars (" in r for r in reasons)

    parquet = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"text": ["one text", "two texts"]}), parquet)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "mixed2.parquet")
    code, error = lqs_score(caplog, parquet, tmp_path / "mixed2.parquet", "--scorer", scorer_dir,
                            "--out", tmp_path / "d.parquet")
    assert code == 1 and "use --format jsonl" in error and "output.format" not in error


def test_hints_name_workflow_keys_in_the_workflow():
    bad = corpus.Record(0, "c.jsonl", 3, None, "x", None, "invalid JSON", "\n")
    with pytest.raises(corpus.BadRecordError, match="set corpus.on_bad_record: skip"):
        corpus.check(bad, "error")
    with corpus.settings_named(lqs.score.SCORE_FLAGS), pytest.raises(corpus.BadRecordError,
                                                                       match="set --on-bad-record skip"):
        corpus.check(bad, "error")  # the same message under lqs score
    assert "corpus.max_chars" in corpus.text_error("x" * 11, 10)


# ---------------------------------------------------------------- weight digests


def _copy(scorer_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(scorer_dir, tmp_path / "scorer"))


def test_checkpoint_records_the_digests_of_its_weights(scorer_dir):
    import hashlib

    recorded = json.loads((scorer_dir / "scorer.json").read_text())["weights_sha256"]
    assert recorded == {name: hashlib.sha256((scorer_dir / name).read_bytes()).hexdigest()
                        for name in ("head.safetensors", "model.safetensors")}


def test_swapped_backbone_is_refused(scorer_dir, tmp_path, caplog):
    ckpt = _copy(scorer_dir, tmp_path)
    for name in ("config.json", "model.safetensors"):  # another model of the same width: it would load
        shutil.copy(scorer_dir.parent / "other" / name, ckpt / name)
    with pytest.raises(ValueError, match=rf"{ckpt / 'model.safetensors'} is not the file this scorer checkpoint "
                                         rf"was saved with"):
        lqs.scorer.load(ckpt, device="cpu")
    code, error = lqs_score(caplog, _input(tmp_path), "--scorer", ckpt, "--out", tmp_path / "s.jsonl")
    assert code == 1 and str(ckpt / "model.safetensors") in error and not (tmp_path / "s.jsonl").exists()
    with pytest.raises(ValueError, match="model.safetensors is not the file"):
        fetch_scorer(str(tmp_path / "fetched"), source={"path": str(ckpt)})
    assert not (tmp_path / "fetched").exists()


def test_checkpoint_without_digests_loads_with_a_warning(scorer_dir, tmp_path, caplog):
    ckpt = _copy(scorer_dir, tmp_path)
    config = json.loads((ckpt / "scorer.json").read_text())
    del config["weights_sha256"]
    (ckpt / "scorer.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        scores = lqs.scorer.load(ckpt, device="cpu").score(["some text"])
    assert scores == pytest.approx(lqs.scorer.load(scorer_dir, device="cpu").score(["some text"]))
    assert any("records no digests of its weights" in r.getMessage() for r in caplog.records)
    fetch_scorer(str(tmp_path / "fetched"), source={"path": str(ckpt)})  # a fetched copy gets them
    assert "weights_sha256" in json.loads((tmp_path / "fetched" / "scorer.json").read_text())


# ---------------------------------------------------------------- review: inputs reached another way


@pytest.mark.parametrize("how", ["symlink in a directory input", "symlink matched by a glob", "file:// URL"])
def test_an_output_never_lands_on_an_input_reached_through_a_link_or_url(scorer_dir, tmp_path, caplog, no_scoring,
                                                                         how):
    store, data = tmp_path / "store", tmp_path / "data"
    store.mkdir(), data.mkdir()
    real = _input(store)
    (data / "c.jsonl").symlink_to(real)
    before = real.read_bytes()
    given = {"symlink in a directory input": data, "symlink matched by a glob": f"{data}/*.jsonl",
             "file:// URL": real.as_uri()}[how]
    code, error = lqs_score(caplog, given, "--scorer", scorer_dir, "--out", real, "--overwrite")
    assert code == 1 and "--out" in error and "INPUT" in error
    assert real.read_bytes() == before


def test_a_format_that_contradicts_the_out_extension_is_refused(scorer_dir, tmp_path, caplog, no_scoring):
    src = _input(tmp_path)
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--format", "parquet", "--out", tmp_path / "x.jsonl")
    assert code == 1 and "--format parquet" in error and "x.jsonl" in error
    assert not (tmp_path / "x.jsonl").exists()


def test_rejects_to_standard_output_is_refused(scorer_dir, tmp_path, caplog, no_scoring, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").write_text("keep")
    code, error = lqs_score(caplog, _input(tmp_path), "--scorer", scorer_dir, "--out", "-", "--rejects", "-")
    assert code == 1 and "--rejects -" in error
    assert (tmp_path / "-").read_text() == "keep"
