"""Stage `prepare_target`: the target set (LIMA by default) as proxy-tokenizer ids (DESIGN.md §3).

A LIMA record's `conversations` (a list of turns) becomes one text: each turn with its inner
newlines replaced by spaces, turns joined by newlines. Plain `text` fields are accepted too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from lqs.io import write_table
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
    return text


def _local_records(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        for row, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:{row}", record
        return
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".json":
            for i, record in enumerate(json.load(f), start=1):
                yield f"{path}[{i}]", record
            return
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield f"{path}:{line_no}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None


def _hub_records(repo: str, split: str, revision: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    for i, record in enumerate(datasets.load_dataset(repo, split=split, revision=revision)):
        yield f"{repo}[{split}][{i}]", record


def target_texts(source: str, text_field: str = "text", split: str = "train",
                 revision: str | None = None) -> list[str]:
    path = Path(source)
    records = _local_records(path) if path.exists() else _hub_records(source, split, revision)
    texts = []
    for where, record in records:
        try:
            texts.append(record_text(record, text_field))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if not texts:
        raise ValueError(f"{source}: the target set is empty")
    return texts


def prepare_target(source: str, tokenizer_dir: str, out: str, *, text_field: str, max_length: int,
                   split: str = "train", revision: str | None = None, max_samples: int | None = None) -> int:
    """Writes tokens.parquet (input_ids): each target text's first window of max_length."""
    texts = target_texts(source, text_field, split, revision)[:max_samples]
    ids = [w[0] for w in tokenize_windows(load_tokenizer(tokenizer_dir), texts, max_length)]
    write_table(out, pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32()))}))
    return len(ids)
