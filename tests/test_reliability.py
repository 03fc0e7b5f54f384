"""Reliability: killed jobs, untrusted files, non-finite values, empty inputs (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import (
    GOOD,
    copy_workflow,
    corpus_settings,
    edit_config,
    set_key,
    settings_json,
    snakemake,
    stage_function,
    tiny_corpus,
    write_plan,
)
from transformers import MistralConfig, MistralForCausalLM

from lqs import corpus
from lqs.proxy import load_proxy
from lqs.runtime import NonFiniteError
from lqs.stages import gather_scores as gather_scores_stage
from lqs.stages import grad_stats as grad_stats_stage
from lqs.stages import train_scorer as train_scorer_stage

grad_stats = stage_function(grad_stats_stage)
train_scorer = stage_function(train_scorer_stage)

# gather takes 0.2 s on the tiny workflow, too short to hit there: it has its own test below.
LONG_STAGES = ["trajectory", "grad-stats", "train-scorer", "score-shard"]


def _ours(pid: str, workdir: Path) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(workdir)
    except OSError:
        return False


def _temporaries(workdir: Path) -> set[Path]:
    """Outputs being written: their temporary siblings (.name.*.tmp), and those a kill left."""
    return {p for p in workdir.rglob(".*.tmp")}


def _kill_when_started(stage: str, workdir: Path, delay: float, killed: list, stop: threading.Event) -> None:
    """SIGKILLs this test's `lqs <stage>` processes once one writes an output, or `delay`
    seconds after one appears, whichever is first."""
    while not stop.is_set():
        found = subprocess.run(["pgrep", "-f", f"lqs {stage} "], capture_output=True, text=True).stdout.split()
        found = [pid for pid in found if _ours(pid, workdir)]
        if found:
            deadline, before = time.monotonic() + delay, _temporaries(workdir)
            while time.monotonic() < deadline and not _temporaries(workdir) - before:
                time.sleep(0.01)
            for pid in found:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(stage)
                except ProcessLookupError:
                    pass
            return
        time.sleep(0.02)


@pytest.mark.workflow
def test_killed_stages_rerun_to_the_uninterrupted_result(completed_workflow, tmp_path):
    """Each long stage is SIGKILLed at a random point; reruns finish the workflow, and the
    labels and scores equal those of the uninterrupted run (which also proves two runs with the
    same seed agree on CPU). A copy of that run without what the long stages and those after them
    wrote: the stages before them need not run again."""
    workdir = copy_workflow(completed_workflow, tmp_path, "killed")
    for written in ("annotation", "scorer", "scores", "selection"):
        shutil.rmtree(workdir / "results" / written)
    for written in ("scored.jsonl", "rejects.jsonl", "selected.jsonl", "results/summary.json"):
        (workdir / written).unlink()
    rng = random.Random(1)
    killed: list[str] = []
    interrupted = []
    for stage in LONG_STAGES:
        stop = threading.Event()
        killer = threading.Thread(target=_kill_when_started, args=(stage, workdir, rng.uniform(0.3, 1.5), killed, stop))
        killer.start()
        # The real `lqs` for the stage killed: without its seconds of imports, a tiny job ends
        # before the kill lands. The jobs before it are served.
        run = snakemake(workdir, "--rerun-incomplete", check=False, real_lqs=[stage])
        stop.set()
        killer.join()
        if run.returncode != 0:  # a kill that lands after the job ended interrupts nothing
            interrupted.append(stage)
        # Whatever a killed job left, no declared output may be a partial file: every parquet
        # that exists reads back, and the final output exists only complete.
        for path in (workdir / "results").rglob("*.parquet"):
            pd.read_parquet(path)
        assert not (workdir / "scored.jsonl").exists() or run.returncode == 0
    assert interrupted == LONG_STAGES, (killed, interrupted)
    snakemake(workdir, "--rerun-incomplete")

    expected = completed_workflow / "results" / "annotation" / "labels.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(workdir / "results/annotation/labels.parquet"),
                                  pd.read_parquet(expected))
    assert (workdir / "scored.jsonl").read_bytes() == (completed_workflow / "scored.jsonl").read_bytes()


def test_killed_gather_leaves_no_output_and_reruns_identically(tmp_path):
    """gather over 60k documents, SIGKILLed at a random point while writing scored.jsonl."""
    n = 60_000
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text("".join(f'{{"id": {i}, "text": "document {i}", "n": 1.50}}\n' for i in range(n)))
    plan_path, plan = write_plan(tmp_path, [corpus_path], 2)
    assert len(plan.shards) == 2
    for k, shard in enumerate(plan.shards):  # the shards' score files, ids local to the shard
        records = list(corpus.iter_records(shard.splits))
        ids = np.array([r.doc_id for r in records], np.int64)
        pd.DataFrame({"doc_id": ids, "score": np.arange(len(ids)) / n, "truncated": False, "n_tokens": 3,
                      "n_windows": 1, "fingerprint": np.array([r.fingerprint for r in records], np.int64),
                      "source": None}).to_parquet(tmp_path / f"s{k}.parquet")
        (tmp_path / f"r{k}.jsonl").write_text("")
    settings = settings_json(gather_scores_stage.Settings, {
        "text_field": "text", "max_chars": 1000, "score_field": "score", "on_bad_record": "error",
        "output_format": "jsonl", "extra_fields": [], "layout": "single", "config_sha256": None,
        "corpus_versions": {}} | corpus_settings(plan))

    def gather(out: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "lqs", "gather-scores", "--plan", plan_path, "--score-paths", "s0.parquet",
             "s1.parquet", "--reject-paths", "r0.jsonl", "r1.jsonl", "--out", out, "--rejects-out", f"{out}.rejects",
             "--summary-out", f"{out}.summary", "--index-out", f"{out}.index", "--benchmarks-dir", ".",
             "--settings", settings],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    assert gather("expected.jsonl").wait() == 0
    process = gather("scored.jsonl")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".scored.jsonl.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "gather finished before it could be killed"
    assert list(tmp_path.glob(".scored.jsonl.*.tmp")), "no partial file: the kill missed the write"
    assert not (tmp_path / "scored.jsonl").exists()  # the partial file is never taken for the output
    assert not (tmp_path / "scored.jsonl.summary").exists()
    assert gather("scored.jsonl").wait() == 0
    assert (tmp_path / "scored.jsonl").read_bytes() == (tmp_path / "expected.jsonl").read_bytes()
    assert (tmp_path / "scored.jsonl.index").read_bytes() == (tmp_path / "expected.jsonl.index").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # the rerun removed what the killed job left


def _tiny_model_dir(path: Path) -> Path:
    config = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1)
    MistralForCausalLM(config).save_pretrained(path)
    return path


class _Planted:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp") / f"lqs-pickle-ran-{os.getpid()}"


@pytest.mark.parametrize("loader", ["proxy", "scorer"])
def test_planted_pickle_is_refused_not_executed(tmp_path, loader):
    model_dir = _tiny_model_dir(tmp_path / "model")
    (model_dir / "model.safetensors").unlink()
    with open(model_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Planted(), f)
    MARKER.unlink(missing_ok=True)
    with pytest.raises(OSError, match="safetensors"):
        if loader == "proxy":
            load_proxy(str(model_dir))
        else:
            from lqs.scorer import load_backbone

            load_backbone(str(model_dir))
    assert not MARKER.exists(), "the planted pickle was executed"


def test_remote_code_is_not_run_by_default(tmp_path):
    model_dir = _tiny_model_dir(tmp_path / "model")
    marker = tmp_path / "remote-code-ran"
    (model_dir / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                         "from transformers import MistralConfig as CustomConfig\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig"}
    (model_dir / "config.json").write_text(json.dumps(config))
    try:
        load_proxy(str(model_dir))
    except (ValueError, OSError):
        pass  # refusing is fine; running the file is not
    assert not marker.exists()


def test_schema_keeps_trust_remote_code_off_by_default():
    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "lqs/schema.yaml").read_text())
    assert schema["properties"]["models"]["properties"]["trust_remote_code"]["default"] is False


def test_non_finite_per_sample_gradient_names_step_and_sample(tmp_path):
    from safetensors.torch import save_file

    model_dir = _tiny_model_dir(tmp_path / "model")
    model = load_proxy(str(model_dir))
    tensors = {f"theta.{n}": p.detach().clone() for n, p in model.named_parameters()}
    tensors |= {f"lambda.{n}": torch.full_like(p, float("nan")) for n, p in model.named_parameters()}
    save_file(tensors, str(tmp_path / "step-3.safetensors"))
    pd.DataFrame({"sample_id": np.array([7, 8], np.int64), "input_ids": [[1, 2, 3], [4, 5]]}).to_parquet(
        tmp_path / "samples.parquet")
    with pytest.raises(NonFiniteError, match=r"step 3, sample_id 7"):
        grad_stats(str(tmp_path / "samples.parquet"), str(tmp_path / "step-3.safetensors"), str(model_dir),
                   str(tmp_path / "out.parquet"), step=3, part=0, num_parts=1, micro_batch=8, device="cpu")
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.workflow
def test_bad_records_are_counted_through_the_workflow(tiny_workflow):
    """Every kind of bad record in one corpus, with on_bad_record: skip, goes to the rejects with
    its reason; with the accepted documents it accounts for every record read. An empty file
    contributes no record; a huge integer is valid JSON."""
    import gzip

    import yaml

    good = tiny_corpus(12)
    lines = [json.dumps(r) for r in good[:6]] + [
        "{not json", "[1, 2]", json.dumps({"txt": "x"}), json.dumps({"text": 5}), json.dumps({"text": "  "}),
        json.dumps({"text": "long " * 3000}),  # far over one window: several windows, still scored
        json.dumps({"text": "y" * 50_000}),  # over corpus.max_chars: rejected
        '{"text": "a lone \\ud800 surrogate"}',  # rejected
        '{"text": "a huge integer", "n": ' + "7" * 5000 + "}",  # accepted
    ] + [json.dumps(r) for r in good[6:]]
    data = tiny_workflow / "data"
    (data / "corpus.jsonl").write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "\xff\xfe"}\n')
    (data / "empty.jsonl").write_text("")
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in good).encode())
    (data / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    config = yaml.safe_load((tiny_workflow / "config/config.yaml").read_text())
    config["corpus"] |= {"path": ["data/corpus.jsonl", "data/empty.jsonl", "data/cut.jsonl.gz"], "num_shards": 2,
                         "on_bad_record": "skip", "max_chars": 20_000}
    (tiny_workflow / "config/config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/corpus/{kind}-{s}.{ext}" for s in (0, 1) for kind, ext in
               (("shard", "parquet"), ("rejects", "jsonl"))]
    snakemake(tiny_workflow, *targets)
    rejects = [json.loads(line) for s in (0, 1)
               for line in (tiny_workflow / f"results/corpus/rejects-{s}.jsonl").read_text().splitlines()]
    reasons = " | ".join(r["reason"] for r in rejects)
    for reason in ("invalid JSON", "not a JSON object", "missing text field", "not a string", "empty text",
                   "longer than corpus.max_chars", "invalid UTF-8", "lone UTF-16 surrogate", "truncated gzip"):
        assert reason in reasons, reason
    assert len(rejects) == 9 and not any(r["file"].endswith("empty.jsonl") for r in rejects)
    accepted = pd.concat([pd.read_parquet(tiny_workflow / f"results/corpus/shard-{s}.parquet") for s in (0, 1)])
    read = len(list(corpus.iter_records([str(data / "corpus.jsonl"), str(data / "empty.jsonl"),
                                         str(data / "cut.jsonl.gz")])))
    assert accepted["doc_id"].nunique() + len(rejects) == read  # nothing lost, nothing twice
    long_doc = accepted.groupby("doc_id")["window"].count().max()
    assert long_doc > 1  # the document far over the window limit is split, not dropped


@pytest.mark.workflow
def test_config_errors_name_the_key(tiny_workflow):
    import yaml

    config_path = tiny_workflow / "config/config.yaml"
    config = yaml.safe_load(config_path.read_text())
    for edit, key in [(lambda c: c["annotation"].update(lr="fast"), "lr"),
                      (lambda c: c["scorer"].update(learning_rate=0.1), "learning_rate")]:
        broken = json.loads(json.dumps(config))
        edit(broken)
        config_path.write_text(yaml.safe_dump(broken))
        run = snakemake(tiny_workflow, "-n", cores=None, check=False)
        assert run.returncode != 0
        assert key in run.stdout + run.stderr


@pytest.mark.workflow
def test_proxy_set_larger_than_corpus_fails_before_annotation(completed_workflow, tmp_path):
    workdir = copy_workflow(completed_workflow, tmp_path)  # tokenized: only sample_proxy reruns
    edit_config(workdir, set_key("proxy", "size", 100_000))
    labels = workdir / "results/annotation/labels.parquet"
    annotated = labels.stat().st_mtime_ns
    run = snakemake(workdir, "results/proxy/samples.parquet", check=False)
    assert run.returncode != 0
    log = (workdir / "results/logs/sample_proxy.log").read_text()
    assert "cannot draw 100000 proxy samples" in log
    assert labels.stat().st_mtime_ns == annotated


@pytest.mark.workflow
def test_empty_target_set_is_a_clear_error(completed_workflow, tmp_path):
    workdir = copy_workflow(completed_workflow, tmp_path)  # its tokenizer trained: only prepare_target reruns
    (workdir / "data/target.jsonl").write_text("\n")
    run = snakemake(workdir, "results/target/tokens.parquet", check=False)
    assert run.returncode != 0
    assert "the target set is empty" in (workdir / "results/logs/prepare_target.log").read_text()


def test_good_target_lines(tiny_workflow):
    """The fixture's target set is fine: guards the negative test above against a broken fixture."""
    lines = (tiny_workflow / "data/target.jsonl").read_text().splitlines()
    assert [json.loads(line)["conversations"][1] for line in lines][:len(GOOD)] == GOOD


@pytest.mark.workflow
def test_non_finite_scorer_training_names_epoch_step_and_sample(completed_workflow, tmp_path):
    results = completed_workflow / "results"
    labels = pd.read_parquet(results / "annotation/labels.parquet")
    victim = int(labels.loc[labels["split"] == "train", "sample_id"].iloc[3])
    labels.loc[labels["sample_id"] == victim, "score"] = float("nan")
    labels.to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(NonFiniteError, match=rf"epoch 0, step \d+; non-finite label for sample_id {victim}"):
        train_scorer(str(results / "proxy/samples.parquet"), str(tmp_path / "labels.parquet"),
                     str(results / "models/scorer_base"), str(tmp_path / "scorer"), lr=1e-3, epochs=1,
                     batch_size=8, warmup_steps=0, weight_decay=0.0, clip=1.0, max_length=32, seed=0, device="cpu")
    assert not (tmp_path / "scorer").exists()
