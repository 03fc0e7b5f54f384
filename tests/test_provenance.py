"""lqs/provenance.py: the block changes with the config, the scorer's weights and a corpus file,
and is byte-identical for an identical rerun; URL entries; the Parquet metadata. The workflow's
configuration digests cover what each output depends on and nothing else; the stages that write
the scored output, its per_shard parts, the training set and `lqs score` carry the block in their
summaries and Parquet metadata; a fetched hub scorer records its repo and commit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import (
    ROOT,
    copy_workflow,
    corpus_settings,
    edit_config,
    plan,
    rule_counts,
    set_key,
    shard_settings,
    stage_function,
    tiny_config,
    tiny_corpus,
    tiny_scorer,
    tokenize_and_score_shard,
    write_jsonl,
    write_part,
    write_plan,
)

from lqs import provenance as prov
from lqs.scorer import weights_digests
from lqs.sources import CorpusFile
from lqs.stages import fetch_scorer as fetch_scorer_stage
from lqs.stages import gather_scores as gather_scores_stage
from lqs.stages import output_schema as output_schema_stage
from lqs.stages import select_order as select_order_stage
from lqs.stages import tokenize_shard as tokenize_shard_stage

fetch_scorer = stage_function(fetch_scorer_stage)
gather_scores = stage_function(gather_scores_stage)
output_schema = stage_function(output_schema_stage)
score_shard = tokenize_and_score_shard
select_order = stage_function(select_order_stage)
tokenize_shard = stage_function(tokenize_shard_stage)

CONFIG = {"corpus": {"path": ["data/a.jsonl"], "max_chars": 1000}, "selection": {"ratio": 0.5}, "name": "café"}


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory) -> Path:
    return tiny_scorer(tmp_path_factory.mktemp("scorer"))


def corpus(tmp_path: Path) -> list[Path]:
    (tmp_path / "data").mkdir(exist_ok=True)
    files = [tmp_path / "data" / "a.jsonl", tmp_path / "data" / "b.jsonl"]
    files[0].write_text('{"text": "one"}\n')
    files[1].write_text('{"text": "two"}\n{"text": "three"}\n')
    return files


def dumps(block) -> str:
    return json.dumps(block)


def test_identical_inputs_give_an_identical_block(tmp_path, scorer_dir):
    files = corpus(tmp_path)
    first = prov.provenance(CONFIG, scorer_dir, [CorpusFile(str(f)) for f in files])
    again = prov.provenance(json.loads(json.dumps(CONFIG)), str(scorer_dir), [str(f) for f in files])
    assert dumps(first) == dumps(again)
    assert first["config_sha256"] == hashlib.sha256(
        '{"corpus":{"max_chars":1000,"path":["data/a.jsonl"]},"name":"café","selection":{"ratio":0.5}}'
        .encode()).hexdigest()
    assert first["scorer"] == {"weights_sha256": weights_digests(scorer_dir), "settings": {"max_length": 32},
                               "repo": None, "revision": None}
    assert set(first["scorer"]["weights_sha256"]) == {"model.safetensors", "head.safetensors"}
    assert first["corpus"] == [{"path": str(files[0]), "bytes": 16, "revision": None},
                               {"path": str(files[1]), "bytes": 34, "revision": None}]
    assert first["lqs_version"] not in ("", None)


def test_the_config_changes_the_block(tmp_path, scorer_dir):
    files = corpus(tmp_path)
    block = prov.provenance(CONFIG, scorer_dir, files)
    changed = prov.provenance({**CONFIG, "selection": {"ratio": 0.25}}, scorer_dir, files)
    assert changed["config_sha256"] != block["config_sha256"]
    assert {k: v for k, v in changed.items() if k != "config_sha256"} == \
        {k: v for k, v in block.items() if k != "config_sha256"}
    reordered = dict(reversed(list(CONFIG.items())))
    assert prov.provenance(reordered, scorer_dir, files) == block  # canonical: key order does not count
    assert prov.provenance(None, None, [])["config_sha256"] is None


def test_the_scorer_weights_change_the_block(tmp_path, scorer_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "scorer"
    shutil.copytree(scorer_dir, copy)
    block = prov.provenance(CONFIG, copy, [])
    head = load_file(str(copy / "head.safetensors"))
    save_file({k: v + 1 for k, v in head.items()}, str(copy / "head.safetensors"))
    changed = prov.provenance(CONFIG, copy, [])
    assert changed["scorer"]["weights_sha256"]["head.safetensors"] != block["scorer"]["weights_sha256"][
        "head.safetensors"]
    assert changed["scorer"]["weights_sha256"]["model.safetensors"] == block["scorer"]["weights_sha256"][
        "model.safetensors"]


def test_a_recorded_hub_source_is_kept(tmp_path, scorer_dir):
    import shutil

    copy = tmp_path / "scorer"
    shutil.copytree(scorer_dir, copy)
    config = json.loads((copy / "scorer.json").read_text())
    (copy / "scorer.json").write_text(json.dumps({**config, "source": {"repo": "org/scorer", "revision": "abc123"}}))
    entry = prov.provenance(None, copy, [])["scorer"]
    assert (entry["repo"], entry["revision"]) == ("org/scorer", "abc123")


def test_not_a_scorer_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a scorer checkpoint"):
        prov.provenance(None, tmp_path, [])


def test_a_corpus_file_changes_the_block(tmp_path, scorer_dir):
    files = corpus(tmp_path)
    block = prov.provenance(CONFIG, scorer_dir, files)
    files[1].write_text('{"text": "two"}\n')
    changed = prov.provenance(CONFIG, scorer_dir, files)
    assert changed["corpus"][1]["bytes"] == 16 != block["corpus"][1]["bytes"]
    assert dumps(changed) != dumps(block)
    with pytest.raises(FileNotFoundError, match="c.jsonl"):
        prov.corpus_entries([tmp_path / "data" / "c.jsonl"])


def test_url_entries():
    entries = prov.corpus_entries([CorpusFile("hf://datasets/org/name@0123abcd/data/train-0.parquet"),
                                   CorpusFile("s3://bucket/part-0.jsonl", version="5f3c9a1b2d4e6f70")])
    assert entries == [{"path": "hf://datasets/org/name@0123abcd/data/train-0.parquet", "bytes": None,
                        "revision": "0123abcd"},
                       {"path": "s3://bucket/part-0.jsonl", "bytes": None, "revision": "5f3c9a1b2d4e6f70"}]


def test_parquet_metadata(tmp_path, scorer_dir):
    block = prov.provenance(CONFIG, scorer_dir, corpus(tmp_path))
    metadata = prov.parquet_metadata(block)
    assert list(metadata) == [b"lqs.provenance"]
    assert json.loads(metadata[b"lqs.provenance"].decode()) == block
    schema = pa.schema([("score", pa.float64())], metadata={b"other": b"1"})
    schema = schema.with_metadata({**schema.metadata, **metadata})
    assert json.loads(schema.metadata[b"lqs.provenance"]) == block and schema.metadata[b"other"] == b"1"


def test_config_values_beyond_json():
    import datetime

    assert prov.config_sha256({"day": datetime.date(2024, 1, 2)}) == prov.config_sha256({"day": "2024-01-02"})
    with pytest.raises(ValueError, match="the configuration cannot be written as JSON: a object"):
        prov.config_sha256({"x": object()})


def test_the_scorer_settings_change_the_block(tmp_path, scorer_dir):
    """max_length and pooling are in scorer.json, not in the weights: a local checkpoint whose
    max_length was edited scores differently, and its block says so."""
    import shutil

    copy = shutil.copytree(scorer_dir, tmp_path / "scorer")
    block = prov.provenance(None, copy, [])
    config = json.loads((copy / "scorer.json").read_text())
    (copy / "scorer.json").write_text(json.dumps({**config, "max_length": 16}))
    changed = prov.provenance(None, copy, [])
    assert changed["scorer"]["settings"] == {"max_length": 16} != block["scorer"]["settings"]
    assert changed["scorer"]["weights_sha256"] == block["scorer"]["weights_sha256"]


def test_hub_source_is_the_snapshot_commit():
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert prov.hub_source("org/s", f"/hf/hub/models--org--s/snapshots/{commit}") == {"repo": "org/s",
                                                                                     "revision": commit}
    assert prov.hub_source("org/s", "/somewhere/else") == {"repo": "org/s", "revision": None}
    assert prov.corpus_entries(["-"]) == [{"path": "-", "bytes": None, "revision": None}]  # lqs score's stdin


# ----------------------------------------------------------------------------------------------
# the workflow's configuration digests: what each output depends on, and nothing else

DEMO_FILES = ["results/demo/corpus.jsonl", "results/demo/target.jsonl"]  # rules/common.smk's


def resolved(config: dict) -> dict:
    """The configuration as rules/common.smk has it: the schema's defaults filled in."""
    from snakemake.utils import validate

    validate(config, str(ROOT / "lqs" / "schema.yaml"))
    return config


