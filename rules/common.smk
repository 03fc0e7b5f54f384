import dataclasses
import json
import os
import shlex
import sys

from snakemake_interface_executor_plugins.settings import DeploymentMethod
from snakemake.common.configfile import load_configfile
from snakemake.logging import logger
from snakemake.utils import validate

from lqs import config as lqs_config
from lqs import defaults as lqs_defaults
from lqs import output as lqs_output
from lqs import paths as lqs_paths
from lqs import sources as lqs_sources
from lqs import splits as lqs_splits
from lqs import workflow_plan as lqs_workflow_plan
from lqs.corpus import CorpusReading

RESULTS = "results"
MODELS = f"{RESULTS}/models"
# the demo's corpus and target set, demo_data's outputs (rules/data.smk)
DEMO_FILES = lqs_workflow_plan.demo_files(RESULTS)


def config_errors():
    """Merges the overrides as docs/configuration.md says, then validates: every problem on one
    line naming its key, and settings that contradict each other, all before any job."""
    schema = lqs_defaults.schema()
    # sources first: they are copied from the overrides, whose --config values are still strings
    settings = workflow.config_settings
    overrides = [load_configfile(path) for path in settings.configfiles] + [settings.config]
    lqs_config.replace_model_sources(config, overrides)
    lqs_config.coerce_cli_values(config, workflow.config_settings.config, schema)
    errors = lqs_config.schema_errors(config, schema)
    if not errors:
        validate(config, lqs_defaults.SCHEMA_PATH)  # fills in the defaults
        errors = lqs_config.consistency_errors(config) + lqs_config.path_character_errors(config)
    return errors


def corpus_and_file_errors():
    """The corpus (lqs.sources), and the errors of the files the run reads (a score field the
    records already have, more shards than the corpus can have documents) and writes (an
    unwritable location, an output that is, holds or lies inside an input or another output,
    an extension that contradicts output.format). Hub data sets are pinned to a
    commit here; a job that parses the workflow again (SLURM) reuses the main process's pins,
    which it inherits as an environment variable, so every job reads the same commit. Fills in the
    output's format and paths."""
    inherited = None
    if workflow.remote_exec or workflow.subprocess_exec:
        inherited = json.loads(os.environ.get(lqs_sources.PINS_ENV, "{}"))
    try:
        corpus = lqs_config.corpus_sources(config["corpus"]["path"], inherited)
    except lqs_config.ConfigError as e:
        return None, None, [str(e)]
    if not inherited:
        for pinned, commit in corpus.pins.items():
            repo, revision = pinned.split("@", 1)
            logger.info(
                f"corpus.path: Hugging Face data set {repo} ({revision or 'main'}) is pinned to commit"
                f" {commit} for this run"
            )
    os.environ[lqs_sources.PINS_ENV] = json.dumps(corpus.pins)
    files = [f.path for f in corpus.files]
    outputs, errors = lqs_config.resolve_outputs(config, files)
    errors += lqs_config.path_errors(config, outputs, RESULTS, own=DEMO_FILES)
    written = outputs.by_key() | {"results": f"{RESULTS}/summary.json"}
    return corpus, outputs, errors + lqs_config.file_errors(config, files, written)


# The configuration is merged and validated here, once, and not changed afterwards; what follows
# from it (the output's format and paths, the shards, the sources' kinds) is computed below, once.
errors = config_errors()
if not errors:
    CORPUS, OUTPUTS, errors = corpus_and_file_errors()
if errors:
    raise WorkflowError("invalid configuration:\n  " + "\n  ".join(errors))


def as_settings(**kwargs):
    """A stage's configuration as one JSON string: the rule's params, so that editing exactly
    this configuration reruns the rule (Snakemake's params rerun trigger). A settings group
    (lqs.corpus.CorpusReading) is a nested object."""
    return json.dumps(kwargs, sort_keys=True, default=dataclasses.asdict)


# Jobs find `lqs` on PATH or else beside the Python that runs Snakemake, so a venv need not be
# activated (SLURM jobs run that interpreter too); with --sdm conda, the rule's environment's own.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    shell.prefix(f'set -euo pipefail; export PATH="$PATH":{shlex.quote(os.path.dirname(sys.executable))}; ')
# Everything the rules derive from the configuration and the corpus listing, computed once
# (lqs.workflow_plan). The corpus plan (lqs.splits, docs/stages.md#shards): the shards as input
# splits, from the listing, file sizes and the footers of the Parquet files it cuts. Written once
# (onstart: not by a dry run) to a file named by its digest, whose path the jobs inherit
# ($LQS_CORPUS_PLAN); each job's params carry the digest of the splits it reads, so that only the
# shards whose splits change rerun.
PLAN = lqs_workflow_plan.build_workflow_plan(config, CORPUS, OUTPUTS, RESULTS)
os.environ[lqs_splits.PLAN_ENV] = PLAN.corpus_plan.path(PLAN.plans_dir)


onstart:
    PLAN.corpus_plan.write(PLAN.plans_dir)


