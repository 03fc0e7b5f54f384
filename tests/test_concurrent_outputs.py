"""No run replaces another's output, removes another's live temporary or ignores a write that did
not complete (issue 29, defects 2 and 3): `lqs score` without --overwrite moves its finished file
onto --out only if nothing is there (a hard link, never a replace); a writer holds a lock on its
temporary, which another writer's clean-up leaves alone; standard output is written through a
buffered writer of its own, so a short write or a closed pipe is an error with or without
PYTHONUNBUFFERED=1; Ctrl-C ends `lqs score` with one line and status 130."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import score_error as lqs_score
from helpers import tiny_corpus, tiny_scorer, write_jsonl

import lqs.score
from lqs import io


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory) -> Path:
    return tiny_scorer(tmp_path_factory.mktemp("scorer"))


def _input(tmp_path: Path, n: int = 6) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", tiny_corpus(n))


def test_a_live_temporary_is_left_to_its_writer_and_a_dead_ones_removed(tmp_path):
    out = tmp_path / "scored.jsonl"
    dead = tmp_path / ".scored.jsonl.k3j_x9q2.tmp"  # a killed writer's: no lock holds it
    dead.write_text("half")
    with io.atomic_open(out) as first:  # a writer still writing
        first.write("first\n")
        live = next(p for p in tmp_path.glob(".scored.jsonl.*.tmp") if p != dead)
        assert not dead.exists()
        io.remove_stale_temporaries(out)  # a second writer of the same output starts
        assert live.exists()
        with io.atomic_open(out) as second:
            second.write("second\n")
        assert live.exists() and out.read_text() == "second\n"
    assert out.read_text() == "first\n" and not list(tmp_path.glob(".*.tmp"))


def test_a_live_temporary_directory_is_left_to_its_writer(tmp_path):
    model = tmp_path / "scorer"
    with io.atomic_dir(model) as tmp:
        (tmp / "config.json").write_text("{}")
        io.remove_stale_temporaries(model)
        assert (tmp / "config.json").exists()
    assert (model / "config.json").exists()


def test_no_replace_rename_keeps_what_another_writer_finished(tmp_path):
    out = tmp_path / "scored.jsonl"
    with pytest.raises(FileExistsError, match=f"{out} was written by another run while this one ran"):
        with io.atomic_open(out, replace=False) as f:
            f.write("mine\n")
            out.write_text("theirs\n")
    assert out.read_text() == "theirs\n" and not list(tmp_path.glob(".*.tmp"))


def test_two_score_runs_to_one_out_the_second_to_finish_fails_and_leaves_the_first(scorer_dir, tmp_path, caplog):
    src, out = _input(tmp_path), tmp_path / "s.jsonl"
    # run B starts first (its temporary live beside --out) and finishes last; run A in between
    with pytest.raises(FileExistsError, match="another run"):
        with io.atomic_open(out, replace=False) as b:
            b.write("run B\n")
            b_temporary = Path(b.name)
            assert lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out) == (0, "")
            assert b_temporary.exists()  # A's clean-up of stale temporaries left B's alone
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [d["id"] for d in tiny_corpus(6)]


def test_lqs_score_that_finishes_second_fails_with_one_line(scorer_dir, tmp_path, caplog, monkeypatch):
    src, out = _input(tmp_path), tmp_path / "s.jsonl"
    real = lqs.score.scored_chunks

    def another_run_finishes_meanwhile(*args, **kwargs):
        yield from real(*args, **kwargs)
        out.write_text("the other run's\n")

    monkeypatch.setattr(lqs.score, "scored_chunks", another_run_finishes_meanwhile)
    code, error = lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out)
    assert code == 1 and error.startswith(f"score failed: {out} was written by another run while this one ran")
    assert out.read_text() == "the other run's\n" and not list(tmp_path.glob(".*.tmp"))
    # and with --overwrite it is replaced, as asked
    monkeypatch.setattr(lqs.score, "scored_chunks", real)
    assert lqs_score(caplog, src, "--scorer", scorer_dir, "--out", out, "--overwrite") == (0, "")
    assert len(out.read_text().splitlines()) == 6


def _lqs(*args: str) -> list[str]:
    return [sys.executable, "-c", "from lqs.cli import main; main()", *args]


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED=1"])
def test_score_to_a_pipe_closed_early_fails(scorer_dir, tmp_path, unbuffered):
    """`lqs score big.jsonl --out - | head -1`: the output is cut short, so lqs exits non-zero."""
    # far more output than a pipe holds (64 KB), from few documents to score: records with a long field
    src = write_jsonl(tmp_path / "big.jsonl", [d | {"pad": "x" * 2000} for d in tiny_corpus(400)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    command = shlex.join(_lqs("score", str(src), "--scorer", str(scorer_dir), "--out", "-", "--no-progress"))
    script = f"{command} 2>{shlex.quote(str(tmp_path / 'err'))}; echo $? > {shlex.quote(str(tmp_path / 'status'))}"
    result = subprocess.run(["bash", "-c", f"({script}) | head -1"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert json.loads(result.stdout)["id"] == "doc-0"
    status = int((tmp_path / "status").read_text())
    errors = [line for line in (tmp_path / "err").read_text().splitlines() if "ERROR" in line or "Traceback" in line
              or "Exception" in line]
    assert status == 1, (tmp_path / "err").read_text()
    assert len(errors) == 1 and "standard output was closed before all of the output was written" in errors[0]


def test_ctrl_c_on_score_is_one_line_and_status_130(scorer_dir, tmp_path):
    src, out = write_jsonl(tmp_path / "big.jsonl", tiny_corpus(20000)), tmp_path / "s.jsonl"
    process = subprocess.Popen(_lqs("score", str(src), "--scorer", str(scorer_dir), "--out", str(out)),
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".s.jsonl.*.tmp")):  # scoring has begun
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "score interrupted (Ctrl-C)" in stderr and not out.exists() and not list(tmp_path.glob(".*.tmp"))
