"""Shared fixtures: a tiny LQS workflow in a temporary directory, runnable in about a minute."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sys
from pathlib import Path

# Bytecode caches (under __pycache__/, ignored by git) even where PYTHONDONTWRITEBYTECODE is set: the
# run's few hundred Python processes (lqs commands, Snakemake jobs, the other test process) read the
# caches that the test processes write, pytest's rewritten test modules among them, instead of each
# compiling the same sources again (measured: the fast tier 83 s -> 70 s).
sys.dont_write_bytecode = False
# Inductor (the compiled tests) trusts the vector instructions /proc/cpuinfo lists instead of
# probing each with a C++ build of its own: 8 s of a fresh clone's fast tier, where no inductor
# cache exists yet (where every listed set builds, as here, it picks the same one).
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
# One intra-op thread in every test process and every process it starts (set before torch is
# imported): the tests' models are tiny, and two xdist workers each running two OpenMP threads,
# which spin between parallel regions, fight over two cores (the fast tier: 47-51 s -> 40-42 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import helpers  # noqa: E402 (imported with the caches written)
import pytest  # noqa: E402
from helpers import GOOD, make_workflow, snakemake, tiny_config, tiny_corpus, train_tokenizer, write_jsonl  # noqa: E402


def pytest_configure(config):
    """A run started in the background of a non-interactive shell (`pytest &`) inherits SIGINT
    ignored, and one under nohup SIGHUP, as would every process a test starts; the tests that
    send those signals to one (Ctrl-C, a closed terminal) need their defaults."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures (completed_workflow runs the workflow): the runner refuses to
    start Snakemake in a test not marked workflow, so that the fast tier never starts it."""
    helpers.marked_workflow = item.get_closest_marker("workflow") is not None


# The files of fast tests that take longest (measured: ~32 s, ~30 s, ~18 s, ~8 s), handed out before the others.
LONGEST_FAST_FILES = ("test_concurrent_outputs.py", "test_output.py", "test_reliability.py", "test_compiled.py")


def pytest_collection_modifyitems(items):
    """Test files in the order xdist hands them out (pyproject.toml: --no-loadscope-reorder): the
    SLURM test's first, as its run mostly waits on SLURM while the other worker fills the cores;
    then the files that start Snakemake or torchrun; the files of fast tests last, the longest of
    them first, so that both workers run out of work together. The order within a file is kept."""
    rank = {}
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        own = 0 if "slurm" in marks else 1 if marks & {"workflow", "distributed"} else 2
        rank[item.path] = min(rank.get(item.path, own), own)
    longest = {name: i for i, name in enumerate(LONGEST_FAST_FILES)}
    items.sort(key=lambda item: (rank[item.path], longest.get(item.path.name, len(longest))))


@pytest.fixture
def tiny_workflow(tmp_path: Path) -> Path:
    """A tiny workflow, not yet run: corpus data/corpus.jsonl, target data/target.jsonl."""
    corpus = write_jsonl(tmp_path / "data" / "corpus.jsonl", tiny_corpus())
    target = write_jsonl(tmp_path / "data" / "target.jsonl",
                         [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
    return make_workflow(tmp_path, tiny_config(str(corpus.relative_to(tmp_path)),
                                               str(target.relative_to(tmp_path))))


@pytest.fixture(scope="session")
def completed_workflow(tmp_path_factory) -> Path:
    """A tiny workflow run to completion once per test run: under xdist, the first worker to ask
    runs it in the run's shared temporary directory (under a file lock) and the others wait for
    it. Tests must not modify it; copy it (shutil.copytree) to change anything."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # pytest-N/, above each worker's popen-gwN/
    workdir, done = root / "completed", root / "completed.done"
    with open(root / "completed.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # what a failed run left
            write_jsonl(workdir / "data" / "corpus.jsonl", tiny_corpus())
            write_jsonl(workdir / "data" / "target.jsonl",
                        [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)])
            make_workflow(workdir, tiny_config("data/corpus.jsonl", "data/target.jsonl"))
            snakemake(workdir)
            done.touch()
    return workdir


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> str:
    """A byte-level BPE tokenizer (vocab 300) trained on the tiny corpus; a module that needs
    another one defines its own `tok_dir`."""
    d = tmp_path_factory.mktemp("tok")
    path = write_jsonl(d / "train.jsonl", tiny_corpus(40))
    train_tokenizer([path], d / "tokenizer", text_field="text", vocab_size=300, max_chars=10**6)
    return str(d / "tokenizer")
