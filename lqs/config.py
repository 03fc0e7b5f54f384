"""The workflow's configuration: merging overrides, short validation errors, and the checks of
settings that contradict each other. Called by rules/common.smk at DAG build, before any job.

Snakemake merges `--configfile` files and `--config` values into config/config.yaml key by key.
Two things it cannot know are done here: a model source given in an override (`repo`, `path`
or `arch`) replaces the default's source instead of mixing with it, and `--config` values,
which Snakemake passes as strings, are read as YAML where the schema wants a number, boolean,
null, list or mapping.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lqs import corpus, paths, sources
from lqs.splits import Split

log = logging.getLogger(__name__)

MODEL_SOURCE_KEYS = {"repo", "path", "arch"}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key(s)."""


def key_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


# ----------------------------------------------------------------------------------------------
# merging


def replace_model_sources(config: dict, overrides: Sequence[Mapping[str, Any]]) -> None:
    """`overrides` are the --configfile files, in order, then --config. Where one of them names a
    model's source, that model becomes its entry alone (`repo` replaces an earlier `arch`, and so
    on), and later overrides without a source merge into it. `models.tokenizer` given in an
    override replaces the default's entirely (`{}`: the proxy's own tokenizer)."""
    if not isinstance(config.get("models"), dict):
        return
    for name in ("proxy", "scorer", "tokenizer"):
        entry = None  # as merged, unless an override replaces it
        for override in overrides:
            models = override.get("models")
            given = models.get(name) if isinstance(models, Mapping) else None
            if not isinstance(given, Mapping):
                continue
            replaces = MODEL_SOURCE_KEYS & set(given) or (name == "tokenizer" and (entry is None or not given))
            if replaces:
                entry = copy.deepcopy(dict(given))
            elif entry is not None:
                _merge(entry, given)
        if entry is not None:
            config["models"][name] = entry


def _merge(into: dict, given: Mapping) -> None:
    """`given` merged into `into` key by key, nested mappings merged too (as Snakemake merges)."""
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _schema_at(schema: Mapping, parts: Sequence[str]) -> Mapping | None:
    node = schema
    for part in parts:
        if "$ref" in node:
            node = _resolve(schema, node["$ref"])
        node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return _resolve(schema, node["$ref"]) if "$ref" in node else node


def _resolve(schema: Mapping, ref: str) -> Mapping:
    node = schema
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)  # JSON first: YAML 1.1 reads 1e-3 as a string
    except ValueError:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


def _valid(value: Any, node: Mapping | None, schema: Mapping) -> bool:
    """Whether `value` is valid for the schema node (None: a free-form mapping's entry, such as
    a models.proxy.arch kwarg: anything is)."""
    from jsonschema import Draft202012Validator

    return node is None or Draft202012Validator({**node, "definitions": schema.get("definitions", {})}).is_valid(value)


def coerce_cli_values(config: dict, cli: Mapping[str, Any], schema: Mapping) -> None:
    """`--config` values reach the workflow as strings, nested ones too
    (`corpus={"num_shards": 4}` gives "4", `output={"path": null}` gives "null"): each string that
    `cli` set is parsed as JSON, else YAML, and kept parsed where the parsed value is valid for its
    key's schema node; a key that takes only strings keeps the string, but not a null
    (`corpus={"path": null}`): that becomes null, which validation then refuses naming the key,
    rather than a path named "null"."""

    def walk(given: Any, parts: list[str]) -> None:
        if isinstance(given, Mapping):
            for key, value in given.items():
                walk(value, parts + [str(key)])
        elif isinstance(given, str) and (value := _parsed(given)) != given \
                and (value is None or _valid(value, _schema_at(schema, parts), schema)):
            node = config
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = value

    walk(cli, [])


# ----------------------------------------------------------------------------------------------
# validation


def schema_errors(config: Mapping, schema: Mapping) -> list[str]:
    """One line per problem, naming the key path: never the schema."""
    from jsonschema import Draft202012Validator

    errors = []
    for error in sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path)):
        where = key_path(error.absolute_path)
        if error.validator == "oneOf" and isinstance(error.instance, Mapping) and \
                "model" in error.schema.get("description", "") + str(error.schema.get("oneOf")):
            given = sorted(MODEL_SOURCE_KEYS & set(error.instance))
            errors.append(f"{where}: give exactly one of repo, path or arch"
                          f" (got {', '.join(given) if given else 'none'})")
        elif error.validator == "additionalProperties":
            errors.append(f"{where}: {error.message}")
        elif error.validator == "required":
            missing = key_path([*error.absolute_path, *re.findall(r"^'(.+)' is a required property$", error.message)])
            if error.schema_path[0] == "then":  # the schema's only if/then: no scorer.checkpoint
                errors.append(f"{missing}: required unless scorer.checkpoint is set (a pretrained scorer"
                              " needs no proxy and no scorer base)")
            else:
                errors.append(f"{missing}: required")
        else:
            value = json.dumps(error.instance, default=str)
            if len(value) > 60:
                value = value[:57] + "..."
            errors.append(f"{where}: {value} is not valid: {_short(error)}")
    return errors


