"""The configuration's defaults, read from lqs/schema.yaml: the workflow's config schema, shipped
in the package so that the code outside the workflow (`lqs score`'s flags, the Python API) takes
its defaults from the one place they are written."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

# The workflow validates its configuration with this file (rules/common.smk), wherever the package is installed
SCHEMA_PATH = str(Path(__file__).with_name("schema.yaml"))


@cache
def schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def default(key: str) -> Any:
    """The schema's default of a dotted config key, e.g. "corpus.max_chars"."""
    node = schema()
    for part in key.split("."):
        node = node["properties"][part]
    return node["default"]
