"""Corpus sources (lqs.sources): directories, fsspec URLs and Hugging Face data sets (hf://).

Offline throughout: fsspec's memory:// and file:// filesystems, and for hf:// the fake Hub of
fake_hub.py (huggingface_hub's HTTP client answered in-process, and in the workflow's
subprocesses through a sitecustomize.py) serving data set repos laid out as the hub cache: the
same HfFileSystem requests (repo info, tree, paths-info, resolve with ranges) that a real run makes.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fake_hub import FAKE_TOKEN, HUB_MOCK, add_to_hub_cache
from helpers import GOOD, ROOT, make_workflow, snakemake, tiny_config, tiny_corpus, write_jsonl

from lqs import config as lqs_config
from lqs import corpus, sources, splits

REPO = "test-org/web-corpus"
PAGE = f"https://huggingface.co/datasets/{REPO}"
TARGET = [{"conversations": [f"Question {i}?", GOOD[i % len(GOOD)]]} for i in range(12)]  # conftest's


def parquet_bytes(records: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    return buf.getvalue()


def jsonl_bytes(records: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


# ----------------------------------------------------------------------------------------------
# local directories


def test_a_directory_is_its_top_level_data_files_sorted(tmp_path):
    d = tmp_path / "corpus"
    for name in ("b.jsonl", "a.jsonl.gz", "d.pq", "c.parquet", ".a.jsonl.x1y2.tmp", ".hidden.jsonl",
                 "README.md", "notes.json", "sub/e.jsonl", ".cache/f.jsonl"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text('{"text": "x"}\n')
    expected = [str(d / n) for n in ("a.jsonl.gz", "b.jsonl", "c.parquet", "d.pq")]
    assert lqs_config.corpus_files(str(d)) == expected
    # a file named before its directory is read once, at its first place
    assert lqs_config.corpus_files([str(d / "c.parquet"), str(d)]) == [expected[2]] + expected[:2] + expected[3:]
    # ** descends into subdirectories (hidden ones skipped, as a local glob does)
    assert lqs_config.corpus_files(str(d / "**" / "*.jsonl")) == [str(d / "b.jsonl"), str(d / "sub" / "e.jsonl")]


def test_a_directory_without_data_files_is_a_config_error_naming_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".part.jsonl.tmp").write_text("")
    with pytest.raises(lqs_config.ConfigError, match=rf"^corpus.path: directory '{empty}' holds no JSONL "
                                                      r"\(.jsonl, .jsonl.gz\) or Parquet \(.parquet, .pq\) files$"):
        lqs_config.corpus_files(str(empty))
    nested = tmp_path / "nested"
    (nested / "en").mkdir(parents=True)
    (nested / "en" / "train.parquet").write_bytes(parquet_bytes([{"text": "a"}]))
    with pytest.raises(lqs_config.ConfigError, match=r"subdirectories are not read; it has en\): give a glob "
                                                      rf"such as '{nested}/\*/\*.parquet'"):
        lqs_config.corpus_files(str(nested))
    assert lqs_config.corpus_files(f"{nested}/*/*.parquet") == [str(nested / "en" / "train.parquet")]


# ----------------------------------------------------------------------------------------------
# fsspec URLs: read as local files are


FILES = {
    # a BOM, blank lines, a bad line, a CRLF line end, a last line without one
    "a.jsonl": b"\xef\xbb\xbf" + jsonl_bytes([{"text": "one", "id": 1}, "", "not json", {"text": 2}]) +
               b'{"text": "crlf"}\r\n\n{"text": "last"}',
    "b.jsonl.gz": gzip.compress(jsonl_bytes([{"text": "zipped", "source": "z"}])),
    "c.parquet": parquet_bytes([{"text": "row one", "n": 1}, {"text": "", "n": 2}, {"text": "row three", "n": 3}]),
}


@pytest.fixture
def memory_corpus(tmp_path):
    """FILES in memory://corpus-<test>/ and in a local directory: (URL directory, local directory)."""
    fs = fsspec.filesystem("memory")
    root = f"/corpus-{tmp_path.name}"
    local = tmp_path / "local"
    local.mkdir()
    for name, data in FILES.items():
        fs.pipe(f"{root}/{name}", data)
        (local / name).write_bytes(data)
    yield f"memory://{root.lstrip('/')}", local
    fs.rm(root, recursive=True)


