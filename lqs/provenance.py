"""What produced an output: the lqs version, the resolved configuration, the scorer's weights and
the corpus files read, as one JSON-able block

    {"lqs_version": "0.1.0",
     "config_sha256": "<SHA-256 of the canonical JSON of the resolved config>" or null,
     "scorer": {"weights_sha256": {"<file>.safetensors": "<SHA-256>", ...},
                "settings": {"max_length": ..., "pooling": ...},
                "repo": "<hub repo>" or null, "revision": "<commit>" or null} or null,
     "corpus": [{"path": "<as given>", "bytes": <size, local files> or null,
                 "revision": "<pinned commit or version, URLs>" or null}, ...]}

The same inputs give the same block, byte for byte: no time stamps, no host names, and no paths
but those given. A writer stores it in a JSON summary, or in a Parquet file's schema metadata
(`parquet_metadata`).

In the workflow the configuration digest is not of the whole configuration: `config_digests`
gives, once, at DAG build (lqs.workflow_plan), the digest of the part each output depends on
(`scores`: the scored output and results/summary.json; `selection`: the training set and its
summary; `efficacy`: the efficacy summary), and each rule passes its output's digest in its
params, so that editing a key outside that part reruns nothing. The jobs that read the corpus and
the scorer (score_shard, gather_scores) make the block; the later ones (select_order, efficacy)
take its scorer and corpus from the summary before them (`derived`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PARQUET_KEY = b"lqs.provenance"
SUMMARY_KEY = "provenance"  # the block's key in a JSON summary
# in scorer.json: {"repo": ..., "revision": ...} of the hub repo a checkpoint was fetched from
# (fetch_scorer records it; a trained scorer has none: the weights' digests say what it is)
SCORER_SOURCE = "source"
_COMMIT = re.compile(r"[0-9a-f]{40}")


def lqs_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lqs")
    except PackageNotFoundError:
        return "unknown"


def _canonical(value: Any) -> Any:
    """JSON for the values a YAML config or a caller may hold beyond JSON's own."""
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"a {type(value).__name__} ({value!r}) has no JSON form")


def canonical_json(obj: Any) -> str:
    """Keys sorted, no spaces, non-ASCII kept as is: one text for one value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical)


def config_sha256(config: Mapping | None) -> str | None:
    """The SHA-256 of the canonical JSON of a resolved configuration; None for none."""
    if config is None:
        return None
    try:
        text = canonical_json(dict(config))
    except TypeError as e:
        raise ValueError(f"provenance: the configuration cannot be written as JSON: {e}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hub_source(repo: str, snapshot_dir: str | os.PathLike) -> dict[str, str | None]:
    """{"repo", "revision"} of a hub snapshot: huggingface_hub's snapshot directory
    (snapshots/<commit>) is named by the commit it holds, whatever branch or tag was asked for."""
    name = Path(snapshot_dir).name
    return {"repo": repo, "revision": name if _COMMIT.fullmatch(name) else None}


def scorer_entry(scorer_dir: str | os.PathLike | None, source: Mapping[str, str | None] | None = None,
                 digests: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The SHA-256 of each safetensors file of a scorer checkpoint as it is now (lqs.scorer
    weights_digests, what scorer.json records and loading checks), its scoring settings (scorer.json
    but the digests and source: max_length and pooling, which the weights do not fix), and the hub
    repo and commit it was fetched from: `source`, else what its scorer.json records. `digests`:
    those lqs.scorer.load has just checked (Scorer.weights_sha256), not hashed again."""
    if scorer_dir is None:
        return None
    from lqs.scorer import SCORER_CONFIG, WEIGHTS_DIGESTS, weights_digests

    path = Path(scorer_dir)
    config_path = path / SCORER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a scorer checkpoint (no {SCORER_CONFIG})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}): the scorer checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not a JSON object: the scorer checkpoint is damaged")
    if source is None:
        source = config.get(SCORER_SOURCE) if isinstance(config.get(SCORER_SOURCE), dict) else {}
    settings = {k: v for k, v in config.items() if k not in (WEIGHTS_DIGESTS, SCORER_SOURCE)}
    return {"weights_sha256": dict(digests) if digests else weights_digests(path), "settings": settings,
            "repo": source.get("repo"), "revision": source.get("revision")}