def digests(*edits, corpus: str = "data/corpus.jsonl", checkpoint: str | None = None,
            output_format: str = "jsonl") -> dict[str, str]:
    config = tiny_config(corpus, "data/target.jsonl")
    config["scorer"]["checkpoint"] = checkpoint
    for edit in edits:
        edit(config)
    return prov.config_digests(resolved(config), output_format=output_format, demo_files=DEMO_FILES)


SCORE_EDITS = {
    "device": set_key("device", "cuda"), "corpus.max_chars": set_key("corpus", "max_chars", 500),
    "corpus.max_length": set_key("corpus", "max_length", 64),
    "corpus.on_bad_record": set_key("corpus", "on_bad_record", "skip"),
    "corpus.num_shards": set_key("corpus", "num_shards", 3),
    "inference.dtype": set_key("inference", "dtype", "bf16"),
    "inference.max_windows_per_doc": set_key("inference", "max_windows_per_doc", 2),
    "annotation.lr": set_key("annotation", "lr", 0.1), "annotation.tf32": set_key("annotation", "tf32", True),
    "proxy.seed": set_key("proxy", "seed", 1), "scorer.epochs": set_key("scorer", "epochs", 3),
    "scorer.valid_size": set_key("scorer", "valid_size", 0.5),
    "target.eval_fraction": set_key("target", "eval_fraction", 0.2),
    "models.pretrain.steps": set_key("models", "pretrain", "steps", 11),
    "models.tokenizer.vocab_size": set_key("models", "tokenizer", "vocab_size", 400),
    "models.trust_remote_code": set_key("models", "trust_remote_code", True),
    "output.score_field": set_key("output", "score_field", "s"),
    "output.extra_fields": set_key("output", "extra_fields", ["n_tokens"]),
}
SELECTION_EDITS = {"selection.ratio": set_key("selection", "ratio", 0.5),
                   "selection.method": set_key("selection", "method", "gumbel"),
                   "ordering.folds": set_key("ordering", "folds", 5)}
