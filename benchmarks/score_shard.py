"""score_shard on pre-tokenized windows against tokenizing in the scoring job, on one shard.

The workflow tokenizes each shard for the scorer on a CPU node (tokenize_scorer_shard) and
score_shard reads the windows; before, score_shard tokenized as it went (the path `lqs score`
still takes: lqs.batch_scoring.scored_chunks). Both run here in one process on the same shard
of web-like documents (cut from --web, else generated) with the same scorer, and the script
prints, side by side: tokens/s end to end of each scoring path and their ratio, the tokenize
stage's tokens/s per core (its Rust tokenizer on --tokenizer-threads threads), the windows'
disk cost per million tokens, the scores' largest difference, and with --compile the compiled
forward against the eager one. Not a test.

    python benchmarks/score_shard.py                       # CPU: a small XGLM, 2,000 documents
    python benchmarks/score_shard.py --preset xglm-125m --docs 100000 --compile   # a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, help="benchmarks/inference.py's (default: cpu-small, or "
                        "xglm-125m on a GPU)")
    parser.add_argument("--scorer", type=Path, help="a trained checkpoint instead of a random one")
    parser.add_argument("--web", type=Path, default=Path(".bench/web.jsonl"))
    parser.add_argument("--docs", type=int, default=2000, help="documents in the shard")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the scorer's, per device")
    parser.add_argument("--tokenizer-threads", type=int, default=1,
                        help="threads of the tokenize stage's Rust tokenizer (tokens/s is given per core)")
    parser.add_argument("--compile", action="store_true", help="also score with inference.compile")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every path, back to back")
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def last_log_line(logger_name: str, fn):
    """fn() and the last INFO line it logged on `logger_name`."""
    lines = []
    handler = logging.Handler()
    handler.emit = lines.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return fn(), lines[-1].getMessage() if lines else None
    finally:
        logger.removeHandler(handler)


def in_process_scores(plan: str, reading, tokenized: Path, scorer, max_tokens, chunk_docs: int = 4096):
    """score_shard before the tokenize stage: the records of shard 0 of the corpus plan `plan`
    read (by `reading`, an lqs.corpus.CorpusReading), tokenized and scored in one process
    (lqs.batch_scoring.scored_chunks, as `lqs score` runs it on this device)."""
    from lqs.batch_scoring import Meter, accepted_records, scored_chunks
    from lqs.splits import planned_splits

    meter = Meter()
    records = accepted_records(reading.records(planned_splits(plan, "0", reading.splits_sha256),
                                               require_records=False), str(tokenized))
    scores = []
    for _, result in scored_chunks(scorer, None, 0, records, meter, chunk_docs=chunk_docs, max_tokens=max_tokens,
                                   max_windows_per_doc=None):
        scores += result.scores
    return scores, meter


def run(args, workdir: Path) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from inference import PRESETS, build_scorer, documents, plan_corpus, synthetic_corpus

    import lqs.scorer
    from lqs.corpus import CorpusReading
    from lqs.stages import score_shard as score_shard_stage
    from lqs.stages import tokenize_scorer_shard as tokenize_scorer_shard_stage
    from lqs.stages import tokenize_shard as tokenize_shard_stage

    cuda = torch.cuda.is_available()
    preset = PRESETS[args.preset or ("xglm-125m" if cuda else "cpu-small")]
    texts = documents(max(args.docs, 300), args.web)
    scorer_dir = args.scorer or build_scorer(workdir, texts[:3000], preset, args.max_length)
    corpus, tokenized, windows = workdir / "shard.jsonl", workdir / "tokenized.parquet", workdir / "windows.parquet"
    synthetic_corpus(corpus, texts, args.docs)
    plan, sha256 = plan_corpus(workdir, [corpus])  # one shard, "0"
    reading = CorpusReading(sha256, text_field="text", max_chars=10**7)
    tokenize_shard_stage.tokenize_shard(plan, "0", str(scorer_dir), str(tokenized), str(workdir / "rej.jsonl"),
                                        tokenize_shard_stage.Settings(reading, max_length=args.max_length,
                                                                      on_bad_record="skip"))
    counts, tokenize_s = timed(lambda: tokenize_scorer_shard_stage.tokenize_scorer_shard(
        plan, "0", str(tokenized), str(scorer_dir), str(windows), tokenize_scorer_shard_stage.Settings(
            reading, max_length=None, max_windows_per_doc=None, chunk_docs=4096, trust_remote_code=False)))
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "documents": counts["documents"],
              "tokens": counts["tokens"], "tokenize_stage": {
                  "seconds": tokenize_s, "threads": args.tokenizer_threads,
                  "tokens_per_s_per_core": counts["tokens"] / tokenize_s / args.tokenizer_threads,
                  "disk_bytes_per_million_tokens": windows.stat().st_size / counts["tokens"] * 1e6}}

    def score(compile_: bool):
        out = workdir / f"scores-{compile_}.parquet"
        settings = score_shard_stage.Settings(max_tokens=args.max_tokens, dtype="auto", compile=compile_,
                                              device="auto", trust_remote_code=False)
        (_, line), wall = timed(lambda: last_log_line(score_shard_stage.__name__, lambda: score_shard_stage.score_shard(
            str(windows), str(scorer_dir), str(out), settings, shard="0")))
        return pq.read_table(out)["score"].to_numpy(), wall, line

    def in_process():
        start = time.perf_counter()
        scorer = lqs.scorer.load(scorer_dir)  # loading counts in both paths
        scores, meter = in_process_scores(plan, reading, tokenized, scorer, args.max_tokens)
        wall = time.perf_counter() - start
        return np.asarray(scores), wall, meter.report("in-process", wall, None)

    paths = {"in_process": in_process, "pretokenized": lambda: score(False)}
    if args.compile:
        score(True)  # compiles each shape once: the rounds measure the steady state
        paths["compiled"] = lambda: score(True)
    # Rounds of every path back to back: a shared machine's speed drifts, so each round's ratios
    # compare runs made a few seconds apart, and their spread shows the noise.
    runs: dict[str, list] = {name: [] for name in paths}
    for round_ in range(args.rounds):
        for name, fn in paths.items():
            scores, wall, line = fn()
            runs[name].append((scores, wall, line))
            print(f"round {round_} {name}: {counts['tokens'] / wall:,.0f} tokens/s end to end\n  {line}", flush=True)
    for name, values in runs.items():
        walls = [wall for _, wall, _ in values]
        result[name] = {"seconds": walls, "tokens_per_s_median": counts["tokens"] / float(np.median(walls)),
                        "log": values[-1][2]}
        if name != "in_process":
            ratios = [base / wall for (_, base, _), wall in zip(runs["in_process"], walls)]
            result[name] |= {"speedup_vs_in_process": ratios, "max_abs_score_difference": float(max(
                np.abs(scores - base_scores).max() for (scores, _, _), (base_scores, _, _)
                in zip(values, runs["in_process"])))}
    if args.compile:
        result["compiled"]["speedup_vs_pretokenized"] = [
            eager / wall for (_, eager, _), (_, wall, _) in zip(runs["pretokenized"], runs["compiled"])]
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    # the tokenize stage's Rust tokenizer: as many threads as asked, set before it starts its pool
    os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(args.tokenizer_threads)
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