def _short(error) -> str:
    if error.validator == "type":
        value = error.validator_value
        return f"expected {' or '.join(value) if isinstance(value, list) else value}"
    if error.validator == "pattern":
        return f"expected {error.schema.get('description', error.validator_value)}"
    if error.validator == "enum":
        return f"expected one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "oneOf":
        alternatives = []
        for alt in error.validator_value:
            if "enum" in alt:
                alternatives.append(" or ".join(map(str, alt["enum"])))
            elif "type" in alt:
                alternatives.append(f"a{'n' if alt['type'][0] in 'aeiou' else ''} {alt['type']}"
                                    + (f" >= {alt['minimum']}" if "minimum" in alt else ""))
        return "expected " + " or ".join(alternatives) if alternatives else error.message
    return error.message


def consistency_errors(config: Mapping) -> list[str]:
    """Settings valid one by one that cannot run together (config with defaults filled; the
    schema already checked each value, the device's form included)."""
    errors = []
    annotation, proxy, scorer = config["annotation"], config["proxy"], config["scorer"]
    # With a pretrained scorer (scorer.checkpoint) there is no annotation and no scorer training.
    if scorer["checkpoint"] is None and annotation["interval"] > annotation["steps"]:
        errors.append(f"annotation.interval ({annotation['interval']}) is larger than annotation.steps "
                      f"({annotation['steps']}): only step 0 would be annotated; lower the interval")
    if scorer["checkpoint"] is None and proxy["num_parts"] > proxy["size"]:
        errors.append(f"proxy.num_parts ({proxy['num_parts']}) is larger than proxy.size ({proxy['size']}):"
                      " a part would hold no sample")
    valid = scorer["valid_size"]
    if scorer["checkpoint"] is None and valid >= 1 and valid >= proxy["size"]:
        errors.append(f"scorer.valid_size ({valid}) must be smaller than proxy.size ({proxy['size']}):"
                      " nothing would be left to train the scorer on")
    selection = config.get("selection", {})
    if selection.get("method") == "threshold" and selection.get("threshold") is None:
        errors.append("selection.threshold: required when selection.method is threshold")
    arms = config.get("efficacy", {}).get("arms", [])
    if len(arms) > 1 and "conventional" not in arms:
        errors.append(f"efficacy.arms: {', '.join(arms)} without conventional, the arm every other is compared "
                      "with; add conventional (or run one arm)")
    return errors


# ----------------------------------------------------------------------------------------------
# files


def corpus_sources(patterns: str | Sequence[str], pins: Mapping[str, str] | None = None) -> sources.Corpus:
    """The corpus files of corpus.path (lqs.sources: local paths, globs, directories, hf:// and
    other fsspec URLs), hub data sets pinned to a commit; an entry that names no file, a hub repo
    that cannot be read or a missing fsspec package is a ConfigError naming it."""
    try:
        return sources.resolve(patterns, pins)
    except sources.SourceError as e:
        raise ConfigError(str(e)) from None


def corpus_files(patterns: str | Sequence[str]) -> list[str]:
    """The corpus files in the given order, each glob's or directory's files sorted, a file
    reached twice read once (sources.resolve)."""
    return [file.path for file in corpus_sources(patterns).files]


def names_a_source(model: Mapping) -> bool:
    """Whether a models.* entry says where to fetch it from (a hub `repo` or a local `path`)
    rather than how to build it (`arch`; or, for models.tokenizer, `{}`: the proxy's own)."""
    return bool({"repo", "path"} & set(model))


def annotated_steps(steps: int, interval: int) -> list[int]:
    """The annotated steps S: every interval-th SGD step t < steps (annotation.steps and
    annotation.interval). The one place they are computed: the workflow plan (lqs.workflow_plan) and
    the trajectory stage call this."""
    return [t for t in range(steps) if t % interval == 0]


