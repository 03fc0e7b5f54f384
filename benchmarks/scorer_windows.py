"""The scorer's windows cut from a tokenized shard's ids, against the same windows from the text
tokenized again, and what recording the window ends costs tokenize_shard; one process, one core's
CPU time (time.process_time; the Rust tokenizer's threads included).

    python benchmarks/scorer_windows.py [--corpus web.jsonl | --mb 20] [--repeats 3]

A scorer whose tokenizer made the tokenized shard (a checkpoint's, or the proxy tokenizer an `arch`
scorer takes) has its windows cut from the shard (stage tokenize_scorer_shard, `from ids`);
another (`from text`, forced here by a copy of the shard that does not name its tokenizer) reads
and tokenizes the corpus again. tokenize_shard now reads every text's token offsets to record the
window ends (`tokenize_texts` + `cut_windows`), where it read them only for texts longer than a
window (`tokenize_windows`): the two are timed on the same texts; and reading and parsing the
corpus alone, what a scorer with its own tokenizer pays beyond tokenizing. Checks that both ways
give the same windows file, then prints one JSON line per measure (medians over --repeats).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from lqs import sources, splits
from lqs.corpus import CorpusReading
from lqs.stages import tokenize_scorer_shard, tokenize_shard
from lqs.tokenize import TOKENIZER_METADATA, cut_windows, load_tokenizer, tokenize_texts, tokenize_windows, window_frame

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be or has had not "
         "but first new after also other its their one time years may all some more can most into two than "
         "data model learning training corpus token score quality document text web page").split()


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    """Documents of 30-1,500 words in sentences, some with line breaks."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < megabytes * 1e6:
            sentences = []
            for _ in range(rng.randint(2, 100)):
                end = rng.choice([".", ".", "!", "?", ".\n", ";"])
                sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + end)
            f.write(json.dumps({"text": " ".join(sentences)}) + "\n")


def train_tokenizer(corpus: Path, out: Path, vocab_size: int) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(20_000))]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False)
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(out)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.process_time()
    result = fn(*args, **kwargs)
    return time.process_time() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", help="a JSONL file with a `text` field (default: a synthetic one of --mb MB)")
    parser.add_argument("--mb", type=float, default=20)
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: a byte-level BPE trained on the corpus)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-length", type=int, default=1024, help="corpus.max_length")
    parser.add_argument("--scorer-max-length", type=int, default=512, help="scorer.max_length")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lqs-scorer-windows-"))
    corpus = Path(args.corpus) if args.corpus else work / "corpus.jsonl"
    if not args.corpus:
        write_corpus(corpus, args.mb)
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else work / "tokenizer"
    if not args.tokenizer:
        train_tokenizer(corpus, tokenizer_dir, args.vocab_size)
    paths = [str(corpus)]
    plan = splits.CorpusPlan(tuple(paths), {}, tuple(splits.plan_shards(paths, [sources.file_size(corpus)], 1, None)))
    plan_path = plan.write(str(work / "plans"))
    reading = CorpusReading(splits.splits_sha256(plan.shard("0").splits), "text", 10**9)
    size = corpus.stat().st_size

    tokenized = work / "tok.parquet"
    tokenize_seconds, counts = timed(tokenize_shard.tokenize_shard, plan_path, "0", str(tokenizer_dir), str(tokenized),
                                     str(work / "rejects.jsonl"), tokenize_shard.Settings(reading, args.max_length,
                                                                                          "error"))
    table = pq.read_table(tokenized)
    anonymous = work / "anonymous.parquet"  # names no tokenizer: tokenize_scorer_shard tokenizes the text
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                 if k != TOKENIZER_METADATA}), anonymous)
    settings = tokenize_scorer_shard.Settings(reading, args.scorer_max_length, None, 256, False)
    ways = {"from ids": tokenized, "from text": anonymous}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.repeats):
        for way, shard in ways.items():
            took, _ = timed(tokenize_scorer_shard.tokenize_scorer_shard, plan_path, "0", str(shard),
                            str(tokenizer_dir), str(work / f"{way}.parquet"), settings)
            seconds[way].append(took)
    first, second = (pq.ParquetFile(work / f"{way}.parquet") for way in ways)
    assert first.num_row_groups == second.num_row_groups and all(
        first.read_row_group(g).equals(second.read_row_group(g)) for g in range(first.num_row_groups)), "ways differ"
    print(json.dumps({"measure": "tokenize_scorer_shard CPU s", "corpus_mb": round(size / 1e6, 1),
                      "tokens": counts["tokens"], "documents": counts["documents"],
                      "tokenize_shard_s": round(tokenize_seconds, 3)}
                     | {way: [round(x, 3) for x in v] for way, v in seconds.items()}
                     | {"text / ids": round(statistics.median(seconds["from text"])
                                            / statistics.median(seconds["from ids"]), 2)}))

    # what reading the text again costs, next to tokenizing it again (the two ways' difference)
    reads = [timed(lambda: sum(len(r.text) for r in reading.records(plan.shard("0").splits)))[0]
             for _ in range(args.repeats)]
    print(json.dumps({"measure": "reading and parsing the corpus CPU s", "seconds": [round(x, 3) for x in reads],
                      "over from text": round(statistics.median(reads) / statistics.median(seconds["from text"]), 4)}))

    tokenizer = load_tokenizer(tokenizer_dir)
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    prefix, suffix, budget = window_frame(tokenizer, args.max_length)

    def with_ends() -> None:
        for ids, ends in tokenize_texts(tokenizer, texts):
            [prefix + ids[a:b] + suffix for a, b in cut_windows(len(ids), ends, budget)]

    cores: dict[str, list[float]] = {"windows only": [], "windows and ends": []}
    for _ in range(args.repeats):
        cores["windows only"].append(timed(tokenize_windows, tokenizer, texts, args.max_length)[0])
        cores["windows and ends"].append(timed(with_ends)[0])
    print(json.dumps({"measure": "tokenize_shard's tokenizing CPU s", "texts": len(texts)}
                     | {k: [round(x, 3) for x in v] for k, v in cores.items()}
                     | {"ends / only": round(statistics.median(cores["windows and ends"])
                                             / statistics.median(cores["windows only"]), 3)}))


if __name__ == "__main__":
    main()
