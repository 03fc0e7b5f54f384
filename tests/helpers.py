"""Test helpers shared by the test modules: a tiny corpus, config and workflow, the Snakemake
runner, and the parsing of `snakemake -n` plans. Fixtures live in conftest.py."""

from __future__ import annotations

import collections
import importlib.util
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import job_server
import yaml

ROOT = Path(__file__).resolve().parents[1]

GOOD = [
    "The function returns a new list sorted in ascending order.",
    "Open the file, read each line and close the file when done.",
    "A dictionary maps keys to values; keys must be hashable.",
    "Use a context manager to make sure resources are released.",
    "The parser reads the configuration and reports the first error.",
    "Iterators produce values lazily, one at a time, until exhausted.",
]


def benchmark(name: str):
    """The module benchmarks/<name>.py (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def tiny_corpus(n: int = 120, seed: int = 0) -> list[dict]:
    """Documents from three sources, some long enough to need several windows."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        kind = ("good", "noise", "repeat")[i % 3]
        if kind == "good":
            text = " ".join(rng.choice(GOOD) for _ in range(rng.randint(1, 12)))
        elif kind == "noise":
            text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,;") for _ in range(rng.randint(20, 300)))
        else:
            text = "Buy now! Best deals. " * rng.randint(1, 15)
        docs.append({"id": f"doc-{i}", "text": text, "source": kind, "extra": {"n": i}})
    return docs


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def tiny_config(corpus_path: str | list[str], target_path: str) -> dict:
    arch = dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                tie_word_embeddings=False)
    return {
        "device": "cpu",
        "corpus": {"path": corpus_path, "num_shards": 1, "max_length": 32},
        "target": {"source": target_path, "max_length": 32},
        "models": {
            "tokenizer": {"vocab_size": 320},
            "proxy": {"arch": arch},
            "pretrain": {"steps": 10, "batch_size": 8, "lr": 0.003},
            "scorer": {"arch": dict(model_type="xglm", d_model=32, ffn_dim=64, num_layers=1,
                                    attention_heads=2, max_position_embeddings=64)},
        },
        "proxy": {"size": 48, "num_parts": 1},
        "annotation": {"lr": 0.05, "steps": 4, "interval": 4, "batch_size": 4},
        "scorer": {"lr": 0.001, "epochs": 2, "batch_size": 8, "warmup_steps": 2, "max_length": 32,
                   "valid_size": 0.25},
    }


def tiny_scorer(root: Path) -> Path:
    """A tiny scorer checkpoint as train_scorer writes it (an XGLM backbone and its tokenizer),
    made in about a second: root/scorer."""
    import torch
    from transformers import AutoTokenizer, XGLMConfig, XGLMModel

    from lqs.scorer import ScorerModel, save_scorer

    corpus = write_jsonl(root / "corpus.jsonl", tiny_corpus(60))
    train_tokenizer([corpus], root / "tokenizer", text_field="text", vocab_size=300, max_chars=10**6)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    torch.manual_seed(5)
    backbone = XGLMModel(XGLMConfig(vocab_size=len(tokenizer), d_model=32, ffn_dim=64, num_layers=1,
                                    attention_heads=2, max_position_embeddings=64,
                                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id))
    save_scorer(ScorerModel(backbone).eval(), tokenizer, root / "scorer", {"max_length": 32})
    return root / "scorer"


def make_workflow(workdir: Path, config: dict) -> Path:
    """Copies the workflow into `workdir` with `config` as its config/config.yaml."""
    for name in ("Snakefile", "rules", "envs", "config", "report"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


# Every Snakemake the tests start goes through snakemake() below. It runs in a process forked from
# a server that has imported Snakemake once (multiprocessing's forkserver): a dry run then costs
# about a third of a fresh `python -m snakemake`. The server imports nothing that reads the
# environment at import time; a run given its own environment still starts a fresh interpreter, as
# the package's libraries read some variables at import (HF_HOME, a sitecustomize on PYTHONPATH).
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["snakemake.cli", "snakemake.report", "snakemake_executor_plugin_slurm",
                                    "jsonschema", "smart_open"])
# Set by conftest.py for the running test: the fast tier (-m "not workflow ...") never starts Snakemake.
marked_workflow = True


