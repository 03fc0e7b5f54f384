"""`lqs <stage> [files…] --settings JSON`: one subcommand per pipeline stage.

File arguments name inputs and outputs; `--settings` carries the stage's configuration as a
JSON object (the Snakemake rule's params), passed to the stage function as keyword arguments.
Heavy imports happen inside each stage so that the CPU-only stages start fast.

Every stage ends with one machine-readable log line (lqs.runtime.stats_message): its own
seconds, from the call of the stage function (after the imports: the stage's module, and
transformers for the stages that use it), and the counters it returns, for lqs.report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import numbers
import os
import sys
import time

from lqs.distributed import relaunch_under_torchrun
from lqs.runtime import setup_logging, stats_message

log = logging.getLogger("lqs")

# subcommand: (module, function, [(argument, nargs)], help)
STAGES = {
    "demo-data": ("lqs.demo", "build_demo_data", [("corpus_path", None), ("target_path", None)],
                  "build the offline demo corpus and target set"),
    "train-tokenizer": ("lqs.models", "train_tokenizer", [("corpus_paths", "+"), ("--out-dir", None)],
                        "train a byte-level BPE tokenizer on the corpus"),
    "fetch-tokenizer": ("lqs.models", "fetch_tokenizer", [("--out-dir", None)],
                        "copy a tokenizer from a local directory or the hub"),
    "fetch-model": ("lqs.models", "fetch_model", [("--out-dir", None), ("--tokenizer-dir", None)],
                    "build or fetch a model as a float32 safetensors directory"),
    "fetch-scorer": ("lqs.models", "fetch_scorer", [("--out-dir", None)],
                     "fetch a pretrained scorer checkpoint (scorer.checkpoint) from a local directory or the hub"),
    "fetch-target": ("lqs.target", "fetch_target", [("source", None), ("--out", None)],
                     "download one split of a hub data set (the target set) as Parquet"),
    "pretrain-proxy": ("lqs.pretrain", "pretrain_proxy",
                       [("tokenizer_dir", None), ("shard_paths", "+"), ("--out-dir", None)],
                       "initialise the proxy LM from an architecture and pretrain it briefly"),
    "output-schema": ("lqs.output_schema", "output_schema", [("corpus_paths", "+"), ("--out", None)],
                      "settle the one schema of a Parquet output before any record is written"),
    "tokenize-shard": ("lqs.tokenize", "tokenize_shard",
                       [("corpus_paths", "+"), ("--tokenizer-dir", None), ("--shard", int),
                        ("--out", None), ("--rejects", None), ("--output-schema", None)],
                       "tokenize one corpus shard into windows"),
    "prepare-target": ("lqs.target", "prepare_target",
                       [("source", None), ("--tokenizer-dir", None), ("--out", None), ("--eval-out", None)],
                       "tokenize the target set"),
    "sample-proxy": ("lqs.sample", "sample_proxy",
                     [("shard_paths", "+"), ("--tokenizer-dir", None), ("--out", None)],
                     "draw the proxy set from the corpus windows"),
    "trajectory": ("lqs.trajectory", "run_trajectory",
                   [("proxy_dir", None), ("shard_paths", "+"), ("--target-path", None), ("--out-dir", None)],
                   "SGD trajectory and costate of the proxy LM"),
    "grad-stats": ("lqs.grad_stats", "grad_stats",
                   [("samples_path", None), ("step_path", None), ("proxy_dir", None), ("--out", None)],
                   "per-sample gradient norms and costate dot products at one step"),
    "labels": ("lqs.labels", "lqs_labels", [("stats_paths", "+"), ("--out", None), ("--info-out", None)],
               "LQS or PDS labels from the per-sample statistics"),
    "train-scorer": ("lqs.train_scorer", "train_scorer",
                     [("samples_path", None), ("labels_path", None), ("base_dir", None), ("--out-dir", None)],
                     "train the data scorer on the labels"),
    "score-shard": ("lqs.score", "score_shard",
                    [("corpus_paths", "+"), ("--tokenized-shard", None), ("--scorer-dir", None), ("--out", None),
                     ("--stats-out", None), ("--part-out", None), ("--output-schema", None)],
                    "score the documents of one corpus shard"),
    "gather": ("lqs.gather", "gather_scores",
               [("corpus_paths", "*"), ("--score-paths", "+"), ("--reject-paths", "+"), ("--stats-paths", "*"),
                ("--part-paths", "*"), ("--out", None), ("--rejects-out", None), ("--summary-out", None),
                ("--benchmarks-dir", None), ("--output-schema", None),
                ("--scorer-metrics", None), ("--annotation-info", None), ("--proxy-model", None)],
               "join the scores with the input into the scored output (or count a per_shard output's parts)"),
    "select-order": ("lqs.select", "select_order",
                     [("--scored", "+"), ("--shard-paths", "+"), ("--out", None), ("--order-out", None),
                      ("--summary-out", None)],
                     "select the training set from the scored output and write it in training order"),
    "efficacy-heldout": ("lqs.efficacy", "held_out_corpus", [("shard_paths", "+"), ("--out", None)],
                         "the efficacy experiment's held-out corpus documents"),
    "efficacy-train": ("lqs.efficacy", "train_arm",
                       [("shard_paths", "+"), ("--order", None), ("--target-eval", None), ("--corpus-eval", None),
                        ("--tokenizer-dir", None), ("--proxy-dir", None), ("--arm", None), ("--seed", int),
                        ("--out", None)],
                       "train one efficacy arm from scratch for one seed, with its loss curves"),
    "efficacy-summary": ("lqs.efficacy", "summarize",
                         [("run_paths", "+"), ("--target-eval", None), ("--corpus-eval", None),
                          ("--summary-out", None), ("--curves-out", None), ("--plot-out", None)],
                         "the efficacy experiment's table and figure"),
    "plots": ("lqs.report", "make_plots",
              [("out_dir", None), ("--benchmarks-dir", None), ("--logs-dir", None), ("--scored", "+"),
               ("--trajectory-log", None), ("--labels", None), ("--scorer-metrics", None)],
              "figures of a finished run for snakemake --report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lqs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, _, arguments, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text)
        for arg, kind in arguments:
            if kind is int:
                p.add_argument(arg, type=int, required=True)
            elif kind is None and arg.startswith("--"):
                p.add_argument(arg, required=arg not in _OPTIONAL)
            elif kind is None:
                p.add_argument(arg)
            else:
                p.add_argument(arg, nargs=kind, **({"default": []} if kind == "*" else {}))
        p.add_argument("--settings", type=json.loads, default={},
                       help="the stage's configuration, a JSON object of keyword arguments")
        if name in DISTRIBUTED:
            p.add_argument("--nproc", type=int, default=1,
                           help="processes (GPUs) in this job: more than 1 relaunches under torchrun")
    add_score_command(sub)
    return parser


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1, else one line naming the flag (argparse adds it)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return number


def add_score_command(sub) -> None:
    """`lqs score`: for users with a scorer checkpoint and no workflow; ordinary flags, no --settings."""
    from lqs.corpus import MAX_CHARS
    from lqs.output import EXTRA_FIELDS, FORMATS

    p = sub.add_parser("score", help="score files with a scorer checkpoint (no workflow needed)",
                       description="Score every record of the inputs with a scorer checkpoint, in input order, "
                       "by the workflow's batched path; a progress bar shows documents/s and tokens/s.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="JSONL (plain or .gz) or Parquet files, globs, directories or URLs, as corpus.path takes them;"
                   " - for JSONL on standard input")
    p.add_argument("--scorer", required=True, help="a scorer checkpoint directory (results/scorer) or a hub repo id")
    p.add_argument("--revision", help="pinned branch, tag or commit of a hub scorer")
    p.add_argument("--out", required=True, help="the scored output file; - for standard output (JSONL, or jsonl.gz)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (and its rejects file). Without it an existing output is an "
                   "error: an earlier run's results are never replaced by a repeated command or a typo. A "
                   "read-only output is never replaced, and no output may be an input")
    p.add_argument("--format", choices=list(FORMATS),
                   help="default: by the --out extension, else parquet for Parquet input and jsonl otherwise")
    p.add_argument("--text-field", default="text")
    p.add_argument("--score-field", default="score", help="name of the added score field (default: score)")
    p.add_argument("--extra-fields", type=lambda v: [f for f in v.split(",") if f], default=[],
                   help=f"comma-separated per-document fields to add: {', '.join(EXTRA_FIELDS)}")
    p.add_argument("--on-bad-record", choices=["error", "skip"], default="error",
                   help="error: stop naming file and line; skip: write the record and reason to --rejects")
    p.add_argument("--rejects", help="rejects file for --on-bad-record skip (default: <out>.rejects.jsonl)")
    p.add_argument("--max-chars", type=positive_int, default=MAX_CHARS, help="longer documents are bad records")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--max-tokens", type=positive_int, help="tokens per batch (default: by GPU memory; 4096 on a CPU)")
    p.add_argument("--max-windows-per-doc", type=positive_int, help="score only a document's first N windows")
    p.add_argument("--tokenizer-workers", type=positive_int, help="GPU: processes tokenizing ahead of the model")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")


COMMANDS = {"score": ("lqs.score", "score_files")}  # user commands with their own flags


DISTRIBUTED = {"train-scorer", "grad-stats", "efficacy-train"}
# What each stage counts, for its stats line: {unit: the key of the dict the stage function
# returns, or None where it returns that one count}. The first unit is the stage's throughput.
# A stage not listed (fetches, tokenizer training, plots) reports its seconds only.
COUNTERS: dict[str, dict[str, str | None]] = {
    "output-schema": {"columns": "columns"},
    "tokenize-shard": {"documents": "documents", "tokens": "tokens", "windows": "windows"},
    "prepare-target": {"samples": None},
    "sample-proxy": {"samples": None},
    "pretrain-proxy": {"steps": "steps", "samples": "samples", "tokens": "tokens"},
    "trajectory": {"steps": "steps", "samples": "samples"},
    "grad-stats": {"samples": "samples", "tokens": "tokens"},
    "labels": {"samples": "samples"},
    "train-scorer": {"samples": "samples_trained"},
    "score-shard": {"documents": "scored", "tokens": "tokens"},
    "score": {"documents": "documents_scored", "tokens": "tokens"},
    "gather": {"documents": "documents_read"},
    "select-order": {"documents": "documents_scored", "tokens": "tokens_scored"},
    "efficacy-heldout": {"documents": None},
    "efficacy-train": {"tokens": "tokens", "steps": "steps"},
}
# The libraries a stage's function imports when called (transformers' tokenizers, with torch, and
# its model code: 3-4 s on a CPU): imported before the stage's clock starts, like its module.
_TOKENIZERS, _MODELS = "transformers.models.auto.tokenization_auto", "transformers.modeling_utils"
PRELOAD = {
    **dict.fromkeys(["train-tokenizer", "fetch-tokenizer", "tokenize-shard", "prepare-target", "sample-proxy"],
                    (_TOKENIZERS,)),
    **dict.fromkeys(["fetch-model", "fetch-scorer", "pretrain-proxy", "trajectory", "grad-stats", "train-scorer",
                     "score-shard", "score", "efficacy-train"], (_TOKENIZERS, _MODELS)),
}
_OPTIONAL = {"--stats-out", "--part-out", "--trajectory-log", "--labels", "--tokenizer-dir", "--scorer-metrics",
             "--annotation-info", "--proxy-model", "--info-out", "--eval-out", "--proxy-dir", "--logs-dir",
             "--output-schema"}


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    args = vars(build_parser().parse_args(argv))
    stage = args.pop("stage")
    if relaunch_under_torchrun(args.pop("nproc", 1), argv):
        return
    settings = args.pop("settings", {})
    module, function = STAGES[stage][:2] if stage in STAGES else COMMANDS[stage]
    kwargs = {k: v for k, v in args.items() if v is not None} | settings
    try:
        run = getattr(importlib.import_module(module), function)
        for library in PRELOAD.get(stage, ()):
            importlib.import_module(library)
        start = time.perf_counter()
        result = run(**kwargs)
    except (ValueError, RuntimeError) as e:
        log.error("%s failed: %s", stage, e)
        sys.exit(1)
    except OSError as e:  # unwritable output, disk full, missing file: one line naming the path
        outputs = [str(v) for k, v in kwargs.items() if k in ("out", "rejects") or k.startswith("out_")
                   or k.endswith("_out")]
        # a system error without a file (ENOSPC on write) happened while writing one of them
        where = f" (outputs: {', '.join(outputs)})" if e.errno and e.filename is None and outputs else ""
        log.error("%s failed: %s%s", stage, e, where)
        sys.exit(1)
    seconds = time.perf_counter() - start
    log.info("%s done in %.1f s%s", stage, seconds, f": {result}" if isinstance(result, (dict, int)) else "")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line per job
        log.info(stats_message(stage, seconds, counters(stage, result)))


def counters(stage: str, result) -> dict[str, int]:
    """The stage's counters (COUNTERS) from what its function returned."""
    counts = {}
    for unit, key in COUNTERS.get(stage, {}).items():
        value = result if key is None else result.get(key) if isinstance(result, dict) else None
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            counts[unit] = int(value)
    return counts
