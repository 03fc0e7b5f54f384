"""The workflow's plan: every fact the rules derive from the resolved configuration and the corpus
listing (the shards, the outputs' files, which rules write the models, the annotated steps, the
provenance digests, the jobs' memory), computed once at DAG build by `build_workflow_plan`.

rules/common.smk validates the configuration, lists the corpus and resolves the outputs
(lqs.config), builds this plan from them and passes its values to the rules. It is a plain value:
no Snakemake, no file written (the corpus plan's file is written by the workflow's `onstart`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lqs import config as lqs_config
from lqs import output as lqs_output
from lqs import provenance, splits
from lqs.sources import Corpus, CorpusFile


def demo_files(results: str) -> tuple[str, str]:
    """The demo's corpus and target set, demo_data's outputs: inputs the workflow writes itself,
    so no output conflicts with them."""
    return f"{results}/demo/corpus.jsonl", f"{results}/demo/target.jsonl"


@dataclass(frozen=True)
class WorkflowPlan:
    """What the rules read beyond the configuration itself (build_workflow_plan)."""

    # the corpus: its files as listed, and its plan (lqs.splits: the shards as input splits), written
    # to a file in `plans_dir` named by its digest
    corpus_files: tuple[CorpusFile, ...]
    corpus_plan: splits.CorpusPlan
    plans_dir: str
    shards: tuple[str, ...]
    shard_files: Mapping[str, tuple[CorpusFile, ...]]  # the corpus files each shard reads
    # the digest of each shard's splits (a job's params carry the splits it reads), and of all of them
    shard_splits_sha256: Mapping[str, str]
    corpus_splits_sha256: str
    # the local corpus files' names, sizes and modification times (lqs.splits.local_state), in the
    # params of a job reading the whole corpus instead of every file as an input; the demo's left out
    corpus_state: str
    # output.* with its format and path settled (lqs.config.resolve_outputs), selection.* with its path
    output: Mapping[str, Any]
    selection: Mapping[str, Any]
    per_shard_output: bool
    scored_files: tuple[str, ...]  # the scored output's files: one, or (per_shard) a part per shard
    # output.format parquet: the scored output's one schema, settled before any record is written
    # (lqs/stages/output_schema.py) and read by every writer of the output (gather_scores, or with
    # layout per_shard write_part), which rejects a JSONL record that it cannot hold exactly
    output_schema: tuple[str, ...]
    # the models: with a pretrained scorer (scorer.checkpoint) no proxy, scorer base or proxy tokenizer
    scorer_checkpoint: str | None
    checkpoint_source: Mapping[str, Any] | None  # {"path": …} or {"repo": …, "revision": …}
    proxy: Mapping[str, Any] | None
    scorer_base: Mapping[str, Any] | None
    tokenizer_source: Mapping[str, Any] | None  # models.tokenizer's repo or path, else the proxy's
    tokenizer_fetch_source: Mapping[str, Any] | None  # fetch_tokenizer's: the checkpoint's own, else the above
    scorer_tokenizer: str  # the tokenizer the scorer keeps, which tokenize_scorer_shard reads
    pretrain_proxy: bool  # an architecture-config proxy, pretrained here (else fetched)
    train_tokenizer: bool  # ... with a tokenizer trained on the corpus unless models.tokenizer names one
    # target.source and efficacy.eval_source: from the hub unless a local path (or the demo's)
    target_from_hub: bool
    eval_from_hub: bool
    efficacy_arms: tuple[str, ...]
    annotated_steps: tuple[int, ...]
    proxy_parts: tuple[int, ...]
    # the provenance blocks' configuration digests (lqs.provenance.config_digests): scores, selection, efficacy
    config_digests: Mapping[str, str]
    # resources: a rough fp32 estimate of a job's training memory at its first attempt (MB), from
    # the configured batch and sequence sizes
    proxy_mem_mb: int
    scorer_mem_mb: int
    efficacy_mem_mb: int
    targets: tuple[str, ...]  # `all`: the scored output, the run's summary and the selection

    def job_files(self, shard: str | None) -> list[CorpusFile]:
        """The corpus files a job reads: shard `shard`'s, or (None: a job without a shard) all of them."""
        return list(self.corpus_files if shard is None else self.shard_files[shard])

    def splits_sha256(self, shard: str | None) -> str:
        """The digest of the splits a job reads: its shard's, or (None) every shard's."""
        return self.corpus_splits_sha256 if shard is None else self.shard_splits_sha256[shard]

    def corpus_versions(self, shard: str | None) -> dict[str, str]:
        """URL -> version of the job's remote files that no commit pins ({} for local files)."""
        return {f.path: f.version for f in self.job_files(shard) if f.version}


