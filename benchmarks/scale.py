"""Corpus sharding at scale: planning, bytes read, CPU per GB and select_order memory, on synthetic corpora.

Corpora are made once under --cache (default .bench/scale, fixed seed) in three formats, JSONL,
JSONL.gz and Parquet (row groups of about 4 MB of text), of web-like records {"text", "source"}
(200 to 5,000 characters of Zipf-distributed words): directories of small files 00000, 00001, ...
(1 to 8 records each; the first n are a glob of their names) and one large file (a 2 GB JSONL
file, --quick 50 MB; the .gz and .parquet files hold the same records). One JSON line per case
goes to stdout, then one per goal; progress to stderr.

- plan: `snakemake -n --cores 1` (target all: the scored output, summary and selection) in a
  scratch directory (the repository's Snakefile, its config/ linked there, the case's corpus.path
  and num_shards or shard_size in a --configfile): wall and CPU seconds, peak RSS (wait4's
  ru_maxrss: the largest process of the tree), the jobs planned and the MB that -n printed. Cases:
  1,000, 10,000 and 100,000 files of each format at num_shards 100 and 200 and at a shard_size of
  1/200 of the corpus, and 20,000 JSONL files at num_shards 200 (--quick: 1,000 files at
  num_shards 200, JSONL at the shard_size too, and the 20,000 files).
  Goals: 100,000 files planned in <= 60 s and <= 2 GB; 20,000 files at 200 shards in <= 60 s.
- read: the small files (1,000, --quick too; 10,000) and the large file, planned by
  lqs.splits.plan_shards at 1, 16 and 256 shards, read as the stages read them: each shard's
  splits by one call of lqs.corpus.iter_records (tokenize_shard; tokenize_scorer_shard for a scorer
  with a tokenizer of its own), and every shard's splits in order by one call (gather_scores). Bytes read: the
  delta of rchar (/proc/self/io: every read and pread, pyarrow's threads' too) around each call,
  summed, over the corpus's bytes on disk; checked once (Parquet small files, 16 shards) against
  strace's count of the bytes read from the corpus files alone. CPU: process_time around each
  call, summed, per GB on disk. The calls run in one child process per corpus, after its start-up
  (interpreter, imports, a first tiny file: reported apart, per process and times the jobs per GB)
  and 16 MB of text read to grow its memory pools; 3 rounds, the shard counts taking turns, the
  least CPU of each kept (cpu_spread: the most over the least, less 1; the machine's load shows).
  Goals: bytes read <= 1.1 x the corpus at any shard count; CPU s/GB at 256 shards <= 1.15 x at 1.
- select: `lqs select-order` on synthetic inputs (scored.jsonl, gather_scores' index, a tokenized
  shard) of 100,000 and 400,000 documents (full: 1M and 4M): peak RSS (VmHWM), less that of a
  process with the stage's imports alone, per million documents; and the slope between the sizes.

    python benchmarks/scale.py --quick              # about 3 minutes on 2 cores
    python benchmarks/scale.py                      # long: 100,000 files, a 2 GB file
    python benchmarks/scale.py --quick --only read  # --only plan, read or select (repeatable)
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXT = {"jsonl": ".jsonl", "gz": ".jsonl.gz", "parquet": ".parquet"}
GLOB = {1000: "00*", 10000: "0*", 20000: "[01]*", 100000: "*"}  # the first n of files 00000 ... 99999
GROUP_TEXT = 4 << 20  # bytes of text per Parquet row group
SEED = 0


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def emit(rows: list, **row):
    rows.append(row)
    print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------------------
# synthetic corpora


class Texts:
    """Web-like documents: slices of a long stream of Zipf-distributed random words."""

    def __init__(self, seed: int = SEED):
        rng = np.random.default_rng(seed)
        letters = rng.integers(97, 123, size=(20_000, 10), dtype=np.uint8)
        vocab = [bytes(w[:n]).decode() for w, n in zip(letters, rng.integers(2, 11, size=20_000))]
        p = 1 / np.arange(1, len(vocab) + 1) ** 1.1
        self.pool = " ".join(vocab[i] for i in rng.choice(len(vocab), size=2_000_000, p=p / p.sum()))

    def records(self, rng: np.random.Generator, n: int, name: str) -> list[dict]:
        lengths = np.exp(rng.uniform(np.log(200), np.log(5000), size=n)).astype(int)
        starts = rng.integers(0, len(self.pool) - 5000, size=n)
        return [{"text": self.pool[s:s + k], "source": f"https://example.com/{name}/{i}"}
                for i, (s, k) in enumerate(zip(starts.tolist(), lengths.tolist()))]


@functools.cache
def texts() -> Texts:
    return Texts()


def write_file(path: Path, records: list[dict], fmt: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        with (gzip.open(path, "wb", compresslevel=6) if fmt == "gz" else open(path, "wb")) as f:
            f.write("".join(json.dumps(r) + "\n" for r in records).encode())


def small_files(cache: Path, fmt: str, n: int) -> Path:
    """Directory of (at least) n small files 00000... in `fmt`; file i is the same in every format and run."""
    root = cache / f"files-{fmt}"
    root.mkdir(parents=True, exist_ok=True)
    have = int((root / ".count").read_text()) if (root / ".count").exists() else 0
    if have < n:
        log(f"writing {n - have:,} small {fmt} files in {root}")
        for i in range(have, n):
            rng = np.random.default_rng([SEED, i])
            write_file(root / f"{i:05d}{EXT[fmt]}", texts().records(rng, int(rng.integers(1, 9)), str(i)), fmt)
        (root / ".count").write_text(str(n))
    return root


def files_of(root: Path, fmt: str, n: int) -> list[str]:
    return sorted(str(p) for p in root.glob(GLOB[n] + EXT[fmt]))


def big_file(cache: Path, fmt: str, mb: int) -> Path:
    """One file of `mb` MB of JSONL; the .gz and .parquet files hold the same records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {f: cache / f"big-{mb}MB{EXT[f]}" for f in EXT}
    if not all(p.exists() for p in paths.values()):
        log(f"writing the {mb} MB file in {cache} (JSONL, gz, Parquet)")
        tmp = {f: p.with_name(p.name + ".tmp") for f, p in paths.items()}
        rng, size, rows = np.random.default_rng([SEED, 1 << 30]), 0, GROUP_TEXT // 1500
        with (open(tmp["jsonl"], "wb") as plain, gzip.open(tmp["gz"], "wb", compresslevel=6) as gz,
              pq.ParquetWriter(tmp["parquet"], pa.schema([("text", pa.string()), ("source", pa.string())])) as pqw):
            while size < mb * 10**6:
                records = texts().records(rng, rows, f"big/{size}")
                data = "".join(json.dumps(r) + "\n" for r in records).encode()
                plain.write(data)
                gz.write(data)
                pqw.write_table(pa.Table.from_pylist(records, schema=pqw.schema))
                size += len(data)
        for f in EXT:
            tmp[f].rename(paths[f])
    return paths[fmt]