def is_local_source(source: str, results: str) -> bool:
    """Whether a source (target.source, efficacy.eval_source, scorer.checkpoint) is a local path,
    one that exists or that the workflow writes under `results`, rather than a hub repo id."""
    return os.path.exists(source) or Path(source).parts[:1] == (results,)


@dataclass(frozen=True)
class Outputs:
    """The scored output's format and path and the selection's path, as resolve_outputs settles
    them from the config (which it leaves as the user wrote it)."""

    format: str
    path: str
    rejects_path: str
    selection_path: str

    def by_key(self) -> dict[str, str]:
        """The paths by the config keys that name them."""
        return {"output.path": self.path, "output.rejects_path": self.rejects_path,
                "selection.path": self.selection_path}


def resolve_outputs(config: Mapping, files: Sequence[str]) -> tuple[Outputs, list[str]]:
    """output.format (null: by output.path's extension in layout single, else selection.path's,
    else by the corpus), output.path and selection.path (null: by format and layout), and the
    errors of an output path of the wrong kind or of an extension that contradicts the format:
    a `.jsonl` file never holds Parquet."""
    from lqs.formats import EXTENSIONS
    from lqs.output import default_format

    output, selection = config["output"], config["selection"]
    per_shard = output["layout"] == "per_shard"
    named = {"output.path": output["path"]} if not per_shard else {}  # a per_shard directory has no format
    named["selection.path"] = selection["path"]
    by_extension = {key: fmt for key, path in named.items() if path and (fmt := paths.extension_format(path))}
    errors = []
    if output["format"] is None and by_extension:
        decided_by = next(iter(by_extension))
        format = by_extension[decided_by]
        reason = f"output.format null takes it from {decided_by} {named[decided_by]!r}"
    else:
        format = output["format"] or default_format(files)
        reason = f"output.format is {format}"
    for key, fmt in by_extension.items():
        if fmt != format:
            errors.append(f"{key}: {named[key]!r} names a {fmt} file, but the output is {format}"
                          f" ({reason}); make the extension and output.format agree")
    extension = EXTENSIONS[format]
    path = output["path"] or ("scored" if per_shard else f"scored{extension}")
    if per_shard and os.path.isfile(path):
        errors.append(f"output.path: {path!r} is a file, but output.layout per_shard writes a directory of parts"
                      " there; name a directory")
    if not per_shard and os.path.isdir(path):
        errors.append(f"output.path: {path!r} is a directory; output.layout single writes one file (or set"
                      " output.layout: per_shard)")
    return Outputs(format, path, output["rejects_path"], selection["path"] or f"selected{extension}"), errors


def path_errors(config: Mapping, outputs: Outputs, results: str, own: Iterable[str] = ()) -> list[str]:
    """Every path the workflow writes (output.path: the file or the per_shard directory,
    output.rejects_path, selection.path, and the `results` directory) checked against each local
    input (corpus.path's entries, and target.source, efficacy.eval_source, scorer.checkpoint and
    the models' `path` when they are local paths) and against each other
    (lqs.paths.path_conflicts). `own`: inputs the workflow writes itself (the demo's corpus and
    target set, under `results`), which are no conflict."""
    own = {os.path.realpath(p) for p in own}

    def local(entries: str | Sequence[str] | None) -> list[str]:
        entries = [entries] if isinstance(entries, str) else entries or []
        return [e for e in entries if not sources.is_url(e) and os.path.realpath(e) not in own]

    inputs = {"corpus.path": local(config["corpus"]["path"])}
    models = config.get("models") or {}
    for key, source in (("target.source", config["target"]["source"]),
                        ("efficacy.eval_source", config["efficacy"]["eval_source"]),
                        ("scorer.checkpoint", config["scorer"]["checkpoint"]),
                        *((f"models.{name}.path", (models.get(name) or {}).get("path"))
                          for name in ("proxy", "scorer", "tokenizer"))):
        if source and os.path.exists(source):  # else a hub id
            inputs[key] = local(source)
    written = outputs.by_key() | {f"{results}/ (the workflow's own files)": results}
    return paths.path_conflicts(inputs, written) + output_name_errors(outputs.by_key())


# every configured path: read (corpus.path's entries, the sources) or written (the outputs)
CONFIGURED_PATHS = (("corpus", "path"), ("target", "source"), ("efficacy", "eval_source"), ("scorer", "checkpoint"),
                    ("models", "proxy", "path"), ("models", "scorer", "path"), ("models", "tokenizer", "path"),
                    ("output", "path"), ("output", "rejects_path"), ("selection", "path"))


