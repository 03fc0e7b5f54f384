"""What record fingerprints (corpus.Record.fingerprint) cost: the hash over every record against
the tokenize stage (tokenize_shard: read, hash, tokenize, write the shard), on a synthetic corpus
like the tests' tiny_corpus, as JSONL and as Parquet.

    python benchmarks/fingerprint.py --docs 50000

Trains a small BPE tokenizer on the corpus unless --tokenizer is given. Prints, per format, the
tokenize stage's seconds, the hash's seconds (the records already read: the hash alone) and
their ratio.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lqs import corpus, splits
from lqs.corpus import CorpusReading
from lqs.stages import tokenize_shard as tokenize_shard_stage
from lqs.stages import train_tokenizer as train_tokenizer_stage

SENTENCES = [
    "The function returns a new list sorted in ascending order.",
    "Open the file, read each line and close the file when done.",
    "A dictionary maps keys to values; keys must be hashable.",
    "Use a context manager to make sure resources are released.",
]


def documents(n: int, seed: int = 0) -> list[dict]:
    """Prose, noise and repeated spam, 20 to 900 characters, as tests/helpers.py tiny_corpus."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        kind = ("good", "noise", "repeat")[i % 3]
        if kind == "good":
            text = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 12)))
        elif kind == "noise":
            text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz .,;") for _ in range(rng.randint(20, 300)))
        else:
            text = "Buy now! Best deals. " * rng.randint(1, 15)
        docs.append({"id": f"doc-{i}", "text": text, "source": kind, "extra": {"n": i}})
    return docs


def plan_file(directory: Path, path: Path) -> tuple[str, str]:
    """The corpus plan of the one file `path` in one shard, as the workflow writes it: (the plan
    file's path, the digest of the shard's splits, which the stages check)."""
    plan = splits.build_plan([str(path)], {}, [path.stat().st_size], 1, None)
    return plan.write(str(directory / "plans")), splits.splits_sha256(plan.shard("0").splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: one trained on the corpus)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = documents(args.docs)
        paths = {"jsonl": tmp / "corpus.jsonl", "parquet": tmp / "corpus.parquet"}
        paths["jsonl"].write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        pq.write_table(pa.Table.from_pylist(docs), paths["parquet"])
        tokenizer = args.tokenizer or str(tmp / "tokenizer")
        plans = {name: plan_file(tmp, path) for name, path in paths.items()}
        if not args.tokenizer:
            plan, sha256 = plans["jsonl"]  # one shard: the whole corpus
            train_tokenizer_stage.train_tokenizer(plan, tokenizer, train_tokenizer_stage.Settings(
                CorpusReading(sha256, "text", 10**6), vocab_size=args.vocab_size, on_bad_record="error"))
        for library in tokenize_shard_stage.STAGE.preload:  # as `lqs tokenize-shard` does, before its clock
            importlib.import_module(library)
        for name, (plan, sha256) in plans.items():
            reading = CorpusReading(sha256, "text", 10**6)
            start = time.perf_counter()
            counts = tokenize_shard_stage.tokenize_shard(
                plan, "0", tokenizer, str(tmp / f"{name}.shard.parquet"), str(tmp / f"{name}.rejects.jsonl"),
                tokenize_shard_stage.Settings(reading, max_length=args.max_length, on_bad_record="error"))
            stage = time.perf_counter() - start
            records = list(reading.records(splits.planned_splits(plan, "0", sha256)))
            start = time.perf_counter()
            for record in records:
                corpus.Record.fingerprint.func(record)  # uncached: each record hashed once, here
            hashing = time.perf_counter() - start
            print(f"{name}: {len(records)} records, {counts['tokens']:,} tokens; tokenize stage {stage:.2f} s, "
                  f"fingerprints {hashing:.3f} s ({hashing / len(records) * 1e6:.1f} us a record): "
                  f"{hashing / stage:.1%} of the stage")


if __name__ == "__main__":
    main()