EFFICACY_EDITS = {"efficacy.seeds": set_key("efficacy", "seeds", 5), "efficacy.lr": set_key("efficacy", "lr", 0.01)}
# where outputs go, or files the block lists itself (corpus.path), or what no rule of this run reads
NO_EDITS = {"output.path": set_key("output", "path", "elsewhere.jsonl"),
            "output.rejects_path": set_key("output", "rejects_path", "r.jsonl"),
            "output.layout": set_key("output", "layout", "per_shard"),
            "selection.path": set_key("selection", "path", "chosen.jsonl"),
            "corpus.path": set_key("corpus", "path", "other/corpus.jsonl"),
            "scorer.checkpoint_revision": set_key("scorer", "checkpoint_revision", "v2"),
            "demo.seed": set_key("demo", "seed", 3)}


@pytest.mark.parametrize("key", SCORE_EDITS)
def test_a_score_edit_changes_every_digest(key):
    before, after = digests(), digests(SCORE_EDITS[key])
    assert all(after[name] != before[name] for name in ("scores", "selection", "efficacy"))


@pytest.mark.parametrize("key", SELECTION_EDITS)
def test_a_selection_edit_changes_the_selection_and_efficacy_digests(key):
    before, after = digests(), digests(SELECTION_EDITS[key])
    assert after["scores"] == before["scores"]
    assert after["selection"] != before["selection"] and after["efficacy"] != before["efficacy"]