def build_workflow_plan(config: Mapping[str, Any], corpus: Corpus, outputs: lqs_config.Outputs,
                        results: str = "results") -> WorkflowPlan:
    """The plan of a run: `config` validated with its defaults filled in (it is not changed),
    `corpus` its listing (lqs.config.corpus_sources) and `outputs` as lqs.config.resolve_outputs
    settles them; the workflow writes its own files under `results`."""
    demo = demo_files(results)
    paths = [f.path for f in corpus.files]
    corpus_plan = splits.build_plan(
        paths, {f.path: f.version for f in corpus.files if f.version},
        splits.file_sizes(paths, {f.path: f.size for f in corpus.files}),
        config["corpus"]["num_shards"], config["corpus"]["shard_size"])
    shards = tuple(shard.key for shard in corpus_plan.shards)
    by_path = {f.path: f for f in corpus.files}

    output = {**config["output"], "format": outputs.format, "path": outputs.path}
    per_shard = output["layout"] == "per_shard"
    scored_files = tuple(f"{output['path']}/{lqs_output.part_name(shard, output['format'])}" for shard in shards) \
        if per_shard else (output["path"],)
    output_schema = (f"{results}/corpus/output_schema.parquet",) if output["format"] == "parquet" else ()

    models, scorer = config["models"], config["scorer"]
    checkpoint = scorer["checkpoint"]
    proxy = None if checkpoint else models["proxy"]
    own_tokenizer = lqs_config.names_a_source(models["tokenizer"])
    tokenizer_source = None if checkpoint else models["tokenizer"] if own_tokenizer else proxy
    if not checkpoint:
        checkpoint_source = None
    elif lqs_config.is_local_source(checkpoint, results):
        checkpoint_source = {"path": checkpoint}
    else:
        checkpoint_source = {"repo": checkpoint, "revision": scorer["checkpoint_revision"]}
    pretrain_proxy = proxy is not None and "arch" in proxy
    eval_source = config["efficacy"]["eval_source"]
    annotation = config["annotation"]

    return WorkflowPlan(
        corpus_files=tuple(corpus.files),
        corpus_plan=corpus_plan,
        plans_dir=f"{results}/corpus/plans",
        shards=shards,
        shard_files={shard.key: tuple(by_path[path] for path in shard.files) for shard in corpus_plan.shards},
        shard_splits_sha256={shard.key: splits.splits_sha256(shard.splits) for shard in corpus_plan.shards},
        corpus_splits_sha256=splits.splits_sha256(split for shard in corpus_plan.shards for split in shard.splits),
        corpus_state=splits.local_state([f.path for f in corpus.files if f.local and f.path not in demo]),
        output=output,
        selection={**config["selection"], "path": outputs.selection_path},
        per_shard_output=per_shard,
        scored_files=scored_files,
        output_schema=output_schema,
        scorer_checkpoint=checkpoint,
        checkpoint_source=checkpoint_source,
        proxy=proxy,
        scorer_base=None if checkpoint else models["scorer"],
        tokenizer_source=tokenizer_source,
        tokenizer_fetch_source={"path": f"{results}/scorer"} if checkpoint else tokenizer_source,
        scorer_tokenizer=f"{results}/scorer" if checkpoint else f"{results}/models/scorer_base",
        pretrain_proxy=pretrain_proxy,
        train_tokenizer=pretrain_proxy and not own_tokenizer,
        target_from_hub=not lqs_config.is_local_source(config["target"]["source"], results),
        eval_from_hub=eval_source is not None and not lqs_config.is_local_source(eval_source, results),
        efficacy_arms=tuple(config["efficacy"]["arms"]),
        annotated_steps=tuple(lqs_config.annotated_steps(annotation["steps"], annotation["interval"])),
        proxy_parts=tuple(range(config["proxy"]["num_parts"])),
        config_digests=provenance.config_digests(config, output_format=output["format"], demo_files=demo),
        proxy_mem_mb=8000 + 2 * annotation["batch_size"] * config["corpus"]["max_length"],
        scorer_mem_mb=8000 + 2 * scorer["batch_size"] * scorer["max_length"],
        efficacy_mem_mb=8000 + 2 * config["efficacy"]["batch_tokens"],
        targets=(*scored_files, f"{results}/summary.json", outputs.selection_path),
    )