def _snakemake_main(workdir: str, argv: list[str], env: dict, fresh: bool, nice: int, stdout: str,
                    stderr: str) -> None:
    """The forked process: Snakemake as `python -m snakemake *argv` in `workdir` would run it."""
    os.chdir(workdir)
    os.setpriority(os.PRIO_PROCESS, 0, nice)  # a subprocess would inherit the caller's niceness
    for fd, path in ((1, stdout), (2, stderr)):
        with open(path, "wb") as f:
            os.dup2(f.fileno(), fd)
    if fresh:
        os.execve(sys.executable, [sys.executable, "-m", "snakemake", *argv], env)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["snakemake", *argv]
    from snakemake.cli import main

    main(argv)


def snakemake(workdir: Path, *args: str, check: bool = True, cores: int | None = 2, env: dict | None = None,
              timeout: float = 600, real_lqs: bool | Sequence[str] = False) -> subprocess.CompletedProcess:
    """`snakemake --cores 2 *args` in `workdir` (cores=None: no --cores, the profiles decide), in
    this environment or in `env`. Fails the test if Snakemake fails (unless check=False) or runs
    over `timeout` seconds (then it is terminated: SIGTERM, as Ctrl-C, cancels its SLURM jobs).
    The jobs' `lqs` is the job server's stand-in (tests/job_server.py); real_lqs: the console
    script itself, for every job (True) or for the jobs of these commands ("score-shard")."""
    if not marked_workflow:
        raise AssertionError("this test starts Snakemake: mark it @pytest.mark.workflow")
    argv = [*(["--cores", str(cores)] if cores else []), *map(str, args)]
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out, err):  # there to read even if the process fails before it writes them
            Path(path).touch()
        run_env = dict(os.environ if env is None else env)
        if real_lqs is not True:
            run_env = job_server.environment(run_env) | ({job_server.REAL_VARIABLE: ",".join(real_lqs)}
                                                         if real_lqs else {})
        process = _FORKSERVER.Process(target=_snakemake_main, args=(
            str(workdir), argv, run_env, env is not None,
            os.getpriority(os.PRIO_PROCESS, 0), out, err))
        process.start()
        try:
            process.join(timeout)
            timed_out = process.exitcode is None
        finally:
            for stop in (process.terminate, process.kill):  # timed out, or the test was interrupted
                if process.exitcode is None:
                    stop()
                    process.join(30)
        stdout, stderr = (Path(path).read_text(errors="replace") for path in (out, err))
        result = subprocess.CompletedProcess(["snakemake", *argv], process.exitcode, stdout, stderr)
    if timed_out or (check and result.returncode != 0):
        why = f"ran over {timeout} s" if timed_out else "failed"
        raise AssertionError(f"snakemake {' '.join(argv)} {why}:\n{result.stdout}\n{result.stderr}")
    return result


def lqs_main(caplog, *argv) -> tuple[int, str]:
    """`lqs ARGV` run in this process (cli.main; no interpreter to start): its exit status and its
    log, which never holds a traceback (errors are one line)."""
    import logging

    from lqs import cli

    caplog.clear()
    with caplog.at_level(logging.INFO):
        try:
            cli.main([str(arg) for arg in argv])
            code = 0
        except SystemExit as e:
            code = e.code
    assert not any(record.exc_info for record in caplog.records), caplog.text
    return code, caplog.text


def score_error(caplog, *args) -> tuple[int, str]:
    """`lqs score ARGS` run in this process: its exit status and its one error line ("" if none);
    an error is a single line, never a traceback."""
    import logging

    code, _ = lqs_main(caplog, "score", *args, "--no-progress")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) <= 1 and all("\n" not in e and "Traceback" not in e for e in errors)
    return code, errors[0] if errors else ""


# Rerun reasons that a config edit or a corpus edit must never produce on a copied workflow.
UNEXPECTED_REASONS = ("Code has changed", "Software environment", "Set of input files has changed",
                      "Missing output files", "Incomplete output files")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def copy_workflow(src: Path, tmp_path: Path, name: str = "wf") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    assert (dst / ".snakemake" / "metadata").is_dir()
    return dst


def edit_config(workdir: Path, edit) -> None:
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def set_key(*keys_and_value):
    *keys, value = keys_and_value

    def edit(config):
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return edit


JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def parse_plan(text: str) -> tuple[list[dict], collections.Counter]:
    """The jobs of a `snakemake -n` listing (rule, wildcards, reason) and its first Job stats table."""
    jobs, current = [], None
    for line in text.splitlines():
        match = JOB_HEADER.match(line.rstrip())
        if match:
            current = {"rule": match.group(1), "wildcards": {}, "reason": ""}
            jobs.append(current)
            continue
        if not line.startswith((" ", "\t")):
            current = None  # a job's details are indented under its header
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("wildcards:"):
            pairs = stripped[len("wildcards:"):].strip().split(", ")
            current["wildcards"] = dict(p.split("=", 1) for p in pairs)
        elif stripped.startswith("reason:"):
            current["reason"] = stripped[len("reason:"):].strip()

    stats: collections.Counter = collections.Counter()
    lines = text.splitlines()
    if "Job stats:" in lines:
        i = lines.index("Job stats:") + 3  # title, header, dashes
        while i < len(lines) and lines[i].split() and lines[i].split()[0] != "total":
            rule, count = lines[i].split()
            stats[rule] = int(count)
            i += 1
    return jobs, stats


def plan(workdir: Path, *targets: str) -> list[dict]:
    """The jobs `snakemake -n` plans; checks the listing agrees with its Job stats table."""
    result = snakemake(workdir, "-n", *targets)
    text = result.stdout + "\n" + result.stderr
    jobs, stats = parse_plan(text)
    assert collections.Counter(j["rule"] for j in jobs) == stats, text
    if not jobs:
        assert "Nothing to be done" in text, text
    for job in jobs:
        for unexpected in UNEXPECTED_REASONS:
            assert unexpected not in job["reason"], (job, text)
    return jobs


def rule_counts(jobs: list[dict]) -> dict[str, int]:
    return dict(collections.Counter(j["rule"] for j in jobs))


# What the tests' calls of a stage function leave out of its Settings (their config's values,
# close to the schema's defaults); a setting that is not here must be given by the test.
TEST_SETTINGS = {
    "text_field": "text", "max_chars": 10_000_000, "on_bad_record": "error",
    "score_field": "score", "extra_fields": (),
    "hvp_micro_batch": None, "tf32": False, "stats_dtype": "fp32", "trust_remote_code": False,
    "split": "train", "revision": None, "max_samples": None, "eval_fraction": 0.0, "seed": 0,
    "output_format": "jsonl", "layout": "single", "chunk_docs": 4096, "dtype": "auto", "device": "auto",
    "tokenizer_workers": None, "config_sha256": None, "corpus_versions": {}, "compile": False,
    "max_windows_per_doc": None,
}


def _groups(settings: type) -> dict[str, type]:
    """A Settings' groups of settings: field name -> the dataclass it holds (lqs.corpus.CorpusReading)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(settings) if dataclasses.is_dataclass(hints[f.name])}


def setting_names(settings: type) -> dict[str, bool]:
    """A stage's settings as the tests give them, flat (a group's fields in its place) -> whether
    the stage needs it (a field without a default, in a group without one)."""
    import dataclasses

    groups, names = _groups(settings), {}
    for f in dataclasses.fields(settings):
        required = f.default is dataclasses.MISSING
        for g in dataclasses.fields(groups[f.name]) if f.name in groups else [f]:
            names[g.name] = required and g.default is dataclasses.MISSING
    return names


def grouped(settings: type, given: dict) -> dict:
    """Flat settings as `settings` takes them: each group (lqs.corpus.CorpusReading) built from its fields."""
    import dataclasses

    out = dict(given)
    for name, group in _groups(settings).items():
        out[name] = group(**{f.name: out.pop(f.name) for f in dataclasses.fields(group)})
    return out


def settings_json(settings: type, given: dict) -> str:
    """Flat settings as the --settings JSON of a stage whose Settings is `settings`."""
    import dataclasses

    return json.dumps(grouped(settings, given), default=dataclasses.asdict)


def stage_function(module):
    """A stage's entry function as the tests call it: its settings as keyword arguments, flat
    (those left out from TEST_SETTINGS), built into the stage's Settings."""
    stage = module.STAGE
    names = setting_names(stage.settings)

    def call(*args, **kwargs):
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        missing = {name for name in names.keys() - given.keys()
                   if name not in TEST_SETTINGS and names[name]}
        assert not missing, f"{stage.run.__name__}: give the settings {sorted(missing)} (shard_settings(plan, key))"
        given |= {name: TEST_SETTINGS[name] for name in names.keys() - given.keys()
                  if name in TEST_SETTINGS}
        return stage.run(*args, settings=stage.settings(**grouped(stage.settings, given)), **kwargs)

    call.__name__ = stage.run.__name__
    return call