@pytest.mark.parametrize("key", EFFICACY_EDITS)
def test_an_efficacy_edit_changes_the_efficacy_digest_alone(key):
    before, after = digests(), digests(EFFICACY_EDITS[key])
    assert (after["scores"], after["selection"]) == (before["scores"], before["selection"])
    assert after["efficacy"] != before["efficacy"]


@pytest.mark.parametrize("key", NO_EDITS)
def test_where_outputs_go_changes_no_digest(key):
    assert digests(NO_EDITS[key]) == digests()


def test_digests_of_the_resolved_configuration():
    """The digest is of the configuration as resolved: key order, an explicit default and a
    format settled from the corpus give the same digest; the resolved format counts."""
    assert digests(set_key("output", "format", "jsonl")) == digests()  # the default: null, resolved to jsonl
    assert digests(set_key("inference", "chunk_docs", 4096)) == digests()  # the schema's default, written out
    assert digests(output_format="jsonl.gz")["scores"] != digests()["scores"]
    sections = prov.scores_config(resolved(tiny_config("c.jsonl", "data/target.jsonl")), "jsonl")
    assert set(sections) == {"device", "corpus", "inference", "output", "models", "target", "proxy", "annotation",
                             "scorer"}
    assert "path" not in sections["corpus"] and set(sections["output"]) == {"format", "score_field", "extra_fields"}
    assert digests(corpus="c.jsonl")["scores"] == hashlib.sha256(json.dumps(
        sections, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_a_pretrained_scorer_digest_leaves_out_what_no_rule_reads():
    """With scorer.checkpoint no rule reads the proxy's, the annotation's or the training's keys
    (config.yaml's demo models stay in every run's config); the checkpoint's revision counts."""
    base = digests(checkpoint="org/scorer")
    for edit in (set_key("annotation", "lr", 0.1), set_key("scorer", "epochs", 3),
                 set_key("models", "proxy", {"repo": "org/proxy"}), set_key("target", "eval_fraction", 0.2)):
        assert digests(edit, checkpoint="org/scorer")["scores"] == base["scores"]
    for edit in (set_key("scorer", "checkpoint_revision", "v2"), set_key("inference", "dtype", "bf16")):
        assert digests(edit, checkpoint="org/scorer")["scores"] != base["scores"]
    assert digests(checkpoint="org/other")["scores"] != base["scores"]
    assert set(prov.scores_config(resolved({**tiny_config("c.jsonl", "t.jsonl"), "scorer": {"checkpoint": "o/s"}}),
                                  "jsonl")) == {"device", "corpus", "inference", "output", "models", "scorer"}


def test_the_demo_counts_only_when_its_files_are_read():
    demo = "results/demo/corpus.jsonl"
    assert digests(set_key("demo", "seed", 3), corpus=demo)["scores"] != digests(corpus=demo)["scores"]
    assert digests(set_key("demo", "seed", 3), corpus="./" + demo)["scores"] != digests(corpus=demo)["scores"]
    assert digests(set_key("demo", "seed", 3))["scores"] == digests()["scores"]
    target = set_key("target", "source", "results/demo/target.jsonl")
    assert digests(target, set_key("demo", "num_target", 9))["scores"] != digests(target)["scores"]


# ----------------------------------------------------------------------------------------------
# the stages: scored output, per_shard parts, training set, lqs score, fetched scorer

A, B, S = "a" * 64, "b" * 64, "5" * 64  # configuration digests, as rules/common.smk passes them


def other_scorer(scorer_dir: Path, root: Path) -> Path:
    """The scorer with other head weights, its recorded digests updated (it loads)."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = Path(shutil.copytree(scorer_dir, root / "other_scorer"))
    head = load_file(str(copy / "head.safetensors"))
    save_file({k: v + 0.5 for k, v in head.items()}, str(copy / "head.safetensors"))
    config = json.loads((copy / "scorer.json").read_text())
    (copy / "scorer.json").write_text(json.dumps({**config, "weights_sha256": weights_digests(copy)}))
    return copy


def scored(root: Path, corpus: Path, scorer: Path, digest: str = A, layout: str = "single") -> dict:
    """The corpus tokenized, scored and gathered (two shards) into root/scored.parquet, or with
    layout per_shard root/scored/part-{i}.parquet: gather's summary."""
    root.mkdir(parents=True, exist_ok=True)
    plan_path, corpus_plan = write_plan(root, [corpus], 2)
    assert [s.key for s in corpus_plan.shards] == ["0", "1"]
    common = dict(text_field="text", max_chars=10**6)
    schema = str(root / "output_schema.parquet")
    output_schema(plan_path, schema, text_field="text", max_chars=10**6, **corpus_settings(corpus_plan))
    files = {k: [] for k in ("shards", "rejects", "scores", "stats", "parts")}
    for shard in (s.key for s in corpus_plan.shards):
        for kind, name in (("shards", "shard-{}.parquet"), ("rejects", "rejects-{}.jsonl"),
                           ("scores", "scores-{}.parquet"), ("stats", "stats-{}.json"),
                           ("parts", "scored/part-{}.parquet")):
            files[kind].append(str(root / name.format(shard)))
        tokenize_shard(plan_path, shard, str(scorer), files["shards"][-1], files["rejects"][-1], max_length=16,
                       on_bad_record="error", **common, **shard_settings(corpus_plan, shard))
        score_shard(plan_path, corpus_plan, shard, files["shards"][-1], str(scorer), files["scores"][-1],
                    max_tokens=256, max_windows_per_doc=None, device="cpu", stats_out=files["stats"][-1], **common)
        if layout == "per_shard":
            (root / "scored").mkdir(exist_ok=True)
            write_part(plan_path, corpus_plan, shard, files["scores"][-1], files["rejects"][-1], files["parts"][-1],
                       scorer_dir=str(scorer), output_format="parquet", config_sha256=digest, corpus_versions={},
                       output_schema=schema, on_bad_record="error", **common)
    if layout == "per_shard":
        parts = root / "parts"
        keys = [s.key for s in corpus_plan.shards]
        given = dict(score_paths=[], reject_paths=[str(parts / f"rejects-{k}.jsonl") for k in keys],
                     part_paths=files["parts"], part_index_paths=[str(parts / f"index-{k}.parquet") for k in keys],
                     part_stats_paths=[str(parts / f"stats-{k}.json") for k in keys])
    else:
        given = dict(score_paths=files["scores"], reject_paths=files["rejects"])
    out = str(root / ("scored" if layout == "per_shard" else "scored.parquet"))
    return gather_scores(plan_path, out=out, rejects_out=str(root / "rejects.jsonl"),
                         summary_out=str(root / "summary.json"), index_out=str(root / "index.parquet"),
                         stats_paths=files["stats"], scorer_dir=str(scorer), output_schema=schema,
                         output_format="parquet", layout=layout, config_sha256=digest, corpus_versions={},
                         on_bad_record="error", **given, **common, **corpus_settings(corpus_plan))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", tiny_corpus(12))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, corpus_file, scorer_dir) -> Path:
    root = tmp_path_factory.mktemp("first")
    scored(root, corpus_file, scorer_dir)
    return root


def parquet_block_bytes(path: Path) -> bytes:
    return pq.read_schema(path).metadata[prov.PARQUET_KEY]


def test_the_scored_output_carries_the_block(first_run, corpus_file, scorer_dir):
    summary = json.loads((first_run / "summary.json").read_text())
    block = summary["provenance"]
    assert block == prov.block(A, scorer_dir, [corpus_file]) == prov.read_parquet_block(first_run / "scored.parquet")
    assert block["corpus"] == [{"path": str(corpus_file), "bytes": corpus_file.stat().st_size, "revision": None}]
    assert block["scorer"]["weights_sha256"] == weights_digests(scorer_dir) and block["config_sha256"] == A
    assert pq.read_table(first_run / "scored.parquet").num_rows == 12


def test_an_identical_rerun_writes_the_same_block(first_run, corpus_file, scorer_dir, tmp_path):
    scored(tmp_path / "again", corpus_file, scorer_dir)
    again, first = (json.loads((root / "summary.json").read_text())["provenance"] for root in (tmp_path / "again",
                                                                                              first_run))
    assert prov.canonical_json(again) == prov.canonical_json(first)
    assert parquet_block_bytes(tmp_path / "again" / "scored.parquet") == \
        parquet_block_bytes(first_run / "scored.parquet")


def _changed(first_run: Path, root: Path) -> dict[str, bool]:
    """Which parts of the block differ from the first run's."""
    before = prov.read_parquet_block(first_run / "scored.parquet")
    after = prov.read_parquet_block(root / "scored.parquet")
    assert after == json.loads((root / "summary.json").read_text())["provenance"]
    return {key: after[key] != before[key] for key in before}


def test_the_config_the_scorer_and_the_corpus_change_the_block(first_run, corpus_file, scorer_dir, tmp_path):
    same = {"lqs_version": False, "config_sha256": False, "scorer": False, "corpus": False}
    scored(tmp_path / "config", corpus_file, scorer_dir, digest=B)
    assert _changed(first_run, tmp_path / "config") == same | {"config_sha256": True}
    scored(tmp_path / "scorer", corpus_file, other_scorer(scorer_dir, tmp_path))
    assert _changed(first_run, tmp_path / "scorer") == same | {"scorer": True}
    import shutil

    edited = tmp_path / "corpus" / corpus_file.name  # the same path, as a moved run would have it
    edited.parent.mkdir()
    shutil.copy(corpus_file, edited)
    line = json.dumps({"text": "One more document."}) + "\n"
    with open(edited, "a") as f:
        f.write(line)
    scored(tmp_path / "corpus_run", edited, scorer_dir)
    changed = prov.read_parquet_block(tmp_path / "corpus_run" / "scored.parquet")["corpus"]
    assert changed == [{"path": str(edited), "bytes": corpus_file.stat().st_size + len(line), "revision": None}]


def test_per_shard_parts_carry_the_block_of_their_job(corpus_file, scorer_dir, tmp_path):
    """Each Parquet part, written by its write_part job, and gather's summary (which only sizes
    the corpus) hold the same block as a single file would."""
    summary = scored(tmp_path, corpus_file, scorer_dir, layout="per_shard")
    block = prov.block(A, scorer_dir, [corpus_file])
    assert summary["provenance"] == block
    for shard in (0, 1):
        assert prov.read_parquet_block(tmp_path / "scored" / f"part-{shard}.parquet") == block
    versions = {"s3://bucket/c.jsonl": "5f3c9a1b2d4e6f70"}  # a remote file's version reaches its entry
    part = tmp_path / "s3" / "scored" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    plan_path, corpus_plan = write_plan(tmp_path, [corpus_file], 2)  # scored()'s
    write_part(plan_path, corpus_plan, "0", str(tmp_path / "scores-0.parquet"), str(tmp_path / "rejects-0.jsonl"),
               str(part), scorer_dir=str(scorer_dir), output_format="parquet", config_sha256=A,
               corpus_versions=versions, output_schema=str(tmp_path / "output_schema.parquet"), text_field="text",
               max_chars=10**6)
    assert prov.read_parquet_block(part)["corpus"] == block["corpus"]  # a local file has no version



def test_a_part_takes_the_digests_its_scores_were_computed_with(corpus_file, scorer_dir, tmp_path, monkeypatch):
    """write_part hashes no weights (a model's worth of reading in every shard's job): its block's
    digests are those score_shard recorded in the score shard, as loading checked them."""
    import lqs.scorer

    scored(tmp_path, corpus_file, scorer_dir, layout="per_shard")

    def hashed(path):
        raise AssertionError(f"{path}: the weights hashed again")

    monkeypatch.setattr(lqs.scorer, "weights_digests", hashed)
    part = tmp_path / "again" / "part-0.parquet"
    part.parent.mkdir()
    plan_path, corpus_plan = write_plan(tmp_path, [corpus_file], 2)  # scored()'s
    write_part(plan_path, corpus_plan, "0", str(tmp_path / "scores-0.parquet"), str(tmp_path / "rejects-0.jsonl"),
               str(part), scorer_dir=str(scorer_dir), output_format="parquet", config_sha256=A, corpus_versions={},
               output_schema=str(tmp_path / "output_schema.parquet"), text_field="text", max_chars=10**6)
    assert prov.read_parquet_block(part) == prov.read_parquet_block(tmp_path / "scored" / "part-0.parquet")


SELECT = dict(selection=dict(method="top", ratio=0.5, threshold=None, temperature=1.0, seed=0),
              ordering=dict(method="folding", folds=3, seed=0), output_format="parquet")


def test_the_training_set_carries_the_selection_block(first_run, tmp_path):
    scores_block = json.loads((first_run / "summary.json").read_text())["provenance"]
    summary = select_order(str(first_run / "scored.parquet"), str(first_run / "index.parquet"),
                           [str(first_run / f"shard-{i}.parquet") for i in (0, 1)],
                           str(tmp_path / "selected.parquet"), str(tmp_path / "order.parquet"),
                           str(tmp_path / "summary.json"), scores_summary=str(first_run / "summary.json"),
                           config_sha256=S, **SELECT)
    block = summary["provenance"]
    assert block == {**scores_block, "config_sha256": S}  # its scorer and corpus, its own configuration
    assert prov.read_parquet_block(tmp_path / "selected.parquet") == block  # replaces the scored output's
    assert json.loads((tmp_path / "summary.json").read_text())["provenance"] == block
    assert pq.read_table(tmp_path / "selected.parquet").num_rows == 6
    alone = select_order(str(first_run / "scored.parquet"), str(first_run / "index.parquet"),
                         [str(first_run / f"shard-{i}.parquet") for i in (0, 1)],
                         str(tmp_path / "s2.parquet"), str(tmp_path / "o2.parquet"), str(tmp_path / "s2.json"),
                         config_sha256=S, **SELECT)
    assert (alone["provenance"]["scorer"], alone["provenance"]["corpus"]) == (None, [])
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(ValueError, match=f"{tmp_path / 'old.json'} has no provenance block"):
        select_order(str(first_run / "scored.parquet"), str(first_run / "index.parquet"),
                     [str(first_run / f"shard-{i}.parquet") for i in (0, 1)],
                     str(tmp_path / "s3.parquet"), str(tmp_path / "o3.parquet"), str(tmp_path / "s3.json"),
                     scores_summary=str(tmp_path / "old.json"), config_sha256=S, **SELECT)


def test_lqs_score_carries_its_block(corpus_file, scorer_dir, tmp_path):
    from lqs.score import score_files

    def run(out, **options):
        return score_files([str(corpus_file)], scorer=str(scorer_dir), out=str(tmp_path / out), device="cpu",
                           progress=False, overwrite=True, **options)["provenance"]

    block = run("a.parquet")
    assert block == prov.read_parquet_block(tmp_path / "a.parquet")
    assert (block["scorer"], block["corpus"]) == (prov.scorer_entry(scorer_dir), prov.corpus_entries([corpus_file]))
    assert run("a.parquet") == block and parquet_block_bytes(tmp_path / "a.parquet") == \
        prov.parquet_metadata(block)[prov.PARQUET_KEY]  # rerun: the same block
    assert run("a.jsonl")["config_sha256"] != block["config_sha256"]  # the format is an option that counts
    windows = run("b.parquet", max_windows_per_doc=1)
    assert windows["config_sha256"] != block["config_sha256"] and windows["scorer"] == block["scorer"]
    assert run("c.parquet", tokenizer_workers=1, rejects=str(tmp_path / "r.jsonl")) == block  # not score options
    other = score_files([str(corpus_file)], scorer=str(other_scorer(scorer_dir, tmp_path)),
                        out=str(tmp_path / "d.parquet"), device="cpu", progress=False)["provenance"]
    assert other["scorer"] != block["scorer"] and other["config_sha256"] == block["config_sha256"]


def test_a_fetched_local_scorer_keeps_its_recorded_source(scorer_dir, tmp_path):
    import shutil

    from lqs.scorer import load

    fetch_scorer(str(tmp_path / "plain"), source={"path": str(scorer_dir)})
    assert "source" not in json.loads((tmp_path / "plain" / "scorer.json").read_text())
    copy = Path(shutil.copytree(scorer_dir, tmp_path / "from_hub"))
    config = json.loads((copy / "scorer.json").read_text())
    (copy / "scorer.json").write_text(json.dumps({**config, "source": {"repo": "org/s", "revision": "c0ffee"}}))
    fetch_scorer(str(tmp_path / "fetched"), source={"path": str(copy)})
    entry = prov.scorer_entry(tmp_path / "fetched")
    assert (entry["repo"], entry["revision"]) == ("org/s", "c0ffee")
    load(tmp_path / "fetched", device="cpu")  # the digests still check


# ----------------------------------------------------------------------------------------------
# the finished tiny run


@pytest.mark.workflow
def test_the_finished_run_records_its_provenance(completed_workflow, tmp_path, monkeypatch):
    results = completed_workflow / "results"
    block = json.loads((results / "summary.json").read_text())["provenance"]
    config = resolved(yaml.safe_load((completed_workflow / "config" / "config.yaml").read_text()))
    expected = prov.config_digests(config, output_format="jsonl", demo_files=DEMO_FILES)
    settings = {k: v for k, v in json.loads((results / "scorer" / "scorer.json").read_text()).items()
                if k != "weights_sha256"}
    assert settings["max_length"] == 32 and "pooling" in settings
    assert block == {"lqs_version": prov.lqs_version(), "config_sha256": expected["scores"],
                     "scorer": {"weights_sha256": weights_digests(results / "scorer"),
                                "settings": settings, "repo": None, "revision": None},
                     "corpus": [{"path": "data/corpus.jsonl",
                                 "bytes": (completed_workflow / "data" / "corpus.jsonl").stat().st_size,
                                 "revision": None}]}
    selection = json.loads((results / "selection" / "summary.json").read_text())["provenance"]
    assert selection == {**block, "config_sha256": expected["selection"]}
    # lqs score, with the run's scorer on its corpus: the same scorer and corpus, its own configuration
    from lqs.score import score_files

    monkeypatch.chdir(completed_workflow)
    summary = score_files(["data/corpus.jsonl"], scorer="results/scorer", out=str(tmp_path / "s.parquet"),
                          device="cpu", progress=False)
    assert prov.read_parquet_block(tmp_path / "s.parquet") == summary["provenance"]
    assert {k: v for k, v in summary["provenance"].items() if k != "config_sha256"} == \
        {k: v for k, v in block.items() if k != "config_sha256"}


@pytest.mark.workflow
def test_an_edit_outside_the_scores_replans_no_scoring(completed_workflow, tmp_path):
    """efficacy.* is in no digest of `all`'s outputs: nothing to do; a selection edit replans the
    selection alone (its digest is select_order's params, not score_shard's or gather_scores')."""
    workdir = copy_workflow(completed_workflow, tmp_path)
    assert plan(workdir) == []  # identical: the same params
    edit_config(workdir, set_key("efficacy", "seeds", 7))
    assert plan(workdir) == []
    edit_config(workdir, set_key("ordering", "folds", 5))
    assert rule_counts(plan(workdir)) == {"select_order": 1, "all": 1}
