"""select_order at scale: wall time and peak memory on a synthetic corpus of 1M short documents.

Writes scored.jsonl, gather_scores' index of it and a matching tokenized shard under --dir
(doc ids: file 0 of the corpus, each line's byte offset in it), then runs two child processes
and prints their wall time and peak memory (VmHWM; Linux) and the ratio: the baseline, Python
reading scored.jsonl line by line with the stage's imports loaded, and `lqs select-order`. With
--text-scale k > 1 the same documents are also written with k times longer texts: peak memory
must not follow the text size (not a test).

    python benchmarks/select_order.py                      # 1M documents, texts 20-200 characters
    python benchmarks/select_order.py --text-scale 10      # + the same corpus with 10x longer texts
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lqs.batch_scoring import INDEX_SCHEMA
from lqs.splits import files_metadata, shard_doc_id
from lqs.stages.select_order import Settings
from lqs.tokenize import SHARD_SCHEMA

# Each child prints its own peak RSS: VmHWM starts afresh at exec, whereas ru_maxrss keeps
# the forking parent's peak (Linux).
PEAK = "\nprint(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
BASELINE = "import numpy, pyarrow.json, pyarrow.parquet, sys\nfor line in open(sys.argv[1], 'rb'): pass" + PEAK
STAGE = "import sys\nfrom lqs.cli import main\nmain(sys.argv[1:])" + PEAK


def write_corpus(root: Path, n: int, text_scale: int, seed: int = 0) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(seed)
    chars = rng.integers(20, 200, size=n) * text_scale
    scores = rng.normal(size=n)
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * (2 * text_scale)
    scored, index = root / "scored.jsonl", root / "index.parquet"
    starts = []  # each line's first byte: a JSONL record's position in its file (lqs.splits)
    with open(scored, "wb") as f:
        for i, (c, score) in enumerate(zip(chars.tolist(), scores.tolist())):
            starts.append(f.tell())
            f.write(f'{{"id": "doc-{i}", "text": "{words[:c]}", "score": {score!r}}}\n'.encode())
    ids = np.asarray([shard_doc_id(0, start) for start in starts], dtype=np.int64)
    pq.write_table(pa.table([ids, scores, pa.nulls(n, pa.string())], schema=INDEX_SCHEMA), index)  # gather_scores'
    # about 4 characters per token, windows of at most 128 tokens
    tokens = np.maximum(chars // 4, 1)
    windows = (tokens + 127) // 128
    doc_ids = np.repeat(ids, windows)
    window = np.arange(len(doc_ids)) - np.repeat(np.cumsum(windows) - windows, windows)
    lengths = np.minimum(np.repeat(tokens, windows) - 128 * window, 128)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    values = pa.array(rng.integers(0, 32000, size=int(offsets[-1]), dtype=np.int32))
    fingerprints = np.zeros(len(doc_ids), np.int64)  # select_order does not read them
    shard = root / "corpus" / "shard-0.parquet"
    shard.parent.mkdir(parents=True, exist_ok=True)
    schema = SHARD_SCHEMA.with_metadata(files_metadata([str(root / "corpus.jsonl")]))  # the shard's corpus files
    table = pa.table([doc_ids, window.astype(np.int32), pa.ListArray.from_arrays(offsets, values), fingerprints,
                      pa.array([[]] * len(doc_ids), pa.list_(pa.int32())), pa.nulls(len(doc_ids), pa.string())],
                     schema=schema)
    pq.write_table(table, shard, row_group_size=1024)  # tokenize_shard: 512 docs a group
    return scored, index, shard


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed: {done.stderr}")
    return wall, int(done.stdout.split()[-1]) / 1024  # VmHWM is in KiB


def run(root: Path, n: int, text_scale: int, settings: dict) -> dict:
    t = time.perf_counter()
    scored, index, shard = write_corpus(root, n, text_scale)
    print(f"wrote {n:,} documents ({scored.stat().st_size / 2**20:,.0f} MiB scored.jsonl, "
          f"{shard.stat().st_size / 2**20:,.0f} MiB shard) in {time.perf_counter() - t:.1f} s")
    base_s, base_mb = measure([sys.executable, "-c", BASELINE, str(scored)])
    stage_s, stage_mb = measure([
        sys.executable, "-c", STAGE, "select-order", "--scored", str(scored), "--scores-index", str(index),
        "--shard-paths", str(shard),
        "--out", str(root / "selected.jsonl"), "--order-out", str(root / "order.parquet"),
        "--summary-out", str(root / "summary.json"),
        "--settings", json.dumps(settings)])
    summary = json.loads((root / "summary.json").read_text())
    assert summary["documents_scored"] == n
    row = dict(documents=n, text_mib=round(scored.stat().st_size / 2**20), selected=summary["documents_selected"],
               baseline_s=round(base_s, 2), stage_s=round(stage_s, 2), time_ratio=round(stage_s / base_s, 1),
               baseline_rss_mib=round(base_mb), stage_rss_mib=round(stage_mb))
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--text-scale", type=int, default=1)
    parser.add_argument("--dir", default="/tmp/lqs-select-bench")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--ordering", default="folding")
    args = parser.parse_args()
    settings = dict(selection=dict(method="top", ratio=args.ratio, threshold=None, temperature=1.0, seed=0),
                    ordering=dict(method=args.ordering, folds=3, seed=0), score_field="score",
                    output_format="jsonl", config_sha256=None)
    assert settings.keys() == {f.name for f in dataclasses.fields(Settings)}, "the stage's settings changed"
    for scale in sorted({1, args.text_scale}):
        root = Path(args.dir) / f"text-x{scale}"
        root.mkdir(parents=True, exist_ok=True)
        run(root, args.documents, scale, settings)


if __name__ == "__main__":
    main()