def corpus_entries(files: Sequence[Any]) -> list[dict[str, Any]]:
    """One entry per corpus file (lqs.sources CorpusFile, or a path), in order: a local file's size
    in bytes; a URL's pinned commit (hf://datasets/<repo>@<commit>/...) or listing version.
    Standard input (`lqs score -`) is an entry with neither."""
    from lqs.sources import CorpusFile, is_url, parse_hub_url

    entries = []
    for file in files:
        if isinstance(file, (str, os.PathLike)):
            file = CorpusFile(os.fspath(file))
        path = str(file.path)
        if path == "-":
            entries.append({"path": path, "bytes": None, "revision": None})
            continue
        if not is_url(path):
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                raise FileNotFoundError(f"corpus file not found: {path}") from None  # as the corpus reader says
            entries.append({"path": path, "bytes": size, "revision": None})
            continue
        revision = file.version
        if revision is None and path.startswith("hf://datasets/"):
            revision = parse_hub_url(path)[1]
        entries.append({"path": path, "bytes": None, "revision": revision})
    return entries


def block(config_digest: str | None, scorer_dir: str | os.PathLike | None, corpus_files: Sequence[Any],
          scorer_source: Mapping[str, str | None] | None = None,
          scorer_digests: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The provenance block (see the module's docstring) with the configuration's digest given
    (config_digests'), as a workflow job makes it; `scorer_digests` as scorer_entry's `digests`."""
    return {"lqs_version": lqs_version(), "config_sha256": config_digest,
            "scorer": scorer_entry(scorer_dir, scorer_source, scorer_digests), "corpus": corpus_entries(corpus_files)}


def provenance(config: Mapping | None, scorer_dir: str | os.PathLike | None,
               corpus_files: Sequence[Any]) -> dict[str, Any]:
    """The provenance block (see the module's docstring)."""
    return block(config_sha256(config), scorer_dir, corpus_files)


def derived(upstream: Mapping[str, Any] | None, config_digest: str | None) -> dict[str, Any]:
    """The block of an output made from another's (the selection from the scored output, the
    efficacy experiment from the selection): its scorer and corpus, this output's configuration
    digest and this lqs's version. No upstream block: no scorer, no corpus."""
    return {"lqs_version": lqs_version(), "config_sha256": config_digest,
            "scorer": upstream["scorer"] if upstream else None, "corpus": upstream["corpus"] if upstream else []}


def read_summary_block(path: str | os.PathLike) -> dict[str, Any]:
    """The block of a JSON summary (results/summary.json, results/selection/summary.json)."""
    from lqs.io import read_json

    summary = read_json(path)
    found = summary.get(SUMMARY_KEY) if isinstance(summary, dict) else None
    if not isinstance(found, dict):
        raise ValueError(f"{path} has no {SUMMARY_KEY} block (written by an older lqs?): rerun the rule that "
                         "writes it")
    return found


def read_parquet_block(path: str | os.PathLike) -> dict[str, Any] | None:
    """The block in a Parquet file's key-value metadata, or None if it has none."""
    from lqs.io import parquet_file

    metadata = parquet_file(str(path)).schema_arrow.metadata or {}
    return json.loads(metadata[PARQUET_KEY]) if PARQUET_KEY in metadata else None


def parquet_metadata(block: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The block as Parquet key-value metadata (canonical JSON under b"lqs.provenance"), to merge
    into a schema's: `schema.with_metadata({**(schema.metadata or {}), **parquet_metadata(block)})`."""
    return {PARQUET_KEY: canonical_json(dict(block)).encode("utf-8")}


# ----------------------------------------------------------------------------------------------
# The workflow's configuration digests: each over the configuration its output depends on.


def _normalized(paths: str | Sequence[str] | None) -> set[str]:
    if paths is None:
        return set()
    return {os.path.normpath(p) for p in ([paths] if isinstance(paths, str) else paths)}


def scores_config(config: Mapping[str, Any], output_format: str,
                  demo_files: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved configuration (defaults filled in) that the scored output depends on: the keys
    the rules from the corpus to the scored output read (their params), and of those only the
    ones that say what is computed, not where it is written (no corpus.path, whose files the block
    lists; no output.path, rejects_path or layout). With scorer.checkpoint no rule reads the
    proxy's, the annotation's or the scorer training's keys, so they are left out. `output_format`:
    the resolved output.format; `demo_files`: the files rule demo_data writes (demo.* counts when
    the corpus or the target set is one of them)."""
    from lqs.config import names_a_source

    c = config
    sections: dict[str, Any] = {
        "device": c["device"],
        "corpus": {k: v for k, v in c["corpus"].items() if k != "path"},
        "inference": dict(c["inference"]),
        "output": {"format": output_format, "score_field": c["output"]["score_field"],
                   "extra_fields": list(c["output"]["extra_fields"])},
        "models": {"trust_remote_code": c["models"]["trust_remote_code"]},
    }
    demo = _normalized(list(demo_files))
    uses_demo = bool(_normalized(c["corpus"]["path"]) & demo)
    checkpoint = c["scorer"]["checkpoint"]
    if checkpoint:
        sections["scorer"] = {"checkpoint": checkpoint, "checkpoint_revision": c["scorer"]["checkpoint_revision"]}
    else:
        models = c["models"]
        proxy, tokenizer = models["proxy"], models["tokenizer"]
        if names_a_source(tokenizer):  # a tokenizer of its own
            tokenizer = {k: v for k, v in tokenizer.items() if k != "vocab_size"}
        elif "arch" in proxy:  # trained on the corpus
            tokenizer = {"vocab_size": tokenizer.get("vocab_size")}
        else:  # the proxy's own
            tokenizer = {}
        sections["models"] |= {"proxy": proxy, "scorer": models["scorer"], "tokenizer": tokenizer}
        if "arch" in proxy:  # pretrained here
            sections["models"]["pretrain"] = models["pretrain"]
        sections |= {"target": dict(c["target"]), "proxy": dict(c["proxy"]), "annotation": dict(c["annotation"]),
                     "scorer": {k: v for k, v in c["scorer"].items() if k not in ("checkpoint", "checkpoint_revision")}}
        uses_demo = uses_demo or bool(_normalized(c["target"]["source"]) & demo)
    if uses_demo:
        sections["demo"] = dict(c["demo"])
    return sections


def selection_config(config: Mapping[str, Any], output_format: str, demo_files: Iterable[str] = ()) -> dict[str, Any]:
    """scores_config and what select_order adds: selection.* but path, ordering.*."""
    return scores_config(config, output_format, demo_files) | {
        "selection": {k: v for k, v in config["selection"].items() if k != "path"},
        "ordering": dict(config["ordering"])}


def efficacy_config(config: Mapping[str, Any], output_format: str, demo_files: Iterable[str] = ()) -> dict[str, Any]:
    """selection_config and the efficacy experiment's own: efficacy.* and target.* (its evaluation
    set is the target's held-out part unless efficacy.eval_source is given)."""
    return selection_config(config, output_format, demo_files) | {"efficacy": dict(config["efficacy"]),
                                                                  "target": dict(config["target"])}


def config_digests(config: Mapping[str, Any], *, output_format: str, demo_files: Iterable[str] = ()) -> dict[str, str]:
    """{"scores", "selection", "efficacy"}: the SHA-256 of each output's configuration (above), for
    the workflow's params (lqs.workflow_plan computes them once, at DAG build)."""
    demo_files = list(demo_files)
    return {name: config_sha256(part(config, output_format, demo_files)) for name, part in
            (("scores", scores_config), ("selection", selection_config), ("efficacy", efficacy_config))}