def path_character_errors(config: Mapping) -> list[str]:
    """A configured path with a newline or a NUL: no file system path holds a NUL, and a newline
    splits every list of paths (logs, Snakemake's own file lists) in two."""
    errors = []
    for parts in CONFIGURED_PATHS:
        value: Any = config
        for part in parts:
            value = value.get(part) if isinstance(value, Mapping) else None
        for entry in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            bad = next((name for char, name in (("\0", "a NUL"), ("\n", "a newline"), ("\r", "a carriage return"))
                        if isinstance(entry, str) and char in entry), None)
            if bad:
                errors.append(f"{key_path(parts)}: {entry!r} holds {bad}, which no path lqs reads or writes may "
                              "hold; rename it")
    return errors


def output_name_errors(outputs: Mapping[str, str]) -> list[str]:
    """Outputs (key -> path) whose name is too long for the temporary written beside them
    (lqs.io.temporary_name_error: found at DAG build, not when the job that writes it ends), or
    that lie inside Snakemake's own .snakemake/ directory (which Snakemake cleans up and rewrites)."""
    from lqs.io import temporary_name_error

    snakemake_dir = Path(os.path.realpath(".snakemake"))
    errors = []
    for key, path in outputs.items():
        if not path:
            continue
        if why := temporary_name_error(path):
            errors.append(f"{key}: {path!r}: {why}")
        real = Path(os.path.realpath(path))
        if real == snakemake_dir or real.is_relative_to(snakemake_dir):
            errors.append(f"{key}: {path!r} lies inside .snakemake/, Snakemake's own directory, which it cleans up "
                          "and rewrites; choose another path")
    return errors


def eval_source_warnings(config: Mapping, files: Sequence[str]) -> list[str]:
    """efficacy.eval_source that is one of the corpus files (symlinks resolved): allowed, but its
    loss then measures documents the arms may have trained on, which the user should know."""
    source = config["efficacy"]["eval_source"]
    if not source or not os.path.exists(source):
        return []
    real = os.path.realpath(source)
    shared = [f for f in files if not sources.is_url(f) and (os.path.realpath(f) == real
                                                             or Path(os.path.realpath(f)).is_relative_to(real))]
    return [f"efficacy.eval_source {source!r} is also corpus.path's file {f!r}: the efficacy arms may train on the "
            "documents they are evaluated on, so its evaluation loss is not held out" for f in shared[:1]]


def first_record_fields(path: str) -> set[str]:
    """The field names of a corpus file's first record (JSONL, .gz, Parquet; local or a URL),
    read cheaply; empty when there is none or it cannot be parsed (the tokenize stage reports those)."""
    try:
        if corpus.is_parquet(path):
            import pyarrow.parquet as pq

            with sources.open_binary(path, seekable=True) as f:
                return set(pq.read_schema(f).names)
        for _, _, raw, _ in corpus._jsonl_lines(Split(path)):  # the reader's lines: gzip, BOM, blank lines
            record = corpus.loads(raw) if raw is not None else None
            return set(record) if isinstance(record, dict) else set()
    except (OSError, ValueError, EOFError, RecursionError):
        pass
    except Exception:  # a remote filesystem's own errors (network, credentials): the jobs report them
        if not sources.is_url(path):
            raise
    return set()


def unwritable(path: str) -> str | None:
    """The reason `path` cannot be written, or None: its nearest existing ancestor must be a
    writable directory."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):  # outputs are renamed into place: the directory counts
        return f"directory {parent} is not writable"
    return None


def file_errors(config: Mapping, files: Sequence[str], outputs: Mapping[str, str]) -> list[str]:
    """Output locations that cannot be written, and a score field that would overwrite an input
    field (checked on the first record of the first corpus file that exists)."""
    errors = [f"{key}: cannot write {path!r}: {reason}"
              for key, path in outputs.items() if (reason := unwritable(path))]
    added = {config["output"]["score_field"]: "output.score_field"}
    added |= {f: "output.extra_fields" for f in config["output"].get("extra_fields", [])}
    for path in files:
        if sources.is_url(path) or os.path.exists(path):  # a URL was just listed
            for field in sorted(added.keys() & first_record_fields(path)):
                errors.append(f"{added[field]}: the corpus records already have a field {field!r}"
                              f" ({path}, first record); choose another name")
            break
    return errors
