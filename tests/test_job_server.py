"""The tests' job server (tests/job_server.py), which runs the `lqs` of the workflow tests' jobs:
a job it serves sees what a process of its own would (arguments, environment, working directory,
standard streams), ends as one would (exit status, death by a signal, KeyboardInterrupt), gets the
signals sent to its stand-in, and dies with a killed stand-in.

So that no test here waits seconds on library imports, the server preloads nothing and runs a
probe (LQS_JOB_SERVER_ENTRY) instead of lqs.cli.main; each behaviour is compared with the probe
run as a process of its own. The workflow tests check the served `lqs` itself: their outputs
equal those of runs with the console script (tests/test_slurm.py's, with real_lqs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import job_server
import pytest

PROBE = '''
import os, sys
def main():
    what = sys.argv[1]
    if what == "block":  # says it is ready, then waits for standard input
        print("ready", os.getpid(), flush=True)
        sys.stdin.read()
    print("argv", sys.argv[1:], "cwd", os.getcwd(), "PROBE_VALUE", os.environ.get("PROBE_VALUE"))
    print("to stderr", file=sys.stderr)
    if what == "fail":
        raise ValueError("a failure")
    return int(sys.argv[2])
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The environment of served probe jobs, and the probe run as a process of its own."""
    root = tmp_path_factory.mktemp("probe")
    (root / "job_probe.py").write_text(PROBE)
    env = job_server.environment({**os.environ, "PYTHONPATH": str(root), job_server.ENTRY_VARIABLE: "job_probe:main",
                                  job_server.PRELOAD_VARIABLE: ""})
    base = Path(env["LQS_JOB_SERVER"]) / job_server.env_key(env)
    first = subprocess.run(["lqs", "exit", "0"], env=env, capture_output=True, text=True)  # starts the server
    assert first.returncode == 0, first.stderr
    deadline = time.monotonic() + 60
    while not Path(f"{base}.sock").exists():
        assert time.monotonic() < deadline, Path(f"{base}.log").read_text()
        time.sleep(0.02)
    alone = [sys.executable, "-c", "import sys, job_probe; sys.exit(job_probe.main())"]
    return env, alone, int(Path(f"{base}.pid").read_text())


def _children(pid: int) -> set[int]:
    return {int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()}


def test_a_served_job_sees_and_ends_as_a_process_of_its_own(probe, tmp_path):
    env, alone, server = probe
    env = {**env, "PROBE_VALUE": "set for this job"}
    for argv, code in ((["exit", "0"], 0), (["exit", "3"], 3), (["fail", "0"], 1)):
        alone_run, served = (subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
                             for command in ([*alone, *argv], ["lqs", *argv]))
        assert served.returncode == alone_run.returncode == code
        assert served.stdout == alone_run.stdout  # the same arguments, working directory and environment
        assert str(tmp_path) in served.stdout and "set for this job" in served.stdout
        first_and_last = [(r.stderr.splitlines()[0], r.stderr.splitlines()[-1]) for r in (alone_run, served)]
        assert first_and_last[1] == first_and_last[0] == (
            "to stderr", "ValueError: a failure" if code == 1 else "to stderr")


def test_a_command_named_real_runs_as_a_process_of_its_own(probe):
    env, alone, server = probe
    for real, served in (("block", False), ("exit,block", False), ("exit", True)):
        before = _children(server)
        job = subprocess.Popen(["lqs", "block", "0"], env={**env, job_server.REAL_VARIABLE: real},
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        pid = int(job.stdout.readline().split()[1])
        assert (pid in _children(server) - before) == served
        assert (pid == job.pid) == (not served)  # the stand-in became the job
        job.kill()
        job.wait()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_the_stand_in_ends_the_job_as_it_ends_a_process(probe, tmp_path, number):
    env, alone, server = probe
    codes = []
    for command in ([*alone, "block", "0"], ["lqs", "block", "0"]):
        before = _children(server)
        job = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        ready, pid = job.stdout.readline().split()
        assert ready == b"ready"
        assert (int(pid) in _children(server) - before) == (command[0] == "lqs")  # served, or its own
        job.send_signal(number)
        codes.append(job.wait(timeout=30))  # its standard input still open: only the signal ends it
        job.communicate()
    assert codes == [-number] * 2  # SIGINT: KeyboardInterrupt, then the exit by SIGINT


def test_a_killed_stand_in_takes_its_job_with_it(probe):
    env, alone, server = probe
    stand_in = subprocess.Popen(["lqs", "block", "0"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    job = int(stand_in.stdout.readline().split()[1])
    assert job in _children(server)
    stand_in.kill()
    stand_in.wait()
    deadline = time.monotonic() + 10
    while job in _children(server):
        assert time.monotonic() < deadline, f"job {job} outlived its stand-in"
        time.sleep(0.02)


def test_an_idle_server_ends_and_the_next_job_starts_another(probe, tmp_path):
    env, alone, _ = probe
    env = {**env, job_server.IDLE_VARIABLE: "0.5"}  # a server of its own, idle after half a second
    base = Path(env["LQS_JOB_SERVER"]) / job_server.env_key(env)
    servers = []
    for _ in range(2):
        assert subprocess.run(["lqs", "exit", "0"], env=env).returncode == 0  # the real one; starts a server
        deadline = time.monotonic() + 60
        while not Path(f"{base}.sock").exists():
            assert time.monotonic() < deadline, Path(f"{base}.log").read_text()
            time.sleep(0.02)
        servers.append(int(Path(f"{base}.pid").read_text()))
        assert subprocess.run(["lqs", "exit", "0"], env=env).returncode == 0  # served
        while Path(f"{base}.pid").exists():  # idle: ends, and lets the next job start another
            assert time.monotonic() < deadline, "the idle server did not end"
            time.sleep(0.05)
        assert not Path(f"{base}.sock").exists() and not Path(f"{base}.starting").exists()
    assert servers[0] != servers[1]

