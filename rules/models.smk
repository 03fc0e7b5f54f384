SCORER_CHECKPOINT = config["scorer"]["checkpoint"]
TRUST_REMOTE_CODE = config["models"]["trust_remote_code"]
# With a pretrained scorer (scorer.checkpoint) nothing reads models.proxy, models.scorer or
# models.tokenizer (the schema requires them only without one): the demo's, which every run
# inherits from config/config.yaml, are ignored.
PROXY = None if SCORER_CHECKPOINT else config["models"]["proxy"]
SCORER_BASE = None if SCORER_CHECKPOINT else config["models"]["scorer"]
# The proxy tokenizer's own repo or path, or (by default: `tokenizer: {}`) the proxy's.
TOKENIZER_SOURCE = (
    None
    if SCORER_CHECKPOINT
    else config["models"]["tokenizer"] if {"repo", "path"} & set(config["models"]["tokenizer"]) else PROXY
)
TARGET_SOURCE = config["target"]["source"]
# The target set comes from the hub unless it is a local file or directory (or built by the demo).
TARGET_FROM_HUB = not (os.path.exists(TARGET_SOURCE) or TARGET_SOURCE.startswith(f"{RESULTS}/"))

# A pretrained scorer checkpoint: a local directory, or a hub repo (with an optional revision).
CHECKPOINT_SOURCE = (
    None
    if not SCORER_CHECKPOINT
    else (
        {"path": SCORER_CHECKPOINT}
        if os.path.isdir(SCORER_CHECKPOINT)
        else {"repo": SCORER_CHECKPOINT, "revision": config["scorer"]["checkpoint_revision"]}
    )
)
# Fetch rules need the network and the Hugging Face login, and fail fast (an access check first)
# on a gated or missing repo: they run on the submitting host (localrule) and before anything
# else that is ready (priority). A local model directory is the fetch's input, so editing it
# reruns the fetch.
FETCH_PRIORITY = 100


if SCORER_CHECKPOINT:

    # A pretrained scorer: no proxy, no annotation, no scorer training (train_scorer is not
    # defined). The checkpoint provides results/scorer and its own tokenizer is the one the
    # corpus is tokenized with.
    rule fetch_scorer:
        input:
            [CHECKPOINT_SOURCE["path"]] if "path" in CHECKPOINT_SOURCE else [],
        output:
            directory(f"{RESULTS}/scorer"),
        params:
            settings=as_settings(source=CHECKPOINT_SOURCE, trust_remote_code=TRUST_REMOTE_CODE),
        log:
            f"{RESULTS}/logs/fetch_scorer.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_scorer/all.tsv"
        priority: FETCH_PRIORITY
        localrule: True
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-scorer --out-dir {output} --settings {params.settings:q} > {log} 2>&1"

    rule fetch_tokenizer:
        input:
            scorer=f"{RESULTS}/scorer",
        output:
            directory(f"{MODELS}/tokenizer"),
        params:
            settings=as_settings(source={"path": f"{RESULTS}/scorer"}, trust_remote_code=TRUST_REMOTE_CODE),
        log:
            f"{RESULTS}/logs/fetch_tokenizer.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_tokenizer/all.tsv"
        priority: FETCH_PRIORITY
        localrule: True
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-tokenizer --out-dir {output} --settings {params.settings:q} > {log} 2>&1"

elif "arch" in PROXY and "path" not in config["models"]["tokenizer"] and "repo" not in config["models"]["tokenizer"]:

    rule train_tokenizer:
        input:
            corpus=corpus_inputs,
        output:
            directory(f"{MODELS}/tokenizer"),
        params:
            corpus=corpus_arguments,
            corpus_versions=corpus_versions,
            settings=as_settings(
                text_field=config["corpus"]["text_field"],
                max_chars=config["corpus"]["max_chars"],
                vocab_size=config["models"]["tokenizer"]["vocab_size"],
                on_bad_record=config["corpus"]["on_bad_record"],  # for a corpus file it cannot read
            ),
        log:
            f"{RESULTS}/logs/train_tokenizer.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_tokenizer/all.tsv"
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs train-tokenizer {params.corpus} --out-dir {output} --settings {params.settings:q} > {log} 2>&1"