# The plan's values under the short names the rules use (lqs.workflow_plan.WorkflowPlan says what each is)
SHARDS = PLAN.shards
CORPUS_STATE = PLAN.corpus_state
OUTPUT, SELECTION, SCORED_FILES = PLAN.output, PLAN.selection, PLAN.scored_files
PER_SHARD_OUTPUT = PLAN.per_shard_output
OUTPUT_SCHEMA = PLAN.output_schema
SCORER_CHECKPOINT, CHECKPOINT_SOURCE = PLAN.scorer_checkpoint, PLAN.checkpoint_source
PROXY, SCORER_BASE, SCORER_TOKENIZER = PLAN.proxy, PLAN.scorer_base, PLAN.scorer_tokenizer
PRETRAIN_PROXY, TRAIN_TOKENIZER = PLAN.pretrain_proxy, PLAN.train_tokenizer
TARGET_FROM_HUB, EVAL_FROM_HUB = PLAN.target_from_hub, PLAN.eval_from_hub
EFFICACY_ARMS, ANNOTATED_STEPS, PROXY_PARTS = PLAN.efficacy_arms, PLAN.annotated_steps, PLAN.proxy_parts
# The provenance blocks' configuration digests (lqs/provenance.py, docs/reliability.md#provenance),
# each over the configuration its output depends on (scores: the scored output and
# results/summary.json; selection; efficacy); a rule passes its output's in its params, so that an
# edit outside it reruns nothing.
CONFIG_DIGESTS = PLAN.config_digests


wildcard_constraints:
    shard="[0-9a-f]+",


def shard_of(wildcards):
    """The job's shard, or None for a job without one (it reads the whole corpus)."""
    return wildcards.shard if "shard" in wildcards.keys() else None


# A job's corpus files reach it through the plan file. The local ones the first stage to read
# them (tokenize_shard; output_schema, train_tokenizer) has as inputs, so that an edit reruns it
# and what follows; a URL cannot be a Snakemake input, so the params hold the version of each URL
# that no commit pins: a changed hub commit or remote object reruns the job (the params trigger).
def corpus_inputs(wildcards):
    """The job's local corpus files, as its input."""
    return [f.path for f in PLAN.job_files(shard_of(wildcards)) if f.local]


# A job that reads the whole corpus (train_tokenizer, output_schema, efficacy_classifier) has in its
# params a digest of the local files' names, sizes and modification times (CORPUS_STATE) instead of
# every file as an input: with 100,000 files, those inputs cost most of the planning time. It
# waits, as inputs, only for the corpus files the workflow writes itself (the demo's).
def whole_corpus_inputs(wildcards):
    """The corpus files the workflow writes, which a job reading the whole corpus must wait for."""
    return [f.path for f in PLAN.corpus_files if f.path in DEMO_FILES]


def corpus_versions(wildcards):
    """URL -> version of the job's remote files that no commit pins ({} for local files)."""
    return json.dumps(PLAN.corpus_versions(shard_of(wildcards)), sort_keys=True)


def target_source_file(wildcards):
    """The target set as an input file when it is local (or built by the demo), not a hub id."""
    return [] if TARGET_FROM_HUB else [TARGET_SOURCE]


# The models. With a pretrained scorer (scorer.checkpoint) nothing reads models.proxy, models.scorer
# or models.tokenizer (the schema requires them only without one): the demo's, which every run
# inherits from config/config.yaml, are ignored. Which of two rules writes results/models/tokenizer,
# results/models/proxy and results/scorer follows from PLAN (rules/models.smk).
SCORER = config["scorer"]
TRUST_REMOTE_CODE = config["models"]["trust_remote_code"]
INFERENCE = config["inference"]
TARGET_SOURCE = config["target"]["source"]
# Fetch rules need the network and the Hugging Face login, and fail fast (an access check first)
# on a gated or missing repo: they run on the submitting host (localrule) and before anything
# else that is ready (priority). A local model directory is the fetch's input, so editing it
# reruns the fetch.
FETCH_PRIORITY = 100

# Target `efficacy` (docs/stages.md#the-efficacy-experiment), not part of `all`.
EFFICACY = config["efficacy"]
EVAL_SOURCE = EFFICACY["eval_source"]
EVAL_DIR = f"{RESULTS}/efficacy/eval"
for warning in lqs_config.eval_source_warnings(config, [f.path for f in CORPUS.files]):
    logger.warning(warning)
# prepare_target's settings that decide which target texts are J's: the classifier's positives.
CLASSIFIER_TARGET_KEYS = ("text_field", "split", "revision", "max_samples", "eval_fraction", "seed")
CLASSIFIER_ORDER = f"{RESULTS}/efficacy/classifier/order.parquet"
CLASSIFIER_FOLDED = f"{RESULTS}/efficacy/classifier/folded.parquet"
EFFICACY_CAPTION = f"{RESULTS}/efficacy/caption.rst"
# the workflow's own report/efficacy.rst, as a local path (not the source cache's copy)
EFFICACY_CAPTION_TEMPLATE = os.path.normpath(
    workflow.current_basedir.join("../report/efficacy.rst").get_path_or_uri(secret_free=True)
)

