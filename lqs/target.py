"""The target set (LIMA by default) as proxy-tokenizer ids, split once into the annotation's part
(J) and a held-out part for the efficacy experiment (docs/stages.md#prepare_target,
docs/stages.md#the-efficacy-experiment): the library of stages `fetch_target`, `prepare_target`,
`fetch_eval_source` and `prepare_eval_source` (lqs/stages/).

The target set is a local JSONL/JSON/Parquet file, a local directory of data files (read with
`datasets`), or a Hugging Face data set repo: `fetch_split` checks access, downloads the repo's
snapshot with `huggingface_hub` (honouring HF_TOKEN, HF_HOME and HF_HUB_OFFLINE; a gated or
missing repo is a `HubAccessError`), loads the split from it with `datasets` (no loading scripts
are run) and writes it as Parquet for `tokenize_target`.

A LIMA record's `conversations` (a list of turns) becomes one text: each turn with its inner
newlines replaced by spaces, turns joined by newlines. Plain `text` fields are accepted too.

The held-out split is drawn over distinct texts before tokenizing (every copy of a held-out text
goes with it), so no conversation is both in J and in the evaluation set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lqs import corpus
from lqs.io import atomic_path, write_table
from lqs.tokenize import load_tokenizer, tokenize_windows


def record_text(record: Any, text_field: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object (got {type(record).__name__})")
    turns = record.get("conversations")
    if turns is not None:
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise ValueError("'conversations' is not a list of strings")
        text = "\n".join(t.replace("\r\n", " ").replace("\n", " ") for t in turns)
    elif isinstance(record.get(text_field), str):
        text = record[text_field]
    else:
        raise ValueError(f"neither 'conversations' nor a string {text_field!r} field")
    if not text.strip():
        raise ValueError("empty text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON can escape one ("\ud800"); no tokenizer takes it
        raise ValueError(f"the text holds a lone UTF-16 surrogate (\\u{ord(text[e.start]):04x}), "
                         "which is not Unicode text") from None
    return text


def _local_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) of a local JSONL, JSON or Parquet file; unreadable input names its place."""
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except pa.ArrowException as e:
            raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
        for row, record in enumerate(rows, start=1):
            yield f"{path}:{row}", record
        return
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte order mark is not the first record's
        try:
            if path.suffix == ".json":
                where = str(path)
                records = corpus.loads(f.read())
                if not isinstance(records, list):
                    raise ValueError(f"{path}: a JSON file must hold a list of records")
                for i, record in enumerate(records, start=1):
                    yield f"{path}[{i}]", record
                return
            for line_no, line in enumerate(f, start=1):
                where = f"{path}:{line_no}"
                if line.strip():
                    yield where, corpus.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
        except RecursionError:
            raise ValueError(f"{where}: JSON nested too deeply to read") from None


def load_local_dataset(directory: str | Path, split: str, name: str | None = None):
    """One split of a directory of data files (JSONL, JSON, Parquet, CSV, ...), as `datasets`
    reads a Hub data set: splits from the file names or the README's configs."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(str(directory), split=split)
    except ValueError as e:  # e.g. an unknown split
        raise ValueError(f"{name or directory}: {e}") from None


def load_hub_dataset(repo: str, split: str = "train", revision: str | None = None):
    """One split of a Hub data set repo, through the same access check and snapshot as the models."""
    from lqs.hub import hub_snapshot

    local = hub_snapshot(repo, revision=revision, repo_type="dataset", ignore_patterns=["*.py"])
    return load_local_dataset(local, split, f"{repo} [{split}]")


def _dataset_records(dataset, name: str) -> Iterator[tuple[str, Any]]:
    for i, record in enumerate(dataset):
        yield f"{name}[{i}]", record


def _hub_records(repo: str, split: str, revision: str | None) -> Iterator[tuple[str, Any]]:
    yield from _dataset_records(load_hub_dataset(repo, split, revision), f"{repo}[{split}]")


def target_texts(source: str, text_field: str = "text", split: str = "train",
                 revision: str | None = None) -> list[str]:
    path = Path(source)
    if path.is_dir():
        records = _dataset_records(load_local_dataset(path, split), f"{path}[{split}]")
    elif path.exists():
        records = _local_records(path)
    else:
        records = _hub_records(source, split, revision)
    texts = []
    for where, record in records:
        try:
            texts.append(record_text(record, text_field))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if not texts:
        raise ValueError(f"{source}: the target set is empty")
    return texts


def fetch_split(source: str, out: str, *, split: str = "train", revision: str | None = None) -> int:
    """Writes one split of a Hub data set repo (or a local data directory) to `out` as Parquet."""
    path = Path(source)
    dataset = load_local_dataset(path, split) if path.is_dir() else load_hub_dataset(source, split, revision)
    if len(dataset) == 0:
        raise ValueError(f"{source} [{split}]: the target set is empty")
    with atomic_path(out) as tmp:
        dataset.to_parquet(str(tmp))
    return len(dataset)


def split_target(texts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(J's texts, held-out texts), each in input order: a seeded round(eval_fraction × D) of the D
    distinct texts, at least one when eval_fraction > 0, is held out with all its copies."""
    if eval_fraction == 0:
        return texts, []
    distinct = list(dict.fromkeys(texts))
    n_eval = max(1, round(eval_fraction * len(distinct)))
    if n_eval >= len(distinct):
        raise ValueError(f"target.eval_fraction {eval_fraction}: the target set has {len(distinct)} distinct "
                         f"text(s), too few to hold {n_eval} out and keep one for the annotation (add target "
                         "records, or set target.eval_fraction 0 and give efficacy.eval_source)")
    held = {distinct[i] for i in np.random.default_rng(seed).choice(len(distinct), n_eval, replace=False)}
    return [t for t in texts if t not in held], [t for t in texts if t in held]


def _write_ids(path: str, ids: list[list[int]]) -> None:
    write_table(path, pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32()))}))


def target_split(source: str, *, text_field: str, split: str = "train", revision: str | None = None,
                 max_samples: int | None = None, eval_fraction: float = 0.0,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """(J's texts, held-out texts) of the target set: its first max_samples records, split by
    split_target. The one place both are decided: prepare_target tokenizes them, and the efficacy
    experiment's classifier arm trains on J's texts."""
    return split_target(target_texts(source, text_field, split, revision)[:max_samples], eval_fraction, seed)


def tokenize_target(source: str, tokenizer_dir: str, out: str, *, text_field: str, max_length: int,
                    split: str = "train", revision: str | None = None, max_samples: int | None = None,
                    eval_out: str | None = None, eval_fraction: float = 0.0, seed: int = 0) -> int:
    """Writes tokens.parquet (input_ids, J's part) and, with `eval_out`, the held-out part (empty
    when eval_fraction is 0): each text's first window of max_length. The target set is the
    source's first max_samples records. Returns the number of J's samples."""
    if eval_fraction > 0 and eval_out is None:
        raise ValueError("target.eval_fraction > 0 needs a file for the held-out part (--eval-out)")
    texts, held_out = target_split(source, text_field=text_field, split=split, revision=revision,
                                   max_samples=max_samples, eval_fraction=eval_fraction, seed=seed)
    tokenizer = load_tokenizer(tokenizer_dir)
    if eval_out is not None:
        _write_ids(eval_out, [w[0] for w in tokenize_windows(tokenizer, held_out, max_length)])
    _write_ids(out, [w[0] for w in tokenize_windows(tokenizer, texts, max_length)])
    return len(texts)
