"""`lqs` for the jobs of the tests' Snakemake runs, forked from a server that has imported torch,
transformers and pyarrow once.

A fresh `lqs` job spends 2.5 to 4.5 s of CPU importing those libraries, and most jobs of the tiny
workflow run for under a second after that: over the suite's ~130 jobs, the imports were half of
its CPU time. helpers.snakemake() puts a stand-in `lqs` first on the PATH of the runs it starts
(unless real_lqs); the stand-in passes its arguments, environment, working directory, niceness,
umask and standard streams to the server of its environment, which forks a child that runs
`lqs.cli.main` as the console script would, and relays the child's exit status (or the signal
that ended it) back as the stand-in's own. The first job of an environment runs the real
console script and starts that server; a server ends after a minute without a job.

What stays as in a real process: the job's environment is exactly the stand-in's, its `lqs`
modules are imported in the child (the server imports only third-party libraries), `__main__` is
the console script (multiprocessing's spawn re-imports it), and `random`/numpy's global generators
are reseeded as a new process seeds them. Signals sent to the stand-in (Snakemake's SIGTERM) are
forwarded to the child, and a stand-in that dies (SIGKILL, a killed process group) takes its
child with it. Libraries read some variables at import (HF_HOME, OMP_NUM_THREADS, which
Snakemake sets per job): a server is started in, and serves only, one environment (PATH and the
names the shell and pytest set aside). tests/test_job_server.py checks these behaviours.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# What a job may differ in from its server's environment: Snakemake's shell prefix appends the
# interpreter's directory to PATH, and the shell and pytest set the others per job and per test.
IGNORED = frozenset({"PATH", "PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST", "LQS_JOB_SERVER", "LQS_CORPUS_PLAN",
                     "LQS_JOB_SERVER_REAL"})
# Imported by the server before it serves: the libraries the stages import, as they import them.
PRELOAD = (
    "numpy", "pandas", "pyarrow", "pyarrow.parquet", "pyarrow.dataset", "pyarrow.compute", "pyarrow.json",
    "yaml", "tqdm", "tabulate", "safetensors", "safetensors.torch", "huggingface_hub", "tokenizers", "torch",
    "torch.nn.functional", "transformers", "transformers.modeling_utils", "transformers.tokenization_utils_base",
    "transformers.tokenization_utils_tokenizers", "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto", "transformers.models.mistral.modeling_mistral",
    "transformers.models.xglm.modeling_xglm", "transformers.trainer_utils",
)
_HEADER = struct.Struct("!I")
# What a job runs, "module:function" (tests/test_job_server.py runs a probe); lqs.cli:main if unset.
ENTRY_VARIABLE = "LQS_JOB_SERVER_ENTRY"
# The commands (comma-separated, e.g. "trajectory,score-shard") whose jobs run the real `lqs`, a
# process of its own with its seconds of imports: a test that kills a job midway needs it alive long
# enough; the other jobs of its runs are still served.
REAL_VARIABLE = "LQS_JOB_SERVER_REAL"
# A server with no job for this many seconds ends (default 60).
IDLE_VARIABLE = "LQS_JOB_SERVER_IDLE_SECONDS"
# The modules a server imports before serving, comma-separated, instead of PRELOAD.
PRELOAD_VARIABLE = "LQS_JOB_SERVER_PRELOAD"


def env_key(env) -> str:
    """Which server may run a job with this environment."""
    relevant = sorted((k, v) for k, v in env.items() if k not in IGNORED)
    return hashlib.sha256(json.dumps(relevant).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the test process's side

_LOCK = threading.Lock()
_DIR: str | None = None


def environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with the stand-in `lqs` first on PATH. The first job of each environment runs the
    real `lqs` and starts a server for the jobs after it."""
    global _DIR
    real = Path(sys.executable).parent / "lqs"
    if not real.is_file():
        return env  # no console script beside this interpreter: nothing to stand in for
    with _LOCK:
        if _DIR is None:
            _DIR = tempfile.mkdtemp(prefix="lqs-jobs-")
            (Path(_DIR) / "owner").write_text(str(os.getpid()))  # servers end when this process does
            (Path(_DIR) / "bin").mkdir()
            stand_in = Path(_DIR) / "bin" / "lqs"
            # -IS: no site-packages or environment to read, so it starts in ~20 ms
            stand_in.write_text(f"#!{sys.executable} -IS\nimport sys\n"
                                f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
                                f"from job_server import stand_in\nstand_in({str(real)!r})\n")
            stand_in.chmod(0o755)
            atexit.register(_stop, _DIR)
    return {**env, "PATH": f"{_DIR}/bin{os.pathsep}{env.get('PATH', '')}", "LQS_JOB_SERVER": _DIR}


def _stop(directory: str) -> None:
    for pid_file in Path(directory).glob("*.pid"):
        _signal(int(pid_file.read_text()), signal.SIGTERM)
    shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- the stand-in `lqs`


