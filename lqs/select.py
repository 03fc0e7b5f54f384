"""Stage `select_order`: scored.jsonl -> the training set, selected and in training order (DESIGN.md §9).

Memory does not grow with the text: one pass over scored.jsonl keeps each line's byte offset,
length and score (numpy arrays); the chosen lines are then copied byte for byte by offset.
Ties in score are broken by input order, earlier first, in every selection and ordering.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from lqs import corpus
from lqs.io import atomic_open, parquet_file, write_json, write_table

ORDER_SCHEMA = pa.schema([("doc_id", pa.int64()), ("score", pa.float64()), ("tokens", pa.int64())])
_CHUNK = 1 << 22


def line_spans(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte offset and length of every line (its newline included) of a file."""
    ends, size, last = [np.zeros(0, np.int64)], 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            ends.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n")) + size + 1)
            size, last = size + len(chunk), chunk[-1:]
    if last != b"\n":
        ends.append(np.array([size]))  # a last line without a newline
    ends = np.concatenate(ends).astype(np.int64)
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    return starts, ends - starts


def _scores_arrow(path: str, field: str, n: int) -> np.ndarray | None:
    """The score field of every line, parsed by Arrow (about 8x faster than json.loads per line,
    in 1 MiB blocks: larger blocks cost memory); None when Arrow cannot: a bad line, which the
    exact per-line parser then names, or a line longer than a block, which it reads."""
    options = pajson.ParseOptions(explicit_schema=pa.schema([(field, pa.float64())]),
                                  unexpected_field_behavior="ignore")
    try:
        reader = pajson.open_json(path, parse_options=options)
        column = pa.chunked_array([b.column(0) for b in reader], pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    scores = column.to_numpy()
    if len(scores) != n or column.null_count or not np.isfinite(scores).all():
        return None  # blank lines, missing or non-finite scores: let the exact parser name the line
    return scores


def _scores_python(path: str, field: str) -> np.ndarray:
    scores = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                raise ValueError(f"{where}: an empty line, not a scored document")
            try:
                record = corpus.loads(line)  # gather keeps integers of any length
            except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, too deep
                raise ValueError(f"{where}: invalid JSON ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: not a JSON object")
            score = record.get(field)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(f"{where}: field {field!r} (output.score_field) is {score!r}, "
                                 "not a finite number; rerun gather_scores")
            scores.append(float(score))
    return np.array(scores, np.float64)


def read_scored(path: str, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, line offsets, line lengths) of scored.jsonl, one entry per line."""
    starts, lengths = line_spans(path)
    scores = _scores_arrow(path, field, len(starts)) if len(starts) else np.zeros(0)
    if scores is None:
        scores = _scores_python(path, field)
    return scores, starts, lengths


def document_tokens(shard_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(doc ids ascending, tokens per document = the sum of its windows' lengths)."""
    ids, lengths = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for path in shard_paths:
        shard = parquet_file(path)
        for i in range(shard.num_row_groups):  # one at a time: iter_batches reads far ahead
            group = shard.read_row_group(i, columns=["doc_id", "input_ids"])
            doc, length = group.column(0).to_numpy(), pc.list_value_length(group.column(1)).to_numpy()
            if len(doc):  # sum each run of a document's windows: memory holds documents, not windows
                runs = np.flatnonzero(np.concatenate(([True], doc[1:] != doc[:-1])))
                ids.append(doc[runs])
                lengths.append(np.add.reduceat(length.astype(np.int64), runs))
    doc_ids, inverse = np.unique(np.concatenate(ids), return_inverse=True)
    tokens = np.bincount(inverse, weights=np.concatenate(lengths), minlength=len(doc_ids))
    return doc_ids, tokens.astype(np.int64)


def keep_count(ratio: float, n: int) -> int:
    """floor(ratio * n), with ratio read as the decimal written in the config (0.29 * 100 is
    28.999… in binary floating point)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"selection.ratio must be in (0, 1], got {ratio}")
    k = math.floor(Fraction(repr(float(ratio))) * n)
    if k == 0:
        raise ValueError(f"selection.ratio {ratio} keeps floor({ratio} * {n}) = 0 of the {n} scored "
                         "documents; raise selection.ratio")
    return k


def select(scores: np.ndarray, *, method: str = "top", ratio: float = 1.0, threshold: float | None = None,
           temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """Indices of the selected documents (ascending, i.e. input order) and the cut-off: the lowest
    selected score (top), the threshold (threshold), the lowest selected noisy key (gumbel)."""
    n = len(scores)
    if n == 0:
        raise ValueError("no scored documents: nothing to select")
    if method == "threshold":
        if threshold is None:
            raise ValueError("selection.method 'threshold' needs selection.threshold (a number); it is null")
        chosen = np.flatnonzero(scores > threshold)
        if len(chosen) == 0:
            raise ValueError(f"no document scores above selection.threshold {threshold} "
                             f"(the highest score is {scores.max()}); lower selection.threshold")
        return chosen, float(threshold)
    if method == "top":
        keys = scores
    elif method == "gumbel":
        if not temperature > 0:
            raise ValueError(f"selection.temperature must be > 0, got {temperature}")
        keys = scores + temperature * np.random.default_rng(seed).gumbel(size=n)
    else:
        raise ValueError(f"selection.method must be top, threshold or gumbel, got {method!r}")
    chosen = np.argsort(-keys, kind="stable")[:keep_count(ratio, n)]  # stable: ties by input order
    return np.sort(chosen), float(keys[chosen].min())


def folding(n: int, folds: int) -> np.ndarray:
    """DELT eq. 10 on positions 0..n-1 of a sorted list s: s[0::L] + s[1::L] + … + s[L-1::L]."""
    return np.argsort(np.arange(n) % folds, kind="stable")


def order(scores: np.ndarray, *, method: str = "folding", folds: int = 3, seed: int = 0) -> np.ndarray:
    """The training order: a permutation of positions into `scores` (given in input order)."""
    ascending = np.argsort(scores, kind="stable")  # ties in input order
    if method == "folding":
        if folds < 1:
            raise ValueError(f"ordering.folds must be >= 1, got {folds}")
        return ascending[folding(len(scores), folds)]
    if method == "ascending":
        return ascending
    if method == "descending":
        return np.argsort(-scores, kind="stable")
    if method == "shuffle":
        return np.random.default_rng(seed).permutation(len(scores))
    if method == "input":
        return np.arange(len(scores))
    raise ValueError(f"ordering.method must be folding, ascending, descending, shuffle or input, got {method!r}")


def select_order(scored_path: str, shard_paths: Sequence[str], out: str, order_out: str, summary_out: str, *,
                 selection: dict, ordering: dict, score_field: str) -> dict:
    scores, starts, lengths = read_scored(scored_path, score_field)
    doc_ids, tokens = document_tokens(shard_paths)
    if len(scores) != len(doc_ids):
        raise RuntimeError(f"{scored_path} has {len(scores)} lines but the tokenized corpus has "
                           f"{len(doc_ids)} documents; rerun gather_scores")
    if len(scores) == 0:
        raise ValueError(f"{scored_path} has no documents (every one was rejected?): nothing to select")
    chosen, cutoff = select(scores, **selection)
    chosen = chosen[order(scores[chosen], **ordering)]

    with open(scored_path, "rb", buffering=0) as src, atomic_open(out, "wb") as dst:
        fd = src.fileno()
        for start, length in zip(starts[chosen].tolist(), lengths[chosen].tolist()):
            line = os.pread(fd, length, start)
            dst.write(line if line.endswith(b"\n") else line + b"\n")  # a last line without newline
    write_table(order_out, pa.table([doc_ids[chosen], scores[chosen], tokens[chosen]], schema=ORDER_SCHEMA))

    summary = {
        "documents_scored": len(scores), "documents_selected": len(chosen),
        "tokens_scored": int(tokens.sum()), "tokens_selected": int(tokens[chosen].sum()),
        "score_cutoff": cutoff, "lowest_selected_score": float(scores[chosen].min()),
        "selection": selection, "ordering": ordering, "output": str(out), "order": str(order_out),
    }
    write_json(summary_out, summary)
    return summary
