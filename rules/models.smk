# Two rules can write each of results/models/tokenizer, results/models/proxy and results/scorer, and
# the configuration decides which one does (lqs/workflow_plan.py). Snakemake picks among the producers
# of a file by `ruleorder` only, which is static (no input function can choose a rule over
# another), so the rule order is the one thing here set by a condition; every rule is defined.
if TRAIN_TOKENIZER:

    ruleorder: train_tokenizer > fetch_tokenizer

else:

    ruleorder: fetch_tokenizer > train_tokenizer


if PRETRAIN_PROXY:

    ruleorder: pretrain_proxy > fetch_proxy

else:

    ruleorder: fetch_proxy > pretrain_proxy


if SCORER_CHECKPOINT:

    ruleorder: fetch_scorer > train_scorer

else:

    ruleorder: train_scorer > fetch_scorer


# A pretrained scorer (scorer.checkpoint): no proxy, no annotation, no scorer training. The
# checkpoint provides results/scorer and its own tokenizer is the one the corpus is tokenized with.
rule fetch_scorer:
    input:
        lambda wildcards: local_source(CHECKPOINT_SOURCE),
    output:
        directory(f"{RESULTS}/scorer"),
    params:
        local_files=lambda wildcards: local_source_files(CHECKPOINT_SOURCE),
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
        "lqs fetch-scorer --out-dir {output:q} --settings {params.settings:q} > {log:q} 2>&1"


# The tokenizer from a repo or local directory: models.tokenizer's, the proxy's, or (scorer.checkpoint)
# the pretrained scorer's, which fetch_scorer writes.
rule fetch_tokenizer:
    input:
        lambda wildcards: local_source(PLAN.tokenizer_fetch_source),
    output:
        directory(f"{MODELS}/tokenizer"),
    params:
        local_files=lambda wildcards: local_source_files(PLAN.tokenizer_fetch_source),
        settings=as_settings(source=PLAN.tokenizer_fetch_source, trust_remote_code=TRUST_REMOTE_CODE),
    log:
        f"{RESULTS}/logs/fetch_tokenizer.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_tokenizer/all.tsv"
    priority: FETCH_PRIORITY
    localrule: True
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs fetch-tokenizer --out-dir {output:q} --settings {params.settings:q} > {log:q} 2>&1"


# An architecture-config proxy without models.tokenizer's repo or path: a tokenizer trained on the corpus.
rule train_tokenizer:
    input:
        corpus=whole_corpus_inputs,
    output:
        directory(f"{MODELS}/tokenizer"),
    params:
        corpus_state=CORPUS_STATE,
        corpus_versions=corpus_versions,
        settings=lambda wildcards: as_settings(
            **corpus_settings(wildcards),
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
        'lqs train-tokenizer --plan "$LQS_CORPUS_PLAN" --out-dir {output:q} --settings {params.settings:q} > {log:q} 2>&1'


rule pretrain_proxy:
    input:
        tokenizer=f"{MODELS}/tokenizer",
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
    output:
        directory(f"{MODELS}/proxy"),
    params:
        settings=lambda wildcards: as_settings(
            arch=PROXY["arch"], **config["models"]["pretrain"], device=config["device"]
        ),
    log:
        f"{RESULTS}/logs/pretrain_proxy.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_proxy/all.tsv"
    resources:
        mem_mb=memory_mb(PLAN.proxy_mem_mb),
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs pretrain-proxy {input.tokenizer:q} {input.shards:q} --out-dir {output:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule fetch_proxy:
    input:
        tokenizer=f"{MODELS}/tokenizer",
        local=lambda wildcards: local_source(PROXY),
    output:
        directory(f"{MODELS}/proxy"),
    params:
        local_files=lambda wildcards: local_source_files(PROXY),
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
        "lqs fetch-proxy --tokenizer-dir {input.tokenizer:q} --out-dir {output:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule fetch_scorer_base:
    input:
        # An architecture-config scorer shares the demo's trained tokenizer; a fetched one has its own.
        tokenizer=lambda wildcards: [f"{MODELS}/tokenizer"] if SCORER_BASE and "arch" in SCORER_BASE else [],
        local=lambda wildcards: local_source(SCORER_BASE),
    output:
        directory(f"{MODELS}/scorer_base"),
    params:
        local_files=lambda wildcards: local_source_files(SCORER_BASE),
        settings=as_settings(
            source=SCORER_BASE,
            causal_lm=False,
            seed=SCORER["seed"],
            trust_remote_code=TRUST_REMOTE_CODE,
        ),
        tokenizer=lambda wildcards, input: ["--tokenizer-dir", *input.tokenizer] if input.tokenizer else [],
    log:
        f"{RESULTS}/logs/fetch_scorer_base.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_scorer_base/all.tsv"
    priority: FETCH_PRIORITY
    localrule: True
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs fetch-scorer-base {params.tokenizer:q} --out-dir {output:q} --settings {params.settings:q} > {log:q} 2>&1"


# The target set from the hub (an access check, then its snapshot; one split as Parquet), so
# that prepare_target reads a local file and a gated data set fails here, on the CPU. Needed only
# when the target set is a hub id (prepare_target's input, rules/data.smk).
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
        "lqs fetch-target {params.source:q} --out {output:q} --settings {params.settings:q} > {log:q} 2>&1"