def _records(paths, **kwargs) -> list[tuple]:
    return [(r.doc_id, r.line, r.fields, r.raw, r.text, r.error, r.eol)
            for r in corpus.iter_records(paths, **kwargs)]


def _shard_records(paths, num_shards) -> list[list[tuple]]:
    """The records of each shard of `paths` planned as the workflow plans them (sizes read through
    the paths, a cut Parquet file's row groups from its footer), their doc ids the corpus's."""
    shards = splits.plan_shards(paths, [sources.file_size(p) for p in paths], num_shards)
    indices = splits.corpus_file_indices([shard.files for shard in shards])
    return [[(int(splits.corpus_doc_ids([r[0]], i)[0]), *r[1:]) for r in _records(shard.splits, require_records=False)]
            for shard, i in zip(shards, indices)]


@pytest.mark.parametrize("num_shards", [1, 2, 5, "per_file"])
def test_memory_urls_read_as_the_same_files_do_locally(memory_corpus, num_shards):
    url_dir, local = memory_corpus
    urls = [f"{url_dir}/{name}" for name in FILES]
    paths = [str(local / name) for name in FILES]
    records = _shard_records(urls, num_shards)
    assert records == _shard_records(paths, num_shards)
    assert sum(records, []) == _records(paths)  # the shards together: the corpus, once
    everything = sum(records, [])
    assert [r[2] for r in everything if r[2]] and any(r[5] for r in everything)  # good and bad records compared
    assert {r.path for r in corpus.iter_records(urls)} == set(urls)  # named as given
    for url, path in zip(urls, paths):
        assert lqs_config.first_record_fields(url) == lqs_config.first_record_fields(path) != set()


def test_a_missing_or_damaged_url_fails_naming_it(memory_corpus):
    url_dir, local = memory_corpus
    for name in ("missing.jsonl", "missing.parquet"):
        with pytest.raises(FileNotFoundError, match=f"^corpus file not found: {url_dir}/{name}$"):
            list(corpus.iter_records([f"{url_dir}/{name}"]))
    cut = gzip.compress(jsonl_bytes(tiny_corpus(50)))[:-100]
    fsspec.filesystem("memory").pipe(f"/{url_dir[9:]}/cut.jsonl.gz", cut)
    (local / "cut.jsonl.gz").write_bytes(cut)
    records = list(corpus.iter_records([f"{url_dir}/cut.jsonl.gz"]))
    assert records[-1].where.startswith(f"{url_dir}/cut.jsonl.gz:")
    assert "corrupt or truncated gzip stream" in records[-1].error
    assert _records([f"{url_dir}/cut.jsonl.gz"]) == _records([str(local / "cut.jsonl.gz")])


def test_url_globs_and_directories_are_listed_at_dag_build(memory_corpus):
    url_dir, _ = memory_corpus
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/{url_dir[9:]}/.a.jsonl.k3j4.tmp", b"{}\n")  # a temporary: never read
    fs.pipe(f"/{url_dir[9:]}/sub/d.jsonl", b'{"text": "d"}\n')
    canonical = f"memory:///{url_dir[9:]}"  # how fsspec names the files it lists
    listed = [f.path for f in sources.resolve(url_dir).files]
    assert listed == [f"{canonical}/{name}" for name in sorted(FILES)]
    assert [f.path for f in sources.resolve(f"{url_dir}/*.jsonl*").files] == listed[:2]
    assert [f.path for f in sources.resolve(f"{url_dir}/**/*.jsonl").files] == [listed[0], f"{canonical}/sub/d.jsonl"]
    # a file named as given, and once even where a listing names it too
    assert [f.path for f in sources.resolve([f"{url_dir}/c.parquet", url_dir]).files] == \
        [f"{url_dir}/c.parquet"] + listed[:2]
    with pytest.raises(sources.SourceError, match=f"^corpus.path: '{url_dir}/nothing\\*' matches no file$"):
        sources.resolve(f"{url_dir}/nothing*")
    with pytest.raises(sources.SourceError, match=f"^corpus.path: '{url_dir}/missing.jsonl' matches no file$"):
        sources.resolve(f"{url_dir}/missing.jsonl")