ANNOTATION = config["annotation"]


def provenance_settings(wildcards):
    """A scoring job's provenance settings: the scores' configuration digest, and the versions of
    its remote corpus files that no commit pins (the same as its params' corpus_versions)."""
    return dict(config_sha256=CONFIG_DIGESTS["scores"], corpus_versions=PLAN.corpus_versions(shard_of(wildcards)))


def scored_record_settings():
    """What the scored records' files depend on, beyond the scores."""
    return dict(output_format=OUTPUT["format"], score_field=OUTPUT["score_field"], extra_fields=OUTPUT["extra_fields"])


def corpus_settings(wildcards):
    """What every corpus reader depends on: the splits it reads, and how records are read."""
    c = config["corpus"]
    return dict(corpus=CorpusReading(PLAN.splits_sha256(shard_of(wildcards)), c["text_field"], c["max_chars"]))


# Resources scale with the configured sizes (PLAN's estimates of a job's memory); the SLURM
# profile maps them to --mem and --time. A retry gets more.
def memory_mb(first_attempt_mb):
    return lambda wildcards, attempt: first_attempt_mb * attempt


def gpu_runtime(minutes):
    return lambda wildcards, attempt: int(minutes * attempt)


def efficacy_target_eval(wildcards):
    """`snakemake efficacy`'s target evaluation set: efficacy.eval_source's, else the target's
    held-out part. An input function, so that with neither only that target stops, at DAG build."""
    if EVAL_SOURCE is not None:
        return f"{EVAL_DIR}/target.parquet"
    if config["target"]["eval_fraction"] > 0:
        return f"{RESULTS}/target/eval_tokens.parquet"
    raise WorkflowError(
        "efficacy: no target evaluation set: target.eval_fraction is 0 (the whole target set is the"
        " annotation's J) and efficacy.eval_source is not set; set target.eval_fraction > 0 or give"
        " efficacy.eval_source"
    )


def efficacy_arm_order(wildcards):
    """efficacy_train's documents for the classifier arms (efficacy_classifier's); none for the others."""
    return {"classifier": [CLASSIFIER_ORDER], "classifier_folded": [CLASSIFIER_FOLDED]}.get(wildcards.arm, [])


def efficacy_proxy(wildcards):
    """efficacy.model null: the proxy's architecture (its config.json), initialised anew. An input
    function, so that without a proxy (scorer.checkpoint) only this target stops, at DAG build."""
    if EFFICACY["model"] is not None:
        return []
    if SCORER_CHECKPOINT:
        raise WorkflowError(
            "efficacy: efficacy.model is null, which means the proxy's architecture, but with"
            " scorer.checkpoint there is no proxy; set efficacy.model to a transformers config"
            " (with model_type), e.g. {model_type: mistral, hidden_size: 512, ...}"
        )
    return [f"{MODELS}/proxy"]


def output_schema_flag(wildcards, input):
    """`--output-schema FILE` for a job with the output schema among its inputs (a list, quoted by :q)."""
    return ["--output-schema", input.output_schema[0]] if input.output_schema else []


def local_source(source):
    """A model or data source's local path as an input ([] for a hub repo, or no source)."""
    return [source["path"]] if source and "path" in source else []


def local_source_files(source):
    """A fetch rule's params entry for a user's local model directory: each file's relative name,
    size and mtime_ns (lqs.paths.directory_listing), as Snakemake does not look inside a directory
    input; editing a file in it reruns the fetch and what follows. Empty for a hub repo and for a
    directory the workflow writes (under results/, whose time stamps Snakemake follows itself)."""
    path = local_source(source)
    if not path or os.path.normpath(path[0]).split(os.sep)[0] == RESULTS or not os.path.isdir(path[0]):
        return "[]"
    return json.dumps(lqs_paths.directory_listing(path[0]))


def gather_model_inputs(name):
    """gather_scores' input `name` (scorer metrics, annotation info, proxy): none with a
    pretrained scorer (scorer.checkpoint), which has no proxy, annotation or training metrics."""
    paths = {
        "metrics": f"{RESULTS}/scorer",
        "annotation": f"{RESULTS}/annotation/labels.json",
        "proxy": f"{MODELS}/proxy",
    }
    return lambda wildcards: [] if SCORER_CHECKPOINT else paths[name]


def gather_model_arguments(wildcards, input):
    """gather_scores' arguments for the trained scorer's metrics, the annotation and the proxy."""
    if SCORER_CHECKPOINT:
        return []
    return [
        "--scorer-metrics",
        f"{input.metrics}/metrics.json",
        "--annotation-info",
        input.annotation,
        "--proxy-model",
        input.proxy,
    ]


def get_final_output():
    """The final targets, the input of the Snakefile's `all`: the scored output, the run's summary
    and the selection."""
    return list(PLAN.targets)
