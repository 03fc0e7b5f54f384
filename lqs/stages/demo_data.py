"""Stage `demo_data`: the offline demo's corpus and LIMA-shaped target set (docs/stages.md#demo_data)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lqs import demo
from lqs.io import atomic_open
from lqs.stage import Arg, Stage


@dataclass(frozen=True)
class Settings:
    num_docs: int  # demo.num_docs
    num_target: int  # demo.num_target
    seed: int  # demo.seed


def _write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _plan(num_docs: int) -> dict[str, int]:
    wanted = {"python_docs": round(demo.PYTHON_DOCS_FRACTION * num_docs)}
    rest = num_docs - wanted["python_docs"]
    for i, source in enumerate(demo.SOURCES[1:]):
        wanted[source] = rest // 3 + (1 if i < rest % 3 else 0)
    return wanted


def demo_data(corpus_path: str | Path, target_path: str | Path, settings: Settings) -> dict[str, int]:
    """Writes corpus JSONL and target JSONL; returns counts per corpus source.

    Corpus lines: {"id", "text", "source"}, sources as in lqs.demo.SOURCES. Target lines (LIMA layout):
    {"conversations": [question, answer], "source": "python_docs_qa"}, built from docstrings
    of objects not used in the corpus. If too few docstrings exist for both, "python_docs" and
    the target shrink (each keeps min(request, half the docstrings)); none is used twice.
    """
    num_docs, num_target = settings.num_docs, settings.num_target
    if num_docs < 0 or num_target < 0:
        raise ValueError("num_docs and num_target must be >= 0")
    rng = random.Random(settings.seed)
    counts = _plan(num_docs)

    pool = list(demo.docstrings())
    order = list(range(len(pool)))
    rng.shuffle(order)
    n_py, n_target = counts["python_docs"], num_target
    if n_py + n_target > len(pool):  # each side keeps min(request, half the pool); the rest goes to the other
        half = len(pool) // 2
        if n_py <= half:
            n_target = len(pool) - n_py
        elif n_target <= len(pool) - half:
            n_py = len(pool) - n_target
        else:
            n_py, n_target = half, len(pool) - half
    counts["python_docs"] = n_py
    corpus_docs = [pool[i] for i in order[:n_py]]
    target_docs = [pool[i] for i in order[n_py:n_py + n_target]]

    items: list[tuple[str, str]] = [(f"{qual}\n\n{doc}", "python_docs") for qual, _, doc in corpus_docs]
    word_source = [doc for _, _, doc in corpus_docs]
    items += [(demo.shuffled_words(rng, word_source), "shuffled_words") for _ in range(counts["shuffled_words"])]
    items += [(demo.boilerplate(rng), "boilerplate") for _ in range(counts["boilerplate"])]
    items += [(demo.random_chars(rng), "random_chars") for _ in range(counts["random_chars"])]
    rng.shuffle(items)

    width = max(5, len(str(max(len(items) - 1, 0))))
    corpus = (
        {"id": f"demo-{i:0{width}d}", "text": text, "source": source} for i, (text, source) in enumerate(items)
    )
    target = [
        {
            "conversations": [rng.choice(demo.QUESTION_TEMPLATES[kind]).format(name=qual), doc],
            "source": demo.TARGET_SOURCE,
        }
        for qual, kind, doc in target_docs
    ]
    _write_jsonl_atomic(Path(corpus_path), corpus)
    _write_jsonl_atomic(Path(target_path), target)
    return counts


STAGE = Stage(
    help="build the offline demo corpus and target set",
    run=demo_data,
    args=(Arg("corpus_path"), Arg("target_path")),
    settings=Settings,
)