def test_a_changed_remote_file_gets_a_new_version(memory_corpus):
    """No commit pins an object store's file: its listing metadata is its version (in params)."""
    url_dir, _ = memory_corpus
    url = f"{url_dir}/a.jsonl"
    [before] = sources.resolve(url).files
    assert before.version and not before.local
    assert sources.resolve(url).files == [before]  # the same file: the same version
    fsspec.filesystem("memory").pipe(f"/{url_dir[9:]}/a.jsonl", FILES["a.jsonl"] + b'{"text": "new"}\n')
    [after] = sources.resolve(url).files
    assert after.path == before.path and after.version != before.version


def test_a_protocol_without_its_package_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as where s3fs is not installed
    with pytest.raises(lqs_config.ConfigError, match=r"^corpus.path: cannot read 's3://bucket/web/\*.jsonl': "
                                                      r"Install s3fs to access S3"):
        lqs_config.corpus_files(["data/x.jsonl", "s3://bucket/web/*.jsonl"])
    with pytest.raises(lqs_config.ConfigError, match="Protocol not known: nosuch"):
        lqs_config.corpus_files("nosuch://bucket/x.jsonl")


# ----------------------------------------------------------------------------------------------
# hf:// through the fake Hub


def publish(remote: Path, files: dict[str, bytes], refs: tuple[str, ...] = ("main",), repo: str = REPO) -> str:
    """A commit of `files` in the fake Hub's repo; `refs` (branches, tags) then name it."""
    src = remote / "build" / uuid.uuid4().hex
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return add_to_hub_cache(remote / "hub", repo, src, repo_type="dataset", refs=refs)


HUB_FILES = {
    "data/train-00000.jsonl": jsonl_bytes(tiny_corpus(12)),
    "data/train-00001.parquet": parquet_bytes(tiny_corpus(8, seed=1)),
    "data/.train-00002.jsonl.x1.tmp": b"",
    "README.md": b"# a corpus\n",
    ".gitattributes": b"*.parquet filter=lfs\n",
}


