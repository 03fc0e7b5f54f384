"""`lqs score`: score files with a scorer checkpoint, no workflow needed (docs/stages.md#lqs-score-no-workflow).

Not a stage: the user's command and Python API (`score_files`), whose keyword arguments mirror its
flags. It streams records in chunks through the batched scorer that stage score_shard uses
(lqs.batch_scoring), so memory does not grow with the input. The log ends with the time split
(read / tokenize / model / write) and the tokens/s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lqs import corpus, output, provenance
from lqs.batch_scoring import Meter, loaded_scorer, scored_chunks
from lqs.defaults import default
from lqs.io import TokenRate, atomic_open
from lqs.output import ScoredWriter

log = logging.getLogger(__name__)


def checked_records(records: Iterator[corpus.Record], on_bad_record: str, rejects) -> Iterator[corpus.Record]:
    """The usable records; a bad one stops the run (error) or is written to `rejects` (skip)."""
    for record in records:
        if corpus.check(record, on_bad_record):
            yield record
        else:
            rejects.write(corpus.json_line(record.reject_entry()) + "\n")
            rejects.rejected += 1


class _Rejects:
    """The rejects file of `lqs score`, created (atomically) only if a record is rejected; one
    that an earlier run wrote (replaced only under --overwrite: check_outputs) is removed when
    this run ends well with none, so that it never lies beside an output it does not belong to."""

    def __init__(self, path: str | None, overwrite: bool):
        self.path, self.overwrite, self.rejected = path, overwrite, 0
        self._stack, self._file = contextlib.ExitStack(), None

    def write(self, line: str) -> None:
        if self._file is None:
            self._file = self._stack.enter_context(atomic_open(self.path, replace=self.overwrite))
        self._file.write(line)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        # without --overwrite there was none when the run started: one there now is another run's
        if kind is None and self._file is None and self.path and self.overwrite:
            Path(self.path).unlink(missing_ok=True)
        self._stack.__exit__(kind, value, traceback)


def format_of(out: str, format: str | None, inputs: Sequence[str]) -> str:
    """--format, else the output's extension, else (standard output) Parquet for Parquet input and
    JSONL otherwise. A file's extension must name its format: a `.jsonl` file never holds Parquet."""
    from lqs.paths import extension_format

    named = extension_format(out) if out != "-" else None
    if format:
        output.check_format(format)
        if named not in (None, format):
            raise ValueError(f"--format {format} contradicts --out {out}, whose extension names {named}; "
                             "give one or the other")
        return format
    return named or output.default_format(inputs)


def resolve_scorer(scorer: str, revision: str | None = None) -> str:
    """A local scorer checkpoint directory, or a hub repo id downloaded (once, to the Hugging Face
    cache) with huggingface_hub."""
    from lqs import models

    if Path(scorer).is_dir():
        return scorer
    if Path(scorer).exists() or scorer.count("/") != 1:
        raise FileNotFoundError(f"--scorer {scorer!r} is neither a scorer checkpoint directory nor a hub repo id")
    return models.resolve_source({"repo": scorer, "revision": revision}, ignore_patterns=models.FOREIGN_WEIGHTS)