def stand_in(real: str) -> None:
    """A job's `lqs`: run by its environment's server, else the real one (and a server started)."""
    if sys.argv[1:2] and sys.argv[1] in os.environ.get(REAL_VARIABLE, "").split(","):
        _run_alone(real)
    directory = os.environ.get("LQS_JOB_SERVER", "")
    base = os.path.join(directory, env_key(os.environ))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(base + ".sock")
    except OSError:
        _start_server(directory, base)
        _run_alone(real)
    umask = os.umask(0)
    os.umask(umask)
    body = json.dumps({"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(), "umask": umask,
                       "nice": os.getpriority(os.PRIO_PROCESS, 0)}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(body))], [0, 1, 2])
    conn.sendall(body)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, lambda received, frame: conn.send(bytes([received])))  # to the job
    reply = b""
    while not reply.endswith(b"\n"):
        data = conn.recv(64)
        if not data:
            sys.exit("lqs (tests/job_server.py): the job server went away")
        reply += data
    code = int(reply)
    if code < 0:  # ended by a signal: end by the same one
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _run_alone(real: str) -> None:
    """This job as a process of its own: the real `lqs` (or the entry) in place of the stand-in."""
    if ENTRY_VARIABLE in os.environ:
        module, function = os.environ[ENTRY_VARIABLE].split(":")
        os.execv(sys.executable, [sys.executable, "-c", f"import sys, {module}; sys.exit({module}.{function}())",
                                  *sys.argv[1:]])
    os.execv(real, [real, *sys.argv[1:]])


def _start_server(directory: str, base: str) -> None:
    """Starts this environment's server unless one is starting: in a session of its own, so that a
    signal to the job's process group spares it."""
    try:
        os.close(os.open(base + ".starting", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:  # starting already, or the directory is gone
        return
    owner = (Path(directory) / "owner").read_text()
    with open(base + ".log", "ab") as log:
        subprocess.Popen([sys.executable, __file__, base, owner], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True)


# ---------------------------------------------------------------- the server


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    (length,) = _HEADER.unpack(header)
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ConnectionError("the stand-in closed before sending its request")
        body += chunk
    return json.loads(body), fds


def _run_job(request: dict, fds: list[int]) -> None:
    """In the forked child: become the job, run lqs.cli.main, exit as the console script would.
    Its module is imported here, with the console script's directory first on sys.path."""
    import atexit as child_atexit
    import importlib
    import io
    import random
    import types

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    try:
        os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
    except PermissionError:  # lower than the server's, and not root
        pass
    os.environ.clear()
    os.environ.update(request["env"])
    for number in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(number, signal.SIG_DFL if number != signal.SIGPIPE else signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    real = os.path.join(os.path.dirname(sys.executable), "lqs")
    main_module = types.ModuleType("__main__")
    main_module.__file__ = real
    sys.modules["__main__"] = main_module
    sys.argv = [real, *request["argv"]]
    sys.path[0] = os.path.dirname(real)  # the console script's directory, not tests/
    # New standard streams on the new descriptors, buffered as a new interpreter's would be.
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), errors="backslashreplace",
                                  line_buffering=True)
    code, interrupted = 0, False
    try:
        module, function = os.environ.get(ENTRY_VARIABLE, "lqs.cli:main").split(":")
        sys.exit(getattr(importlib.import_module(module), function)())  # as the console script
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:
        sys.excepthook(*sys.exc_info())
        code, interrupted = 1, isinstance(e, KeyboardInterrupt)
    threading._shutdown()  # as the interpreter's exit: join non-daemon threads, then atexit
    child_atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:  # an interpreter ended by KeyboardInterrupt ends by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def serve(base: str, owner: int) -> None:
    """Imports the libraries, then forks a child per stand-in that connects to `base`.sock, until
    the test process `owner` ends (or SIGTERM), or no job came for IDLE_SECONDS (the server of
    one test's environment would otherwise hold its memory to the end of the run)."""
    import importlib

    preload = os.environ[PRELOAD_VARIABLE].split(",") if PRELOAD_VARIABLE in os.environ else PRELOAD
    for name in filter(None, preload):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    Path(base + ".pid").write_text(str(os.getpid()))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(base + ".new")
    listener.listen(64)
    os.rename(base + ".new", base + ".sock")  # stand-ins connect only once the server is ready
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    jobs: dict[int, socket.socket] = {}  # child pid -> its stand-in's connection
    watched: dict[socket.socket, int] = {}  # connections still open -> child pid
    idle_seconds = float(os.environ.get(IDLE_VARIABLE, 60))
    idle_since, closing = time.monotonic(), False
    try:
        while _alive(owner):
            if not jobs and not closing and time.monotonic() - idle_since > idle_seconds:
                os.unlink(base + ".sock")  # no stand-in connects from now on; those that did are served
                closing = True
            readable, _, _ = select.select([listener, *watched], [], [], 0.02)
            if closing and not jobs and listener not in readable:
                break
            for ready in readable:
                if ready is listener:
                    conn, _ = listener.accept()
                    try:
                        request, fds = _receive(conn)
                    except (OSError, ValueError, struct.error):
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        listener.close()
                        for other in [conn, *watched]:
                            other.close()
                        try:
                            _run_job(request, fds)  # exits
                        finally:  # it failed before running lqs: never back into the server's loop
                            traceback.print_exc()
                            os._exit(1)
                    for fd in fds:
                        os.close(fd)
                    jobs[pid], watched[conn] = conn, pid
                else:
                    pid = watched[ready]
                    data = ready.recv(64)
                    if not data:  # the stand-in is gone (killed): so goes its job
                        del watched[ready]
                        _signal(pid, signal.SIGKILL)
                    for number in data:
                        _signal(pid, number)
            while jobs:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = jobs.pop(pid)
                if watched.pop(conn, None) is not None:
                    try:
                        conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
                    except OSError:
                        pass
                conn.close()
                idle_since = time.monotonic()
    finally:
        for pid in jobs:
            _signal(pid, signal.SIGKILL)
        for suffix in (".sock", ".pid", ".starting"):  # the next job of this environment starts another
            try:
                os.unlink(base + suffix)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
