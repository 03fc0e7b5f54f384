"""`lqs <rule> [files…] --settings JSON`: one command per pipeline stage, and `lqs score`.

A stage's command is its Snakemake rule's name with dashes; the stage module `lqs/stages/<rule>.py`
declares its file arguments and its `Settings` (lqs.stage.Stage). File arguments name inputs and
outputs; `--settings` carries the stage's configuration, the rule's params, as a JSON object read
into the stage's Settings dataclass. Only the called stage's module is imported, so that the
CPU-only stages start fast.

Every stage ends with one machine-readable log line (lqs.runtime.stats_message): its own
seconds, from the call of the stage function (after the imports: the stage's module, and
transformers for the stages that use it), and the counters it returns, for lqs.report.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import numbers
import os
import sys
import time
import typing
from collections.abc import Mapping

from lqs.defaults import default
from lqs.distributed import relaunch_under_torchrun
from lqs.runtime import setup_logging, stats_message
from lqs.stage import MODELS, PIPELINE, Stage, command, load

log = logging.getLogger("lqs")

RULES = {command(rule): rule for rule in PIPELINE}
# `lqs score`, the user's command (lqs.score), with ordinary flags: its counters and preloads
SCORE_COUNTERS = {"documents": "documents_scored", "tokens": "tokens"}


def build_parser(rules=PIPELINE) -> argparse.ArgumentParser:
    """The `lqs` parser with a command for each of `rules` (all by default, for `lqs --help`; a
    stage's own command imports only its own module) and `lqs score`."""
    parser = argparse.ArgumentParser(prog="lqs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for rule in rules:
        add_stage_command(sub, rule, load(rule))
    add_score_command(sub)
    return parser


def add_stage_command(sub, rule: str, stage: Stage) -> None:
    p = sub.add_parser(command(rule), help=stage.help, description=f"Rule {rule}: {stage.help}.")
    for arg in stage.args:
        extra = {"default": []} if arg.nargs == "*" else {}
        if arg.name.startswith("--"):
            p.add_argument(arg.name, type=arg.type, required=arg.required, nargs=arg.nargs, **extra)
        else:
            p.add_argument(arg.name, type=arg.type, nargs=arg.nargs, **extra)
    if stage.settings is not None:
        p.add_argument("--settings", type=json.loads, required=True,
                       help=f"the stage's configuration (the rule's params): a JSON object of the fields of "
                       f"{stage.settings.__module__}.Settings")
    if stage.distributed:
        p.add_argument("--nproc", type=int, default=1,
                       help="processes (GPUs) in this job: more than 1 relaunches under torchrun")


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
    from lqs.formats import EXTENSIONS
    from lqs.output import EXTRA_FIELDS

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
    p.add_argument("--format", choices=list(EXTENSIONS),
                   help="default: by the --out extension, else parquet for Parquet input and jsonl otherwise")
    p.add_argument("--text-field", default=default("corpus.text_field"))
    p.add_argument("--score-field", default=default("output.score_field"),
                   help=f"name of the added score field (default: {default('output.score_field')})")
    p.add_argument("--extra-fields", type=lambda v: [f for f in v.split(",") if f], default=[],
                   help=f"comma-separated per-document fields to add: {', '.join(EXTRA_FIELDS)}")
    p.add_argument("--on-bad-record", choices=["error", "skip"], default=default("corpus.on_bad_record"),
                   help="error: stop naming file and line; skip: write the record and reason to --rejects")
    p.add_argument("--rejects", help="rejects file for --on-bad-record skip (default: <out>.rejects.jsonl)")
    p.add_argument("--max-chars", type=positive_int, default=MAX_CHARS, help="longer documents are bad records")
    p.add_argument("--device", default=default("device"), help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default=default("inference.dtype"),
                   help="auto: bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--max-tokens", type=positive_int, help="tokens per batch (default: by GPU memory; 4096 on a CPU)")
    p.add_argument("--max-windows-per-doc", type=positive_int, help="score only a document's first N windows")
    p.add_argument("--tokenizer-workers", type=positive_int, help="GPU: processes tokenizing ahead of the model")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def read_settings(cls: type, given: typing.Any, key: str = "") -> typing.Any:
    """A stage's Settings (`cls`) from the --settings object: every field, and nothing else (a
    field with a default, None, is one the rule passes only in some configurations). A field
    whose type is a dataclass (lqs.corpus.CorpusReading) is read from a nested object alike, and
    errors name its keys as "corpus.max_chars". `key`: where `given` is, "" for the whole object."""
    if not isinstance(given, Mapping):
        where = f": {key!r}" if key else ""
        raise ValueError(f"--settings{where} must be a JSON object, not {type(given).__name__}")
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    unknown, missing = sorted(set(given) - {f.name for f in fields}), sorted(required - set(given))
    if unknown or missing:
        def named(keys):
            return ", ".join(repr(f"{key}.{k}" if key else k) for k in keys)

        raise ValueError("--settings: " + "; ".join(([f"unknown key {named(unknown)}"] if unknown else [])
                                                    + ([f"missing key {named(missing)}"] if missing else [])))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in given.items():
        if dataclasses.is_dataclass(hints[name]):
            value = read_settings(hints[name], value, f"{key}.{name}" if key else name)
        values[name] = value
    return cls(**values)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    # `lqs <rule>` imports that stage's module only, `lqs score` none, `lqs --help` (or a typo) all
    first = argv[0] if argv else None
    rules = (RULES[first],) if first in RULES else () if first == "score" else PIPELINE
    args = vars(build_parser(rules).parse_args(argv))
    name = args.pop("stage")
    if relaunch_under_torchrun(args.pop("nproc", 1), argv):
        return
    if name == "score":
        run, preload, counted = importlib.import_module("lqs.score").score_files, MODELS, SCORE_COUNTERS
        kwargs = {k: v for k, v in args.items() if v is not None}
    else:
        stage = load(RULES[name])
        run, preload, counted = stage.run, stage.preload, stage.counters
        kwargs = {k: v for k, v in args.items() if k != "settings" and v is not None}
    try:
        if name != "score" and stage.settings is not None:
            kwargs["settings"] = read_settings(stage.settings, args["settings"])
        for library in preload:
            importlib.import_module(library)
        start = time.perf_counter()
        result = run(**kwargs)
    except KeyboardInterrupt:  # Ctrl-C: outputs are atomic, so nothing half-written is left
        log.error("%s interrupted (Ctrl-C): its output files are as they were before it ran", name)
        sys.exit(130)
    except (ValueError, RuntimeError) as e:
        log.error("%s failed: %s", name, e)
        sys.exit(1)
    except BrokenPipeError:  # `lqs score --out - | head`: the reader left before the output was complete
        # stdout goes nowhere from here, so that the interpreter's last flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        log.error("%s failed: standard output was closed before all of the output was written (broken pipe): "
                  "what was read from it is incomplete", name)
        sys.exit(1)
    except OSError as e:  # unwritable output, disk full, missing file: one line naming the path
        outputs = [str(v) for k, v in kwargs.items() if k in ("out", "rejects") or k.startswith("out_")
                   or k.endswith("_out")]
        # a system error without a file (ENOSPC on write) happened while writing one of them
        where = f" (outputs: {', '.join(outputs)})" if e.errno and e.filename is None and outputs else ""
        log.error("%s failed: %s%s", name, e, where)
        sys.exit(1)
    seconds = time.perf_counter() - start
    log.info("%s done in %.1f s%s", name, seconds, f": {result}" if isinstance(result, (dict, int)) else "")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line per job
        log.info(stats_message(name, seconds, counters(counted, result)))


def counters(counted: Mapping[str, str | None], result) -> dict[str, int]:
    """The stage's counters (Stage.counters) from what its function returned."""
    counts = {}
    for unit, key in counted.items():
        value = result if key is None else result.get(key) if isinstance(result, dict) else None
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            counts[unit] = int(value)
    return counts
