"""Offline demo data: a corpus of stdlib docstrings mixed with junk, plus a LIMA-shaped target set.

Everything is built from text that every Python installation carries (the docstrings of
the standard library), so the demo needs no network. Output is deterministic for a given
seed and Python version. The stage demo_data (lqs/stages/demo_data.py) writes the two files.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import io
import json
import random
import string
import subprocess
import sys
import warnings
from collections.abc import Iterable
from typing import Any

# Stdlib modules (pure Python or C-accelerated) that import quietly on Linux; sorted. About 110 of
# them are needed for ~2,300 distinct docstrings of >= 80 characters, enough for the default
# demo (lqs/schema.yaml: demo.num_docs 2,000, of which 60% or 1,200 are docstrings, and
# demo.num_target 200) with each docstring used once. Modules that fail to import are skipped.
# `sys` is left out on purpose: its hooks are runtime state (pytest replaces sys.unraisablehook).
DEMO_MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bdb", "binascii", "bisect",
    "builtins", "bz2", "calendar", "cmd", "code", "codecs", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email", "email.message", "email.utils", "enum", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "html", "html.parser", "http.client", "http.cookiejar", "http.server",
    "imaplib", "importlib.metadata", "inspect", "io", "ipaddress", "itertools", "json",
    "locale", "logging", "logging.handlers", "lzma", "math", "mimetypes", "numbers", "operator",
    "optparse", "os", "os.path", "pathlib", "pdb", "pickle", "pkgutil", "platform", "poplib",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time",
    "timeit", "tokenize", "traceback", "types", "typing", "unittest", "unittest.mock",
    "urllib.parse", "urllib.request", "uuid", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "xmlrpc.client", "zipfile", "zipimport", "zlib",
)

SOURCES: tuple[str, ...] = ("python_docs", "shuffled_words", "boilerplate", "random_chars")
TARGET_SOURCE = "python_docs_qa"
MIN_DOC_CHARS = 80
PYTHON_DOCS_FRACTION = 0.6

_BOILERPLATE = (
    "Click here to subscribe! Best deals today.",
    "Limited time offer!!! Buy {product} now and save {pct}% - only at {site}!",
    "We use cookies to improve your experience. By continuing to browse {site} you accept our Cookie Policy.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua.",
    "Copyright (c) {year} {company}. All rights reserved. Terms of Service | Privacy Policy | Contact Us",
    "Share this: Facebook | Twitter | Email | Print | Like this: Like Loading...",
    "You must be logged in to post a comment. Log in | Register | Forgot password?",
    "FREE SHIPPING on orders over ${price}! Click here to claim your {product} coupon.",
    "This website is not responsible for the content of external sites. {company} disclaims all warranties.",
    "Home > Products > {product} > Reviews > Page {page} of {pages}",
)
_FILLERS: dict[str, tuple[str, ...]] = {
    "product": ("smart watch", "laptop", "protein powder", "VPN", "sneakers", "phone case"),
    "site": ("bestdeals24.example", "shop-now.example", "news-daily.example", "megastore.example"),
    "company": ("Acme Corp", "Global Media Ltd", "WebSolutions Inc", "MegaStore LLC"),
    "year": tuple(str(y) for y in range(2009, 2025)),
    "pct": ("10", "25", "50", "70", "90"),
    "price": ("25", "35", "49", "99"),
    "page": tuple(str(p) for p in range(1, 10)),
    "pages": tuple(str(p) for p in range(10, 40)),
}
_RANDOM_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " " * 12
_FALLBACK_WORDS = "the of and to a in is that for it as with be on by this are or from".split()

QUESTION_TEMPLATES = {
    "module": (
        "What is the `{name}` module for?",
        "What does the `{name}` module in the standard library provide?",
        "Can you give me an overview of Python's `{name}` module?",
        "When should I use the `{name}` module?",
    ),
    "class": (
        "What is `{name}` in Python?",
        "How do I use the `{name}` class?",
        "Can you explain what `{name}` represents?",
        "What is the purpose of `{name}`?",
    ),
    "routine": (
        "What does `{name}` do?",
        "How do I use `{name}`?",
        "Can you explain `{name}` from the Python standard library?",
        "I saw `{name}` in some code. What does it do?",
        "What is `{name}` for, and how do I call it?",
    ),
}


def _kind(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    return "routine"


def _own_doc(obj: Any) -> str | None:
    """inspect.getdoc, but only for objects carrying their own (not inherited) docstring."""
    if not isinstance(getattr(obj, "__doc__", None), str):
        return None
    if inspect.isclass(obj) and not isinstance(obj.__dict__.get("__doc__"), str):
        return None
    doc = inspect.getdoc(obj)
    return doc if doc and len(doc) >= MIN_DOC_CHARS else None


def _import_quietly(name: str) -> Any | None:
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a module that fails to import is simply skipped
        return None


def _is_public(name: Any, *, dunder: bool = False) -> bool:
    if not isinstance(name, str):
        return False
    if dunder and len(name) > 4 and name.startswith("__") and name.endswith("__"):
        return True
    return not name.startswith("_")


def _members(name: str, module: Any) -> Iterable[tuple[str, Any]]:
    """Yields (qualified name, object): the module, the public classes and functions it defines
    (itself, its C accelerator `_name` or its submodules), and their public and dunder members."""
    yield name, module
    owners = {name, module.__name__, "_" + name.rsplit(".", 1)[-1]}
    for attr, obj in list(vars(module).items()):
        if not _is_public(attr) or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        owner = getattr(obj, "__module__", None)
        if not isinstance(owner, str) or not (owner in owners or owner.startswith(name + ".")):
            continue
        qual = f"{name}.{attr}"
        yield qual, obj
        if not inspect.isclass(obj):
            continue
        for meth, member in list(vars(obj).items()):
            if not _is_public(meth, dunder=True):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if inspect.isroutine(member) or isinstance(member, property) or inspect.isclass(member):
                yield f"{qual}.{meth}", member


@functools.lru_cache(maxsize=1)
def docstrings() -> tuple[tuple[str, str, str], ...]:
    """The docstring pool, collected in a fresh interpreter: libraries already imported here
    (a test runner, a notebook's) may have replaced stdlib objects, which would change the pool
    and so the demo data."""
    # This file as a script, isolated (-I): the interpreter imports nothing but the stdlib.
    out = subprocess.run([sys.executable, "-I", __file__], capture_output=True, text=True, check=True).stdout
    return tuple(tuple(entry) for entry in json.loads(out))


def collect_docstrings() -> list[tuple[str, str, str]]:
    """All (qualified name, kind, docstring), sorted by name, exact-duplicate docstrings dropped."""
    found: dict[str, tuple[str, str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DEMO_MODULES:
            module = _import_quietly(name)
            if module is None:
                continue
            try:
                members = list(_members(name, module))
            except Exception:  # noqa: BLE001 - an odd module namespace: skip the module
                continue
            for qual, obj in members:
                try:
                    doc = _own_doc(obj)
                except Exception:  # noqa: BLE001 - odd descriptors: skip
                    continue
                if doc is not None and qual not in found:
                    found[qual] = (_kind(obj), doc)
    seen: set[str] = set()
    out = []
    for qual in sorted(found):
        kind, doc = found[qual]
        if doc in seen:
            continue
        seen.add(doc)
        out.append((qual, kind, doc))
    return out


def shuffled_words(rng: random.Random, docs: list[str]) -> str:
    words = rng.choice(docs).split() if docs else list(_FALLBACK_WORDS) * rng.randint(5, 40)
    rng.shuffle(words)
    return " ".join(words)


def boilerplate(rng: random.Random) -> str:
    parts = []
    for template in rng.sample(_BOILERPLATE, rng.randint(1, 3)):
        fills = {key: rng.choice(values) for key, values in _FILLERS.items()}
        line = template.format(**fills)
        parts.append(" ".join([line] * rng.randint(2, 25)))
    return rng.choice(("\n", " ", "\n\n")).join(parts)


def random_chars(rng: random.Random) -> str:
    text = "".join(rng.choices(_RANDOM_ALPHABET, k=rng.randint(100, 1500))).strip()
    return text or "x"


if __name__ == "__main__":  # the docstring collector, run by docstrings in a fresh interpreter
    print(json.dumps(collect_docstrings()))
