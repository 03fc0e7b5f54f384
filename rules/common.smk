import glob
import json
import os

from snakemake.utils import validate


validate(config, "../config/schema.yaml")

RESULTS = "results"
MODELS = f"{RESULTS}/models"


def as_settings(**kwargs):
    """A stage's configuration as one JSON string: the rule's params, so that editing exactly
    this configuration reruns the rule (Snakemake's params rerun trigger)."""
    return json.dumps(kwargs, sort_keys=True)


def corpus_files():
    paths = config["corpus"]["path"]
    files = []
    for pattern in [paths] if isinstance(paths, str) else paths:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise WorkflowError(f"corpus.path: {pattern!r} matches no file")
        files.extend(matched)
    return files


CORPUS_FILES = corpus_files()
PER_FILE = config["corpus"]["num_shards"] == "per_file"
NUM_SHARDS = len(CORPUS_FILES) if PER_FILE else config["corpus"]["num_shards"]
SHARDS = list(range(NUM_SHARDS))


def shard_files(wildcards):
    """A shard's input files: its own file (per_file sharding) or every file (line modulo)."""
    return [CORPUS_FILES[int(wildcards.shard)]] if PER_FILE else CORPUS_FILES


def target_source_file(wildcards):
    """The target set as an input file when it is local (or built by the demo), not a hub id."""
    source = config["target"]["source"]
    return [source] if os.path.exists(source) or source.startswith(f"{RESULTS}/") else []


ANNOTATION = config["annotation"]
ANNOTATED_STEPS = [t for t in range(ANNOTATION["steps"]) if t % ANNOTATION["interval"] == 0]
PROXY_PARTS = list(range(config["proxy"]["num_parts"]))


def corpus_settings():
    c = config["corpus"]
    return dict(num_shards=c["num_shards"], text_field=c["text_field"], max_chars=c["max_chars"])


# Resources scale with the configured sizes: a rough fp32 estimate of the proxy's and scorer's
# training memory; the SLURM profile maps them to --mem and --time.
def proxy_mem_mb(wildcards=None, attempt=1):
    tokens = config["annotation"]["batch_size"] * config["corpus"]["max_length"]
    return int(attempt * (8000 + 2 * tokens))


def gpu_runtime(minutes):
    return lambda wildcards, attempt: int(minutes * attempt)