else:

    rule fetch_tokenizer:
        input:
            [TOKENIZER_SOURCE["path"]] if "path" in TOKENIZER_SOURCE else [],
        output:
            directory(f"{MODELS}/tokenizer"),
        params:
            settings=as_settings(source=TOKENIZER_SOURCE, trust_remote_code=TRUST_REMOTE_CODE),
        log:
            f"{RESULTS}/logs/fetch_tokenizer.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_tokenizer/all.tsv"
        priority: FETCH_PRIORITY
        localrule: True
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-tokenizer --out-dir {output} --settings {params.settings:q} > {log} 2>&1"


if PROXY is not None and "arch" in PROXY:

    rule pretrain_proxy:
        input:
            tokenizer=f"{MODELS}/tokenizer",
            shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        output:
            directory(f"{MODELS}/proxy"),
        params:
            settings=as_settings(arch=PROXY["arch"], **config["models"]["pretrain"], device=config["device"]),
        log:
            f"{RESULTS}/logs/pretrain_proxy.log",
        benchmark:
            f"{RESULTS}/benchmarks/pretrain_proxy/all.tsv"
        resources:
            mem_mb=proxy_mem_mb,
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs pretrain-proxy {input.tokenizer} {input.shards} --out-dir {output}"
            " --settings {params.settings:q} > {log} 2>&1"

elif PROXY is not None:

    rule fetch_proxy:
        input:
            tokenizer=f"{MODELS}/tokenizer",
            local=[PROXY["path"]] if "path" in PROXY else [],
        output:
            directory(f"{MODELS}/proxy"),
        params:
            settings=as_settings(source=PROXY, causal_lm=True, trust_remote_code=TRUST_REMOTE_CODE),
        log:
            f"{RESULTS}/logs/fetch_proxy.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_proxy/all.tsv"
        priority: FETCH_PRIORITY
        localrule: True
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-model --tokenizer-dir {input.tokenizer} --out-dir {output}"
            " --settings {params.settings:q} > {log} 2>&1"


if SCORER_BASE is not None:

    rule fetch_scorer_base:
        input:
            # An architecture-config scorer shares the demo's trained tokenizer; a fetched one has its own.
            tokenizer=[f"{MODELS}/tokenizer"] if "arch" in SCORER_BASE else [],
            local=[SCORER_BASE["path"]] if "path" in SCORER_BASE else [],
        output:
            directory(f"{MODELS}/scorer_base"),
        params:
            settings=as_settings(
                source=SCORER_BASE,
                causal_lm=False,
                seed=config["scorer"]["seed"],
                trust_remote_code=TRUST_REMOTE_CODE,
            ),
            tokenizer=lambda wildcards, input: f"--tokenizer-dir {input.tokenizer}" if input.tokenizer else "",
        log:
            f"{RESULTS}/logs/fetch_scorer_base.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_scorer_base/all.tsv"
        priority: FETCH_PRIORITY
        localrule: True
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-model {params.tokenizer} --out-dir {output} --settings {params.settings:q} > {log} 2>&1"


if TARGET_FROM_HUB:

    # The target set from the hub (an access check, then its snapshot; one split as Parquet), so
    # that prepare_target reads a local file and a gated data set fails here, on the CPU.
    rule fetch_target:
        output:
            f"{RESULTS}/target/source.parquet",
        params:
            settings=as_settings(split=config["target"]["split"], revision=config["target"]["revision"]),
            source=TARGET_SOURCE,
        log:
            f"{RESULTS}/logs/fetch_target.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_target/all.tsv"
        priority: FETCH_PRIORITY
        localrule: True
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-target {params.source:q} --out {output} --settings {params.settings:q} > {log} 2>&1"
