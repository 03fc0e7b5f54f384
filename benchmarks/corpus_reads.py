"""Bytes read from the corpus over a whole `snakemake scored.jsonl` run, counted by strace.

A JSONL corpus (default 6.4 MB, synthetic) is scored with a tiny pretrained scorer
(`scorer.checkpoint`: fetch, tokenize, tokenize for the scorer, score, gather) at each shard count
given; every read(2)/pread64(2) of every process of the run (Snakemake, its jobs, their threads)
on the corpus file is summed from `strace -ff -y`. Goals (issue 30): at 24 shards at most 5 x the
corpus, and at most 1.25 x the 2-shard figure.

    python benchmarks/corpus_reads.py [--mb 6.4] [--shards 2 24]

Prints one JSON line per shard count. Needs strace and the package installed (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or has had not "
         "but first new after also other its their one time years may all some more can most into two than "
         "data model learning training corpus token score quality document text web page").split()
READ = re.compile(r'^(?:read|pread64)\((\d+)<([^>]*)>.*\)\s+=\s+(\d+)$')


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        i = 0
        while f.tell() < megabytes * 1e6:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 600)))
            f.write(json.dumps({"id": i, "text": text.capitalize() + "."}) + "\n")
            i += 1
    return path.stat().st_size


def tiny_scorer(root: Path, corpus: Path) -> Path:
    """A scorer checkpoint as train_scorer writes it: a tokenizer trained on the corpus's start and a
    one-layer XGLM backbone with random weights (the scores do not matter here)."""
    import torch
    from transformers import AutoTokenizer, XGLMConfig, XGLMModel

    from lqs.corpus import CorpusReading
    from lqs.scorer import ScorerModel, save_scorer
    from lqs.splits import CorpusPlan, Shard, Split, splits_sha256
    from lqs.stages.train_tokenizer import Settings, train_tokenizer

    plan_path = CorpusPlan((str(corpus),), {}, (Shard("0", (Split(str(corpus)),), 0),)).write(str(root / "plans"))
    train_tokenizer(plan_path, str(root / "tokenizer"),
                    Settings(CorpusReading(splits_sha256([Split(str(corpus))]), "text", 10**7), vocab_size=512,
                             on_bad_record="error"), max_docs=500)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    backbone = XGLMModel(XGLMConfig(vocab_size=len(tokenizer), d_model=32, ffn_dim=64, num_layers=1,
                                    attention_heads=2, max_position_embeddings=128,
                                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id))
    save_scorer(ScorerModel(backbone).eval(), tokenizer, root / "scorer", {"max_length": 128})
    return root / "scorer"


def run(workdir: Path, corpus: Path, scorer: Path, shards: int) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for name in ("Snakefile", "rules", "envs", "config", "report", "profiles"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, workdir / name)
    config = {"corpus": {"path": str(corpus), "num_shards": shards, "max_length": 128},
              "scorer": {"checkpoint": str(scorer)}, "device": "cpu"}
    (workdir / "override.json").write_text(json.dumps(config))
    traces = workdir / "strace"
    traces.mkdir()
    start = time.perf_counter()
    # -ff: a file per thread, so that no call is split into "unfinished" and "resumed" lines; -A: a
    # process that reuses an earlier one's id appends to its file instead of truncating it
    subprocess.run(["strace", "-ff", "-A", "-y", "-qq", "-e", "trace=read,pread64", "-e", "signal=none", "-o",
                    str(traces / "t"),
                    sys.executable, "-m", "snakemake", "scored.jsonl", "--cores", "2", "--configfile",
                    str(workdir / "override.json"), "--quiet", "all"], cwd=workdir, check=True)
    seconds = time.perf_counter() - start
    total = 0
    real = os.path.realpath(corpus)
    for trace in traces.iterdir():
        with open(trace, encoding="utf-8", errors="replace") as f:
            for line in f:
                match = READ.match(line.strip())
                if match and os.path.realpath(match[2]) == real:
                    total += int(match[3])
    return {"shards": shards, "bytes_read": total, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=6.4)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 24])
    args = parser.parse_args()
    if shutil.which("strace") is None:
        sys.exit("corpus_reads.py needs strace (apt-get install strace)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        size = write_corpus(corpus, args.mb)
        scorer = tiny_scorer(root, corpus)
        figures = []
        for shards in args.shards:
            result = run(root / f"run-{shards}", corpus, scorer, shards)
            result |= {"corpus_bytes": size, "reads_over_size": round(result["bytes_read"] / size, 3)}
            figures.append(result)
            print(json.dumps(result), flush=True)
        if len(figures) > 1:
            print(json.dumps({"ratio_to_first": round(figures[-1]["bytes_read"] / figures[0]["bytes_read"], 3),
                              "shards": [f["shards"] for f in figures]}))


if __name__ == "__main__":
    main()