def write_plan(directory, paths, num_shards: int | str = 1, shard_size: int | None = None):
    """The corpus plan of `paths` (in order) as the workflow plans it (lqs.splits.plan_shards, the
    files' sizes read here), written under `directory`/plans: (the plan file's path, the plan)."""
    from lqs import sources, splits

    paths = [str(p) for p in paths]
    sizes = [sources.file_size(p) for p in paths]
    shards = splits.plan_shards(paths, sizes, num_shards, shard_size)
    plan = splits.CorpusPlan(tuple(paths), {}, tuple(shards))
    return plan.write(str(Path(directory) / "plans")), plan


def shard_settings(plan, key: str = "0") -> dict:
    """The settings a stage reading shard `key` of `plan` needs: the digest of its splits."""
    from lqs import splits

    return {"splits_sha256": splits.splits_sha256(plan.shard(str(key)).splits)}


def corpus_settings(plan) -> dict:
    """The settings a stage reading the whole corpus of `plan` needs: the digest of every shard's splits."""
    from lqs import splits

    return {"splits_sha256": splits.splits_sha256(x for shard in plan.shards for x in shard.splits)}


def train_tokenizer(paths, out_dir, **settings):
    """Stage train_tokenizer on the corpus `paths` (one shard; its plan beside `out_dir`)."""
    from lqs.stages import train_tokenizer as train_tokenizer_stage

    plan_path, plan = write_plan(Path(out_dir).parent / f"{Path(out_dir).name}_plan", paths)
    return stage_function(train_tokenizer_stage)(plan_path, str(out_dir), **(corpus_settings(plan) | settings))


def tokenize_and_score_shard(plan_path, plan, shard, tokenized_shard, scorer_dir, out, stats_out=None, **settings):
    """Stages tokenize_scorer_shard then score_shard on shard `shard` of the corpus plan `plan`
    (written at `plan_path`), as the workflow runs them (the windows in scorer_windows/ beside
    `out`): `settings` are either stage's; returns score_shard's counts."""
    from lqs.stages import score_shard, tokenize_scorer_shard

    windows = Path(out).parent / "scorer_windows" / Path(out).name
    windows.parent.mkdir(exist_ok=True)
    tokenize_names, score_names = setting_names(tokenize_scorer_shard.Settings), setting_names(score_shard.Settings)
    unknown = set(settings) - tokenize_names.keys() - score_names.keys()
    assert not unknown, f"settings of neither stage: {unknown}"
    shard = str(shard)
    settings = shard_settings(plan, shard) | settings
    stage_function(tokenize_scorer_shard)(
        str(plan_path), shard, str(tokenized_shard), str(scorer_dir), str(windows),
        **({"max_length": None} | {k: v for k, v in settings.items() if k in tokenize_names}))
    return stage_function(score_shard)(
        str(windows), str(scorer_dir), str(out), shard=shard, stats_out=stats_out,
        **{k: v for k, v in settings.items() if k in score_names})


def write_part(plan_path, plan, shard, scores, rejects, out, **settings):
    """Stage write_part on shard `shard` of the corpus plan `plan` (written at `plan_path`), as the
    workflow runs it: its documents, rejects and counts beside `out`'s directory, in parts/
    (index-{shard}.parquet, rejects-{shard}.jsonl, stats-{shard}.json); returns its counts."""
    from lqs.stages import write_part as write_part_stage

    beside = Path(out).parent.parent / "parts"
    beside.mkdir(exist_ok=True)
    shard = str(shard)
    return stage_function(write_part_stage)(
        str(plan_path), shard, str(scores), str(rejects), str(out), str(beside / f"index-{shard}.parquet"),
        str(beside / f"rejects-{shard}.jsonl"), str(beside / f"stats-{shard}.json"),
        **(shard_settings(plan, shard) | settings))