def check_outputs(inputs: Sequence[str], scorer: str, outputs: dict[str, str], overwrite: bool) -> None:
    """Refuses, before anything is scored, outputs ({flag: path}) that would land on an input (or
    inside a directory or glob of inputs, or the --scorer directory) or on each other, an output
    that is a directory or in a missing or unwritable one, and an existing one without
    `overwrite`. A read-only output is never replaced: it was made read-only for a reason."""
    from lqs.paths import path_conflicts

    given = {"INPUT": [i for i in inputs if i != "-"]} | ({"--scorer": [scorer]} if Path(scorer).is_dir() else {})
    conflicts = path_conflicts(given, outputs)
    if conflicts:
        raise ValueError("; ".join(conflicts))
    for flag, path in outputs.items():
        target, where = Path(path), Path(path).parent
        if target.is_dir():
            raise ValueError(f"{flag} {path} is a directory: give the path of the file to write")
        if not where.is_dir():
            raise ValueError(f"{flag} {path}: its directory {where} does not exist")
        if not os.access(where, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: its directory {where} is not writable")
        if not (target.exists() or target.is_symlink()):
            continue
        if not overwrite:
            raise ValueError(f"{flag} {path} exists: pass --overwrite to replace it")
        if not os.access(target, os.W_OK) or not target.stat().st_mode & 0o222:
            raise ValueError(f"{flag} {path} is read-only: not replaced, even with --overwrite; make it "
                             f"writable (chmod u+w {path}) to replace it")


# `lqs score` names its settings by its flags in messages (corpus.setting)
SCORE_FLAGS = {"on_bad_record": "--on-bad-record", "max_chars": "--max-chars", "format": "--format",
               "score_field": "--score-field", "extra_fields": "--extra-fields"}


@corpus.settings_named(SCORE_FLAGS)
def score_files(inputs: Sequence[str], *, scorer: str, out: str, text_field: str = default("corpus.text_field"),
                score_field: str = default("output.score_field"), format: str | None = None, overwrite: bool = False,
                on_bad_record: str = default("corpus.on_bad_record"), rejects: str | None = None,
                extra_fields: Sequence[str] = (), max_chars: int = default("corpus.max_chars"),
                revision: str | None = None, device: str = default("device"), dtype: str = default("inference.dtype"),
                max_tokens: int | None = None, max_windows_per_doc: int | None = None,
                chunk_docs: int = default("inference.chunk_docs"), tokenizer_workers: int | None = None,
                trust_remote_code: bool = False, progress: bool = True) -> dict[str, Any]:
    """`lqs score`: every record of `inputs` (files, globs, directories, URLs, as corpus.path takes
    them, or "-": JSONL on standard input) scored into `out` (or "-": standard output, JSONL), in
    input order, by the batched path of score_shard. Bad records stop the run (error) or go to
    `rejects` (skip; default: <out>.rejects.jsonl, written only if any). Outputs are checked
    before any scoring (check_outputs); an existing one is replaced only with `overwrite`, and
    an earlier rejects file is replaced or removed with the output. Nothing scored (every
    record rejected) is a RuntimeError, raised once the output and rejects are written."""
    from lqs.config import corpus_sources

    start = time.perf_counter()
    if "-" in inputs and len(inputs) > 1:
        raise ValueError("standard input (-) is read alone: give either - or files")
    sources = ["-"] if list(inputs) == ["-"] else corpus_sources(list(inputs)).files
    files = [source if source == "-" else source.path for source in sources]
    format = format_of(out, format, files)
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"--on-bad-record must be error or skip, not {on_bad_record!r}")
    if out == "-" and on_bad_record == "skip" and not rejects:
        raise ValueError("--out - with --on-bad-record skip needs --rejects PATH for the rejected records")
    unknown = [f for f in extra_fields if f not in output.EXTRA_FIELDS]
    if unknown:
        raise ValueError(f"unknown extra field {unknown[0]!r}: choose from {', '.join(output.EXTRA_FIELDS)}")
    if rejects == "-":
        raise ValueError("--rejects -: the rejects cannot go to standard output; give a file")
    rejects = rejects or (None if out == "-" else f"{out}.rejects.jsonl")
    check_outputs(inputs, scorer, {flag: path for flag, path in (("--out", out), ("--rejects", rejects))
                                   if path not in (None, "-")}, overwrite)
    meter = Meter()
    output_fields = corpus.output_fields(score_field, extra_fields)  # a record holding one is a bad record
    input_schema = None
    if format == "parquet":  # one schema, settled by a first pass over the input: a file can be read twice
        if files == ["-"]:
            raise ValueError("a Parquet output's schema is settled in a first pass over the input, and standard input "
                             "(-) cannot be read twice: give the input as a file, or --format jsonl or jsonl.gz")
        input_schema = output.corpus_schema(files, text_field, max_chars, output_fields)
    local_scorer = resolve_scorer(scorer, revision)
    # the provenance block's configuration: the options that can change a score or a scored record
    # (which records are scored, with which windows, batches, precision and fields); not the paths,
    # --overwrite, --tokenizer-workers or --no-progress. The scorer is in the block by its weights.
    options = dict(text_field=text_field, max_chars=max_chars, on_bad_record=on_bad_record, score_field=score_field,
                   extra_fields=list(extra_fields), format=format, device=device, dtype=dtype, max_tokens=max_tokens,
                   max_windows_per_doc=max_windows_per_doc, chunk_docs=chunk_docs,
                   trust_remote_code=trust_remote_code)
    bar = tqdm(desc="score", unit="doc", mininterval=2, disable=not progress)
    rate = TokenRate(bar)
    with contextlib.ExitStack() as stack:
        scorer_, pool, workers = stack.enter_context(loaded_scorer(
            local_scorer, device, dtype, trust_remote_code, None, tokenizer_workers))
        block = provenance.block(provenance.config_sha256(options), local_scorer, sources,
                                 None if Path(scorer).is_dir() else provenance.hub_source(scorer, local_scorer),
                                 scorer_digests=scorer_.weights_sha256)  # as loading checked them
        # without --overwrite, another run's output that appeared meanwhile is kept: this one fails
        rejected = stack.enter_context(_Rejects(rejects, overwrite))
        writer = stack.enter_context(ScoredWriter(out, format, [score_field, *extra_fields], input_schema,
                                                  provenance.parquet_metadata(block), replace=overwrite))
        records = corpus.iter_records(files, text_field, max_chars, output_fields=output_fields)
        records = checked_records(output.fitting(records, input_schema), on_bad_record, rejected)
        for chunk, result in scored_chunks(scorer_, pool, workers, records, meter, chunk_docs=chunk_docs,
                                           max_tokens=max_tokens, max_windows_per_doc=max_windows_per_doc):
            with meter.split("write"):
                writer.write(chunk, result.columns(score_field, extra_fields))
            bar.update(len(chunk))
            rate.add(meter.tokens - rate.tokens)
    bar.close()
    log.info(meter.report(f"scored {out}", time.perf_counter() - start, workers if pool is not None else None))
    if meter.documents == 0:
        raise RuntimeError(f"nothing was scored: all {rejected.rejected} records were rejected (the reasons are "
                           f"in {rejects}); the output {out} has no records")
    summary = {"documents_read": meter.documents + rejected.rejected, "documents_scored": meter.documents,
               "documents_rejected": rejected.rejected, "documents_truncated": meter.truncated,
               "tokens": meter.tokens, "output": out, "format": format,
               "rejects": rejects if rejected.rejected else None, provenance.SUMMARY_KEY: block}
    if meter.by_source:
        summary["mean_score_by_source"] = {k: t / n for k, (t, n) in sorted(meter.by_source.items())}
    return summary
