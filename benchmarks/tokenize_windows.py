"""tokenize_windows (the Rust tokenizer called directly, offsets read only for texts that are
cut) against the same windows through transformers' tokenizer call, in one process.

    python benchmarks/tokenize_windows.py --corpus .bench/web.jsonl --tokenizer results/models/tokenizer

Prints each path's time over --repeats alternating runs, the ratio of medians, and the split of
the direct path (encode_batch, ids, offsets), after checking that both give the same windows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from lqs.tokenize import load_tokenizer, special_tokens, tokenize_windows, window_bounds


def through_transformers(tokenizer, texts: list[str], max_length: int) -> list[list[list[int]]]:
    """The windows as transformers' call gives them (every encoding converted to lists)."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [[prefix + ids[a:b] + suffix for a, b in window_bounds(offsets, text, budget)]
            for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="a JSONL file with a text field")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer directory")
    parser.add_argument("--max-length", type=int, nargs="+", default=[1024, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    tokenizer = load_tokenizer(args.tokenizer)
    for max_length in args.max_length:
        windows = tokenize_windows(tokenizer, texts, max_length)
        assert windows == through_transformers(tokenizer, texts, max_length), "the two paths differ"
        seconds: dict[str, list[float]] = {"transformers": [], "direct": []}
        for _ in range(args.repeats):
            for name, fn in (("transformers", through_transformers), ("direct", tokenize_windows)):
                start = time.perf_counter()
                fn(tokenizer, texts, max_length)
                seconds[name].append(time.perf_counter() - start)
        tokens = sum(len(w) for doc in windows for w in doc)
        ratio = statistics.median(seconds["transformers"]) / statistics.median(seconds["direct"])
        print(f"max_length {max_length}: {len(texts)} texts, {tokens:,} tokens; "
              + "; ".join(f"{k} {min(v):.2f}-{max(v):.2f} s" for k, v in seconds.items())
              + f"; direct is {ratio:.2f}x")
    backend = tokenizer.backend_tokenizer
    start = time.perf_counter()
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    split = {"encode_batch": time.perf_counter() - start}
    for part in ("ids", "offsets"):
        start = time.perf_counter()
        [getattr(e, part) for e in encodings]
        split[part] = time.perf_counter() - start
    print("direct path's parts: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))


if __name__ == "__main__":
    main()