# ----------------------------------------------------------------------------------------------
# plan: snakemake -n


def run_measured(command: list[str], cwd: Path, out: Path, timeout: float) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak RSS (MB) of the process tree (wait4's) and its exit status."""
    start = time.perf_counter()
    with open(out, "wb") as f:
        proc = subprocess.Popen(command, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def plan(rows: list, cache: Path, fmt: str, n: int, sharding: dict, timeout: float):
    root = small_files(cache, fmt, n)
    files = files_of(root, fmt, n)
    if "shard_size" in sharding:  # about 200 shards
        sharding = {"shard_size": sum(map(os.path.getsize, files)) // 200}
    name = f"{fmt}-{n}-" + "-".join(f"{k}{v}" for k, v in sharding.items())
    scratch = cache / "plan" / name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "config").symlink_to(REPO / "config")  # the Snakefile's configfile is relative to the working dir
    (scratch / "case.yaml").write_text(json.dumps({"corpus": {"path": str(root / (GLOB[n] + EXT[fmt])), **sharding}}))
    command = [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1",  # target all
               "--snakefile", str(REPO / "Snakefile"), "--directory", str(scratch), "--configfile", "case.yaml"]
    seconds, cpu, rss, status = run_measured(command, scratch, scratch / "snakemake.log", timeout)
    text = (scratch / "snakemake.log").read_text(errors="replace")
    jobs = re.search(r"^total\s+(\d+)", text, re.MULTILINE)
    row = dict(case="plan", files=n, format=fmt, **sharding, seconds=round(seconds, 2), cpu_s=round(cpu, 2),
               peak_rss_mb=round(rss), jobs=int(jobs[1]) if jobs else None, log_mb=round(len(text) / 1e6, 1))
    if status != 0:
        row["error"] = "timed out" if seconds > timeout else text.strip().splitlines()[-8:]
    emit(rows, **row)


# ----------------------------------------------------------------------------------------------
# read: bytes and CPU of the reading stages

# One child process per corpus: start-up (interpreter, imports, a first tiny file), then memory pools
# grown to their steady size (16 MB of text read), then `repeat` rounds of, for each plan: each
# shard's splits read in turn (the shard jobs), then every shard's splits in one call (gather_scores;
# the same call at one shard). The plans take turns: they see the same load.
READER = r"""
import json, sys, time
from lqs.corpus import iter_records
from lqs.splits import Split

def rchar():
    with open("/proc/self/io", "rb") as f:
        return int(f.read().split(b"rchar:")[1].split()[0])

def read(splits):
    r, c = rchar(), time.process_time()
    for record in iter_records([Split.from_json(s) for s in splits], require_records=False):
        record.text
    return [rchar() - r, time.process_time() - c]

def jobs(shards):
    reads = [read(s) for s in shards]
    return [reads, read([x for s in shards for x in s]) if len(shards) > 1 else reads[0]]

spec = json.load(sys.stdin)
read(spec["warmup"])
ready = [time.process_time(), time.time()]
chars = 0
for record in iter_records([Split.from_json(x) for s in spec["plans"][0] for x in s]) if spec["warm_chars"] else ():
    chars += len(record.text or "")
    if chars > spec["warm_chars"]:
        break
overhead = read([])[0]  # reading /proc/self/io
runs = [[jobs(shards) for shards in spec["plans"]] for _ in range(spec["repeat"])]
print(json.dumps({"ready": ready, "overhead": overhead, "runs": runs}))
"""
# The stages that read one shard's splits: tokenize_shard, and tokenize_scorer_shard for a scorer
# with a tokenizer of its own (with the corpus tokenizer it cuts the tokenized shard's ids).
SHARD_STAGES = "tokenize_shard+tokenize_scorer_shard"
SHARD_COUNTS = (1, 16, 256)


def read_child(spec: dict, prefix: list[str] = ()) -> tuple[dict, float]:
    start = time.time()
    done = subprocess.run([*prefix, sys.executable, "-c", READER], input=json.dumps(spec), capture_output=True,
                          text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"reader failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1]), start


def read(rows: list, corpus: str, fmt: str, files: list[str], warmup: str, repeat: int, strace: Path | None):
    from lqs.splits import plan_shards

    sizes = [os.path.getsize(f) for f in files]
    total, gb = sum(sizes), sum(sizes) / 1e9
    plans = {n: plan_shards(files, sizes, num_shards=n) for n in SHARD_COUNTS}
    jsons = {n: [[x.as_json() for x in s.splits] for s in p] for n, p in plans.items()}
    unique = list(dict.fromkeys(json.dumps(p) for p in jsons.values()))  # a plan read once for the counts that share it
    spec = {"warmup": [warmup], "plans": [json.loads(p) for p in unique], "repeat": repeat, "warm_chars": 1 << 24}
    out, start = read_child(spec)
    startup, ov = out["ready"][0], out["overhead"]
    for n, shards in plans.items():
        runs = [run[unique.index(json.dumps(jsons[n]))] for run in out["runs"]]  # each round's [shard reads, whole]
        reads = [r - ov for r, _ in runs[0][0]]
        for stage, jobs, read_bytes, cpus in (
                (SHARD_STAGES, len(shards), sum(reads), [sum(c for _, c in run[0]) for run in runs]),
                ("gather_scores", 1, runs[0][1][0] - ov, [run[1][1] for run in runs])):
            worst = {"worst_shard_over_planned": round(max(r / max(s.size, 1) for r, s in zip(reads, shards)), 3)}
            emit(rows, case="read", corpus=corpus, format=fmt, corpus_mb=round(total / 1e6, 1), shards=n,
                 stage=stage, jobs=jobs, bytes_over_size=round(read_bytes / total, 4), **(worst if jobs > 1 else {}),
                 cpu_s_per_gb=round(min(cpus) / gb, 2), cpu_spread=round(max(cpus) / min(cpus) - 1, 2),
                 startup_cpu_s=round(startup, 2), startup_wall_s=round(out["ready"][1] - start, 2),
                 startup_cpu_s_per_gb=round(jobs * startup / gb, 2))
    if strace:  # the 16 shards read again under strace: bytes of read syscalls on the corpus files only
        log_path = strace / f"strace-{fmt}.log"
        strace_cmd = ["strace", "-f", "-qq", "-y", "-s", "0", "-e", "signal=none", "-e",
                      "trace=read,pread64,readv,preadv,preadv2", "-o", str(log_path)]
        traced, _ = read_child(spec | {"plans": [jsons[16]], "repeat": 1, "warm_chars": 0}, strace_cmd)
        (shard_reads, whole), ov = traced["runs"][0][0], traced["overhead"]
        rchar = sum(r - ov for r, _ in shard_reads) + whole[0] - ov
        syscalls = strace_bytes(log_path, set(files))
        emit(rows, case="read_check", corpus=corpus, format=fmt, shards=16, rchar_bytes=rchar,
             strace_corpus_bytes=syscalls, ratio=round(syscalls / rchar, 4))
        log_path.unlink()


def strace_bytes(log_path: Path, paths: set[str]) -> int:
    """Bytes returned by the read syscalls (strace -f -y) on the files `paths`."""
    total, pending = 0, {}
    call = re.compile(r"\s*(?:p?read(?:64)?|p?readv2?)\(\d+<([^>]*)>")
    for line in log_path.read_text(errors="replace").splitlines():
        pid, _, rest = line.partition(" ")
        if m := call.match(rest):
            path = m[1]
            if rest.endswith("<unfinished ...>"):
                pending[pid] = path
                continue
        elif re.match(r"\s*<\.\.\. \w+ resumed>", rest):
            path = pending.pop(pid, None)
        else:
            continue
        ret = re.search(r"\) += (-?\d+)$", rest)
        if path in paths and ret and int(ret[1]) > 0:
            total += int(ret[1])
    return total


# ----------------------------------------------------------------------------------------------
# select_order: peak memory per million documents

PEAK = "\nprint(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
IMPORTS = "import lqs.cli, lqs.stages.select_order" + PEAK
STAGE = "import sys\nfrom lqs.cli import main\nmain(sys.argv[1:])" + PEAK


def peak_mb(command: list[str]) -> float:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{command[:4]} failed: {done.stderr[-3000:]}")
    return int(done.stdout.split()[-1]) / 1024  # VmHWM: KiB


def select(rows: list, cache: Path, n: int):
    """select_order's inputs for n documents (scored.jsonl, gather_scores' index, a tokenized shard), then it."""
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lqs.splits import files_metadata
    from lqs.stages.select_order import Settings
    from lqs.tokenize import SHARD_SCHEMA

    root = cache / f"select-{n}"
    root.mkdir(parents=True, exist_ok=True)
    scored, index, shard = root / "scored.jsonl", root / "index.parquet", root / "shard-0.parquet"
    if not shard.exists():
        log(f"writing {n:,} scored documents in {root}")
        rng = np.random.default_rng(SEED)
        chars, scores = rng.integers(20, 200, size=n), rng.normal(size=n)
        words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 3
        with open(scored, "w") as f:
            f.writelines(f'{{"id": "doc-{i}", "text": "{words[:c]}", "score": {s!r}}}\n'
                         for i, (c, s) in enumerate(zip(chars.tolist(), scores.tolist())))
        doc_ids = np.arange(n, dtype=np.int64)  # file 0, positions 0 ... n-1
        pq.write_table(pa.table({"doc_id": doc_ids, "score": scores}), index)
        tokens = np.maximum(chars // 4, 1)  # one window per document (< 128 tokens)
        offsets = np.concatenate(([0], np.cumsum(tokens))).astype(np.int32)
        columns = {"doc_id": doc_ids, "window": np.zeros(n, np.int32), "fingerprint": np.zeros(n, np.int64),
                   "input_ids": pa.ListArray.from_arrays(offsets, rng.integers(0, 32000, int(offsets[-1]), np.int32)),
                   "ends": pa.array([[]] * n, pa.list_(pa.int32())), "source": pa.nulls(n, pa.string())}
        schema = SHARD_SCHEMA.with_metadata(files_metadata([str(root / "corpus.jsonl")]))
        with pq.ParquetWriter(shard, schema) as writer:  # tokenize_shard: small row groups
            writer.write_table(pa.table([columns[c] for c in schema.names], schema=schema), row_group_size=1024)
    settings = dict(selection=dict(method="top", ratio=0.5, threshold=None, temperature=1.0, seed=0),
                    ordering=dict(method="folding", folds=3, seed=0), score_field="score", output_format="jsonl",
                    layout="single", config_sha256=None)
    settings = {f.name: settings[f.name] for f in dataclasses.fields(Settings)}
    imports = peak_mb([sys.executable, "-c", IMPORTS])
    start = time.perf_counter()
    peak = peak_mb([sys.executable, "-c", STAGE, "select-order", "--scored", str(scored), "--scores-index", str(index),
                    "--shard-paths", str(shard), "--out", str(root / "selected.jsonl"),
                    "--order-out", str(root / "order.parquet"), "--summary-out", str(root / "summary.json"),
                    "--settings", json.dumps(settings)])
    emit(rows, case="select_order", docs=n, seconds=round(time.perf_counter() - start, 2), peak_rss_mb=round(peak),
         imports_rss_mb=round(imports), mb_per_million_docs=round((peak - imports) * 1e6 / n, 1))


# ----------------------------------------------------------------------------------------------
# goals


def goals(rows: list):
    def goal(name, failing, **figures):
        emit(rows, case="goal", goal=name, ok=not failing, **figures, failing=failing)

    reads = [r for r in rows if r["case"] == "read"]
    if reads:
        goal("bytes read <= 1.1 x corpus", [f"{r['corpus']} {r['format']} {r['stage']} at {r['shards']}: "
                                             f"{r['bytes_over_size']}" for r in reads if r["bytes_over_size"] > 1.1],
             worst=max(r["bytes_over_size"] for r in reads))
        ratios = {}
        for r in reads:
            if r["shards"] == 256:
                one = next(o for o in reads if o["shards"] == 1 and all(o[k] == r[k] for k in ("corpus", "format")))
                ratios[f"{r['corpus']} {r['format']} {r['stage']}"] = round(r["cpu_s_per_gb"] / one["cpu_s_per_gb"], 3)
        goal("cpu s/GB at 256 shards <= 1.15 x at 1", [f"{k}: {v}" for k, v in ratios.items() if v > 1.15],
             worst=max(ratios.values()))
    plans = [r for r in rows if r["case"] == "plan"]
    for n, shards, seconds, mb in ((100000, None, 60, 2048), (20000, 200, 60, None)):
        cases = [r for r in plans if r["files"] == n and (shards is None or r.get("num_shards") == shards)]
        if cases:
            failing = [f"{r['format']} {r.get('num_shards') or r.get('shard_size')}: {r['seconds']} s, "
                       f"{r['peak_rss_mb']} MB{' (failed)' if 'error' in r else ''}" for r in cases
                       if "error" in r or r["seconds"] > seconds or (mb is not None and r["peak_rss_mb"] > mb)]
            goal(f"{n:,} files{f' at {shards} shards' if shards else ''} planned in <= {seconds} s"
                 + (f" and <= {mb} MB" if mb else ""), failing, worst_seconds=max(r["seconds"] for r in cases),
                 worst_rss_mb=max(r["peak_rss_mb"] for r in cases))


# ----------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpora: done in about 3 minutes")
    parser.add_argument("--only", choices=["plan", "read", "select"], action="append", help="repeatable")
    parser.add_argument("--cache", type=Path, default=REPO / ".bench" / "scale")
    parser.add_argument("--no-strace", action="store_true", help="skip the strace check of rchar")
    args = parser.parse_args()
    only = set(args.only or ["plan", "read", "select"])
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    started, rows = time.perf_counter(), []
    formats = list(EXT)

    if "plan" in only:
        timeout = 120 if args.quick else 600
        shardings = ({"num_shards": 100}, {"num_shards": 200}, {"shard_size": None})  # None: 1/200 of the corpus
        cases = [(fmt, n, sharding) for n in (1000, 10000, 100000) for fmt in formats for sharding in shardings]
        if args.quick:
            cases = [(fmt, 1000, shardings[1]) for fmt in formats] + [("jsonl", 1000, shardings[2])]
        for fmt, n, sharding in [*cases, ("jsonl", 20000, {"num_shards": 200})]:
            plan(rows, cache, fmt, n, sharding, timeout)

    if "read" in only:
        n_small, mb, repeat = (1000, 50, 3) if args.quick else (10000, 2000, 3)
        for fmt in formats:
            root = small_files(cache, fmt, n_small)
            warmup = cache / f"warmup{EXT[fmt]}"
            shutil.copyfile(root / f"00000{EXT[fmt]}", warmup)
            corpora = {f"{n_small} files": files_of(root, fmt, n_small), "1 file": [str(big_file(cache, fmt, mb))]}
            for corpus, files in corpora.items():
                check = not args.no_strace and fmt == "parquet" and corpus != "1 file"
                read(rows, corpus, fmt, files, str(warmup), repeat, cache if check else None)

    if "select" in only:
        (a, b) = sizes = (100_000, 400_000) if args.quick else (1_000_000, 4_000_000)
        for n in sizes:
            select(rows, cache, n)
        peaks = [r["peak_rss_mb"] for r in rows[-2:]]
        emit(rows, case="select_order_slope", docs=list(sizes),
             mb_per_million_docs=round((peaks[1] - peaks[0]) * 1e6 / (b - a), 1))

    goals(rows)
    log(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
