"""A fake Hugging Face Hub for the tests, without network.

add_to_hub_cache fills a hub cache (the `models--org--name` / `datasets--org--name` layout that
huggingface_hub reads: refs/, snapshots/<commit>/, blobs/) from local files. HUB_MOCK is the
source of a sitecustomize.py (or of an exec in-process) that swaps huggingface_hub's HTTP client
for one whose transport answers like the Hub does (gated, missing, bad revisions, and data set
repos served from such a cache); FAKE_TOKEN is the HF_TOKEN the tests set.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

FAKE_TOKEN = "hf_lqsTestFakeToken0123456789abcdef"


# ----------------------------------------------------------------------------------------------
# a Hugging Face cache, laid out as huggingface_hub writes it


def add_to_hub_cache(cache: Path, repo: str, src: Path, *, repo_type: str = "model",
                     refs: tuple[str, ...] = ("main",)) -> str:
    """Puts the files of `src` (e.g. a save_pretrained directory) into the hub cache `cache` as
    one commit of `repo`: blobs by content hash, snapshots/<commit>/ of relative symlinks, and
    refs/<ref> naming the commit. Returns the commit hash."""
    storage = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    files = sorted(p for p in Path(src).rglob("*") if p.is_file())
    digest = hashlib.sha1(repo.encode())
    for path in files:
        digest.update(str(path.relative_to(src)).encode() + hashlib.sha256(path.read_bytes()).digest())
    commit = digest.hexdigest()
    for path in files:
        data = path.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / path.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return commit


# ----------------------------------------------------------------------------------------------
# a Hub that answers like huggingface.co: gated, missing, bad revisions; no network behind it

HUB_MOCK = r'''
import os, re

def install():
    """Makes huggingface_hub's HTTP client answer from a fake Hub. Repos in LQS_MOCK_GATED are
    gated, in LQS_MOCK_MISSING do not exist; revisions in LQS_MOCK_BAD_REVISIONS do not exist;
    data set repos in LQS_MOCK_REMOTE (see serve_dataset) can be listed and read.
    Every request is appended to LQS_MOCK_LOG, with whether it carried HF_TOKEN (never the token)."""
    import huggingface_hub
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx

    def names(var):
        return set(filter(None, os.environ.get(var, "").split(",")))

    def serve_dataset(request, path):
        """The Hub's data set endpoints that HfFileSystem uses (repo info, tree, paths-info,
        resolve with HTTP ranges), for the repos in LQS_MOCK_REMOTE, a directory laid out as the
        hub cache (refs/<ref>, snapshots/<commit>/): a remote Hub holding those commits. None for
        anything else."""
        import hashlib
        import urllib.parse

        match = re.fullmatch(r"(/api)?/datasets/([^/]+/[^/]+)(?:/(revision|tree|paths-info|resolve)/([^/]+)(/.*)?)?",
                             path)
        remote = os.environ.get("LQS_MOCK_REMOTE")
        if not remote or match is None:
            return None
        api, repo, what, revision, rest = match.groups()
        storage = os.path.join(remote, "datasets--" + repo.replace("/", "--"))
        if not os.path.isdir(storage) or repo in names("LQS_MOCK_GATED") | names("LQS_MOCK_MISSING") \
                or (api is None) != (what == "resolve"):
            return None
        revision = revision or "main"
        ref = os.path.join(storage, "refs", revision)
        commit = open(ref).read().strip() if os.path.isfile(ref) else revision
        snapshot = os.path.join(storage, "snapshots", commit)
        if not os.path.isdir(snapshot):
            return httpx.Response(404, request=request, headers={
                "X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {revision}"})
        if what in (None, "revision"):
            return httpx.Response(200, request=request, json={"id": repo, "sha": commit, "private": False})

        def entry(rel):
            full = os.path.join(snapshot, rel)
            if os.path.isdir(full):
                return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel}
            data = open(full, "rb").read()
            return {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": rel}

        def not_found(rel):
            return httpx.Response(404, request=request, headers={
                "X-Error-Code": "EntryNotFound", "X-Error-Message": f"{rel} does not exist on {revision}"})

        rel = (rest or "/")[1:].rstrip("/")
        if what == "tree":
            top = os.path.join(snapshot, rel)
            if not os.path.isdir(top):
                return not_found(rel)
            recursive = request.url.params.get("recursive", "False").lower() == "true"
            names_ = []
            for here, dirs, files in os.walk(top):
                dirs.sort()
                names_ += [os.path.relpath(os.path.join(here, n), snapshot) for n in dirs + sorted(files)]
                if not recursive:
                    break
            return httpx.Response(200, request=request, json=[entry(n) for n in names_])
        if what == "paths-info":
            asked = urllib.parse.parse_qs(request.content.decode()).get("paths", [])
            return httpx.Response(200, request=request, json=[
                entry(p) for p in asked if os.path.exists(os.path.join(snapshot, p))])
        full = os.path.join(snapshot, rel)  # resolve: the file, or the part a Range header asks for
        if not os.path.isfile(full):
            return not_found(rel)
        data = open(full, "rb").read()
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if ranged is None:
            return httpx.Response(200, request=request, content=data)
        start, end = int(ranged[1]), int(ranged[2]) + 1 if ranged[2] else len(data)
        if start >= len(data):
            return httpx.Response(416, request=request)
        return httpx.Response(206, request=request, content=data[start:end])

    def handler(request):
        auth = request.headers.get("authorization")
        token = os.environ.get("HF_TOKEN")
        carried = "none" if auth is None else "env-token" if token and auth == f"Bearer {token}" else "other"
        path = request.url.path
        with open(os.environ["LQS_MOCK_LOG"], "a") as f:
            f.write(f"{request.method} {path} auth={carried}\n")
        served = serve_dataset(request, path)
        if served is not None:
            return served
        match = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/(auth-check|revision/(.+))", path)
        if match is None:
            raise httpx.ConnectError("no network in this test", request=request)
        kind, repo, what, revision = match.groups()
        if repo in names("LQS_MOCK_MISSING"):
            return httpx.Response(404 if auth else 401, request=request,
                                  headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        if repo in names("LQS_MOCK_GATED") and what == "auth-check":
            message = f"Access to {kind[:-1]} {repo} is restricted. You must have access to it and be authenticated."
            return httpx.Response(403 if auth else 401, request=request,
                                  headers={"X-Error-Code": "GatedRepo", "X-Error-Message": message})
        if what == "auth-check":
            return httpx.Response(200, request=request, json={})
        if revision in names("LQS_MOCK_BAD_REVISIONS"):
            return httpx.Response(404, request=request,
                                  headers={"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
        raise httpx.ConnectError("no network in this test", request=request)

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(handler)))


if os.environ.get("LQS_MOCK_LOG"):
    install()
'''