class FakeHub:
    def __init__(self, root: Path):
        self.remote = root / "remote"
        self.log = root / "requests.log"
        self.log.touch()
        self.v1 = publish(self.remote, HUB_FILES, refs=("v1", "main"))

    def requests(self) -> list[str]:
        """The requests about data set repos: 'GET /api/datasets/...' (never /api/agent-harnesses)."""
        return [" ".join(r.split()[:2]) for r in self.log.read_text().splitlines() if "datasets/" in r]

    def env(self, tmp_path: Path, **extra: str) -> dict[str, str]:
        """For the workflow's processes: the fake Hub installed by a sitecustomize.py, online, a
        fake HF_TOKEN, this worktree's lqs first on PYTHONPATH."""
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(HUB_MOCK)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "LQS_"))}
        env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0", HF_TOKEN=FAKE_TOKEN,
                   HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]),
                   LQS_MOCK_LOG=str(self.log), LQS_MOCK_REMOTE=str(self.remote / "hub"),
                   LQS_MOCK_GATED="test-org/gated-corpus", LQS_MOCK_MISSING="test-org/missing", **extra)
        return env


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """In-process: the fake Hub (HF_HUB_OFFLINE off, HF_TOKEN set) with REPO at tag v1 = main."""
    import huggingface_hub
    from huggingface_hub import HfFileSystem, constants
    from huggingface_hub.utils._http import default_client_factory

    hub = FakeHub(tmp_path)
    for key, value in hub.env(tmp_path).items():
        if key.startswith(("HF_", "LQS_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    exec(HUB_MOCK, {})  # installs it: LQS_MOCK_LOG is set
    HfFileSystem.clear_instance_cache()
    try:
        yield hub
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
        HfFileSystem.clear_instance_cache()


def test_hub_paths_are_listed_and_pinned_to_a_commit(fake_hub):
    listed = sources.resolve(f"hf://datasets/{REPO}/data")
    at_v1 = f"hf://datasets/{REPO}@{fake_hub.v1}/data"
    assert [f.path for f in listed.files] == [f"{at_v1}/train-00000.jsonl", f"{at_v1}/train-00001.parquet"]
    assert listed.pins == {f"{REPO}@": fake_hub.v1}
    assert all(f.version is None and not f.local for f in listed.files)  # the commit is the version
    requests = fake_hub.requests()
    assert requests[:2] == [f"GET /api/datasets/{REPO}/auth-check", f"GET /api/datasets/{REPO}"]
    assert all(f"/{fake_hub.v1}" in r for r in requests[2:])  # everything after: at the pinned commit

    # main moves: an unpinned path follows it when planned again; a tag or commit stays
    moved = jsonl_bytes(tiny_corpus(13))
    main = publish(fake_hub.remote, {**HUB_FILES, "data/train-00000.jsonl": moved})
    assert main != fake_hub.v1
    assert sources.resolve(f"hf://datasets/{REPO}/data/*.jsonl").files == \
        [sources.CorpusFile(f"hf://datasets/{REPO}@{main}/data/train-00000.jsonl", size=len(moved))]
    for revision in ("v1", fake_hub.v1):
        pinned = sources.resolve(f"hf://datasets/{REPO}@{revision}/data/*.jsonl")
        assert [f.path for f in pinned.files] == [f"{at_v1}/train-00000.jsonl"]
        assert pinned.pins == {f"{REPO}@{revision}": fake_hub.v1}
    # a job that parses the workflow again reuses the main process's pin: no revision lookup
    before = len(fake_hub.requests())
    inherited = sources.resolve(f"hf://datasets/{REPO}/data/*.jsonl", pins={f"{REPO}@": fake_hub.v1})
    assert [f.path for f in inherited.files] == [f"{at_v1}/train-00000.jsonl"]
    assert not any(r.endswith((f"/{REPO}", "/revision/main", "auth-check")) for r in fake_hub.requests()[before:])


def test_hub_files_read_as_the_same_files_do_locally(fake_hub, tmp_path):
    urls = [f.path for f in sources.resolve(f"hf://datasets/{REPO}/data").files]
    local = []
    for name in ("data/train-00000.jsonl", "data/train-00001.parquet"):
        local.append(tmp_path / "local" / name)
        local[-1].parent.mkdir(parents=True, exist_ok=True)
        local[-1].write_bytes(HUB_FILES[name])
    for num_shards in (1, 3):
        assert _shard_records(urls, num_shards) == _shard_records(list(map(str, local)), num_shards)
    assert [r.path for r in corpus.iter_records(urls)] == [urls[0]] * 12 + [urls[1]] * 8
    assert lqs_config.first_record_fields(urls[1]) == {"id", "text", "source", "extra"}
    reads = [r for r in fake_hub.requests() if "/resolve/" in r]
    assert reads and all(f"/resolve/{fake_hub.v1}/" in r for r in reads)
    with pytest.raises(FileNotFoundError, match=f"^corpus file not found: {urls[0][:-6]}9.jsonl$"):
        list(corpus.iter_records([urls[0][:-6] + "9.jsonl"]))


@pytest.mark.parametrize("url, words, page", [
    ("hf://datasets/test-org/gated-corpus/data/*.jsonl", "'test-org/gated-corpus' is gated and this account has "
     "no access to it", "https://huggingface.co/datasets/test-org/gated-corpus"),
    ("hf://datasets/test-org/missing/x.jsonl", "'test-org/missing' does not exist, or it is private or gated",
     "https://huggingface.co/datasets/test-org/missing"),
    (f"hf://datasets/{REPO}@v9/data", "revision 'v9' does not exist", PAGE),
], ids=["gated", "missing", "revision"])
def test_hub_access_errors_name_the_repo_and_how_to_get_access(fake_hub, url, words, page):
    with pytest.raises(lqs_config.ConfigError) as error:
        lqs_config.corpus_files(url)
    message = str(error.value)
    assert message.startswith("corpus.path: Hugging Face data set repo ") and words in message, message
    assert page in message and "hf auth login" in message and "HF_TOKEN" in message, message
    assert FAKE_TOKEN not in message


def test_a_hub_path_without_files_names_the_commit_and_the_files_page(fake_hub):
    with pytest.raises(lqs_config.ConfigError) as error:
        lqs_config.corpus_files(f"hf://datasets/{REPO}/data/*.csv")
    assert str(error.value) == (f"corpus.path: 'hf://datasets/{REPO}/data/*.csv' matches no file in {REPO} at commit "
                                f"{fake_hub.v1} (revision main); see its files at {PAGE}/tree/{fake_hub.v1}")


def test_hub_paths_offline_or_malformed(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(lqs_config.ConfigError, match=rf"HF_HUB_OFFLINE is set: unset it, or download the files once "
                                                      rf"\(`hf download {REPO} --repo-type dataset"):
        lqs_config.corpus_files(f"hf://datasets/{REPO}/data")
    with pytest.raises(lqs_config.ConfigError, match=r"'hf://gpt2/x.jsonl' is not a Hugging Face data set path: "
                                                      r"expected hf://datasets/<org>/<name>\[@<revision>\]/"):
        lqs_config.corpus_files("hf://gpt2/x.jsonl")
    assert sources.parse_hub_url(f"hf://datasets/{REPO}@refs/pr/3/data/*.jsonl") == (REPO, "refs/pr/3", "data/*.jsonl")
    assert sources.parse_hub_url(f"hf://datasets/{REPO}@feature%2Fx") == (REPO, "feature/x", "")


# ----------------------------------------------------------------------------------------------
# the workflow


def workflow(workdir: Path, corpus_path, **corpus_settings) -> Path:
    write_jsonl(workdir / "data" / "target.jsonl", TARGET)
    config = tiny_config(corpus_path, "data/target.jsonl")
    config["corpus"].update(corpus_settings)
    return make_workflow(workdir, config)


def shell_commands(output: str, rule: str) -> list[str]:
    blocks = [b for b in output.split("\n\n") if f"rule {rule}:" in b]
    return [line.split("Shell command: ", 1)[1] for b in blocks for line in b.splitlines()
            if line.startswith("Shell command: ")]


@pytest.mark.workflow
def test_hub_corpus_is_pinned_at_dag_build_and_jobs_get_the_pinned_urls(tmp_path):
    hub = FakeHub(tmp_path)
    workdir = workflow(tmp_path / "wf", f"hf://datasets/{REPO}/data", num_shards="per_file")
    result = snakemake(workdir, "-n", "-p", env=hub.env(tmp_path))
    output = result.stdout + result.stderr
    assert f"corpus.path: Hugging Face data set {REPO} (main) is pinned to commit {hub.v1} for this run" in output
    pinned = [f"hf://datasets/{REPO}@{hub.v1}/data/train-00000.jsonl",
              f"hf://datasets/{REPO}@{hub.v1}/data/train-00001.parquet"]
    tokenize = shell_commands(result.stdout, "tokenize_shard")
    assert len(tokenize) == 2  # per_file: one shard per file, statically
    assert all(c.startswith('lqs tokenize-shard --plan "$LQS_CORPUS_PLAN" --shard ') for c in tokenize)
    assert "input: results/models/tokenizer" in result.stdout  # no corpus file among the inputs
    assert "hf://" not in "".join(line for line in result.stdout.splitlines() if "input:" in line)
    assert not (workdir / "results").exists()  # a dry run writes nothing, not even the corpus plan
    # the jobs read the pinned URLs from the corpus plan, which a run writes before its first job
    snakemake(workdir, "results/models/tokenizer", env=hub.env(tmp_path))
    [plan_file] = (workdir / "results" / "corpus" / "plans").iterdir()
    corpus_plan = splits.read_plan(str(plan_file))
    assert list(corpus_plan.files) == pinned
    assert [[str(s) for s in shard.splits] for shard in corpus_plan.shards] == [[pinned[0]], [pinned[1]]]

    # a job that parses the workflow again (SLURM: --mode remote) reads the main process's commit
    # from the environment, even where main has moved since
    main = publish(hub.remote, {**HUB_FILES, "README.md": b"moved\n"})
    env = hub.env(tmp_path, LQS_CORPUS_PINS=json.dumps({f"{REPO}@": hub.v1}))
    key = corpus_plan.shards[0].key
    again = snakemake(workdir, "-n", "-p", "--mode", "remote", f"results/corpus/shard-{key}.parquet", env=env)
    assert shell_commands(again.stdout, "tokenize_shard")  # the same shard: the same pinned file
    fresh = snakemake(workdir, "-n", "-p", env=env)  # the main process pins anew: other files, other shards
    assert f"results/corpus/shard-{key}.parquet" not in fresh.stdout
    assert f"is pinned to commit {main} for this run" in fresh.stdout + fresh.stderr


@pytest.mark.parametrize("path, words", [
    ("hf://datasets/test-org/gated-corpus/data", "test-org/gated-corpus' is gated"),
    ("hf://datasets/test-org/missing/data", "test-org/missing' does not exist"),
    (f"hf://datasets/{REPO}@no-such-branch/data", "revision 'no-such-branch' does not exist"),
    (f"hf://datasets/{REPO}/nothing/*.jsonl", "matches no file in test-org/web-corpus"),
], ids=["gated", "missing", "revision", "no-file"])
@pytest.mark.workflow
def test_hub_errors_fail_the_dry_run_before_any_job(tmp_path, path, words):
    hub = FakeHub(tmp_path)
    workdir = workflow(tmp_path / "wf", path)
    result = snakemake(workdir, "-n", env=hub.env(tmp_path), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "invalid configuration:\n  corpus.path: " in output and words in output, output
    if "matches no file" not in words:
        assert "hf auth login" in output and "HF_TOKEN" in output
    assert "Job stats" not in output and "Traceback" not in output and not (workdir / "results").exists()
    assert FAKE_TOKEN not in output


@pytest.mark.workflow
def test_hub_corpus_run_scores_as_the_local_run_and_a_new_commit_reruns(completed_workflow, tmp_path):
    """The tiny workflow on hf://, its corpus the completed local run's file, scored with that run's
    scorer (scorer.checkpoint: no annotation to repeat): the same scored.jsonl. Every job read the
    pinned commit. When main moves, planning again reruns the corpus stages."""
    hub = FakeHub(tmp_path)
    local_corpus = (completed_workflow / "data" / "corpus.jsonl").read_bytes()
    commit = publish(hub.remote, {"data/corpus.jsonl": local_corpus}, repo="test-org/same-corpus")
    workdir = workflow(tmp_path / "wf", "hf://datasets/test-org/same-corpus/data/corpus.jsonl")
    config_path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["scorer"]["checkpoint"] = str(completed_workflow / "results" / "scorer")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = hub.env(tmp_path)
    snakemake(workdir, env=env)
    assert (workdir / "scored.jsonl").read_bytes() == (completed_workflow / "scored.jsonl").read_bytes()
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    assert summary["documents_read"] == len(tiny_corpus()) and summary["empty_files"] == []
    assert summary["provenance"]["corpus"] == [{"path": f"hf://datasets/test-org/same-corpus@{commit}/data/corpus.jsonl",
                                                "bytes": None, "revision": commit}]  # the pinned commit
    reads = [r for r in hub.requests() if "/resolve/" in r]
    # tokenize_shard and gather_scores (tokenize_scorer_shard cuts the checkpoint's windows from
    # tokenize_shard's ids, its tokenizer the checkpoint's); the DAG build's score-field check
    assert len(reads) >= 3 and all(r.endswith(f"/resolve/{commit}/data/corpus.jsonl") for r in reads)

    nothing = snakemake(workdir, "-n", env=env)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    publish(hub.remote, {"data/corpus.jsonl": local_corpus + jsonl_bytes(tiny_corpus(1, seed=5))},
            repo="test-org/same-corpus")
    plan = snakemake(workdir, "-n", env=env)
    output = plan.stdout + plan.stderr
    for rule in ("tokenize_shard", "score_shard", "gather_scores"):
        assert f"rule {rule}:" in plan.stdout, output
    assert "Params have changed" in output and "Set of input files has changed" not in output


@pytest.mark.workflow
def test_file_url_corpus_tokenizes_as_the_local_path_and_an_edit_reruns(completed_workflow, tmp_path):
    corpus_file = tmp_path / "elsewhere" / "corpus.jsonl"
    corpus_file.parent.mkdir()
    corpus_file.write_bytes((completed_workflow / "data" / "corpus.jsonl").read_bytes())
    workdir = workflow(tmp_path / "wf", f"file://{corpus_file}")
    shards = [f"results/corpus/{p.name}" for p in sorted((completed_workflow / "results/corpus").glob("shard-*"))]
    snakemake(workdir, *shards)
    for shard in shards:
        assert pq.read_table(workdir / shard).equals(pq.read_table(completed_workflow / shard)), shard
    assert "Nothing to be done" in snakemake(workdir, "-n", *shards).stdout

    with open(corpus_file, "a") as f:  # an edit: a new size and mtime, so a new version in params
        f.write(json.dumps({"text": "one more document"}) + "\n")
    plan = snakemake(workdir, "-n", *shards)
    output = plan.stdout + plan.stderr
    assert output.count("rule tokenize_shard:") == len(shards) and "rule train_tokenizer:" in output
    assert "Params have changed" in output
