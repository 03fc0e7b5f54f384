"""Hugging Face Hub access for every stage that reads the Hub (models, tokenizers, scorer
checkpoints, target sets, hf:// corpora): an access check before any download, and huggingface_hub's
errors turned into one HubAccessError that names the repo, the page where access is requested and
how to log in.

`huggingface_hub` reads `HF_TOKEN` (or the token stored by `hf auth login`), `HF_HOME` /
`HF_HUB_CACHE` and `HF_HUB_OFFLINE` itself: no token is ever passed, logged or written here
(`token=None` means "whatever the environment says"). This module imports no other lqs module, so
that the corpus readers (lqs.sources) and the fetch stages (lqs.models) can both use it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

HUB_URL = "https://huggingface.co"
LOGIN_HINT = "log in with `hf auth login` or set the HF_TOKEN environment variable"


class HubAccessError(RuntimeError):
    """A Hugging Face Hub repo that cannot be fetched: gated without access, missing or private,
    a revision that does not exist, or not in the local cache while the Hub cannot be reached.
    The message names the repo, the page where access is requested, and how to log in."""


def repo_page(repo: str, repo_type: str = "model") -> str:
    return f"{HUB_URL}/{repo}" if repo_type == "model" else f"{HUB_URL}/{repo_type}s/{repo}"


def _describe(error: Exception, repo: str, repo_type: str, revision: str | None) -> str | None:
    """The HubAccessError message for a huggingface_hub error, or None if it is not an access error."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    kind = "data set" if repo_type == "dataset" else "model"
    name = f"Hugging Face {kind} repo '{repo}'" + (f" (revision '{revision}')" if revision else "")
    page = repo_page(repo, repo_type)
    if isinstance(error, GatedRepoError):
        return (f"{name} is gated and this account has no access to it: request access at {page}, "
                f"then {LOGIN_HINT}")
    if isinstance(error, RevisionNotFoundError):
        return (f"{name}: revision '{revision}' does not exist; see the branches, tags and commits at "
                f"{page} (if the repo is private or gated, request access there and {LOGIN_HINT})")
    if isinstance(error, RepositoryNotFoundError):
        return (f"{name} does not exist, or it is private or gated and this account cannot see it: check "
                f"the id at {page}; for a private or gated repo, request access there and {LOGIN_HINT}")
    if isinstance(error, LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        flag = "" if repo_type == "model" else f" --repo-type {repo_type}"
        return (f"{name} is not (completely) in the local Hugging Face cache {constants.HF_HUB_CACHE} and "
                f"{why}: download it once with network access (`hf download {repo}{flag}`, with the same "
                f"HF_HOME) or give a local path instead; if it is gated, request access at {page} and "
                f"{LOGIN_HINT}")
    if isinstance(error, HfHubHTTPError) and error.response is not None \
            and error.response.status_code in (401, 403):
        return (f"{name}: the Hub refused the credentials (HTTP {error.response.status_code}): "
                f"{LOGIN_HINT} with a valid token, and request access at {page} if the repo is gated")
    return None


@contextlib.contextmanager
def hub_errors(repo: str, repo_type: str = "model", revision: str | None = None) -> Iterator[None]:
    """Turns huggingface_hub's access errors inside the block into one HubAccessError."""
    try:
        yield
    except HubAccessError:
        raise
    except Exception as e:
        message = _describe(e, repo, repo_type, revision)
        if message is None:
            raise
        raise HubAccessError(message) from None


def check_access(repo: str, repo_type: str = "model") -> None:
    """Fails with HubAccessError if the Hub says this account cannot read `repo` (gated without
    access, missing, private). Offline (HF_HUB_OFFLINE), or when the Hub cannot be reached, the
    check is left to the download, which then reads the local cache."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        return
    with hub_errors(repo, repo_type):
        try:
            huggingface_hub.auth_check(repo, repo_type=repo_type, token=None)  # None: HF_TOKEN / hf auth login
        except (RepositoryNotFoundError, RevisionNotFoundError):  # GatedRepoError included
            raise
        except HfHubHTTPError as e:
            if e.response is not None and e.response.status_code in (401, 403):
                raise
            log.warning("could not check access to %s (HTTP %s); trying the download", repo,
                        e.response.status_code if e.response is not None else "error")
        except Exception as e:  # no network: the download falls back to the local cache
            log.warning("could not reach the Hub to check access to %s (%s); trying the local cache",
                        repo, type(e).__name__)


def hub_snapshot(repo: str, *, revision: str | None = None, repo_type: str = "model",
                 allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None) -> str:
    """The local snapshot directory of a hub repo (downloaded, or from the cache), after an access check."""
    from huggingface_hub import snapshot_download

    check_access(repo, repo_type)
    log.info("fetching %s repo %s%s", repo_type, repo, f" at revision {revision}" if revision else "")
    with hub_errors(repo, repo_type, revision):
        return snapshot_download(repo, repo_type=repo_type, revision=revision, token=None,
                                 allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
