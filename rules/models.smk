PROXY = config["models"]["proxy"]
SCORER_BASE = config["models"]["scorer"]
TRUST_REMOTE_CODE = config["models"]["trust_remote_code"]


if "arch" in PROXY and "path" not in config["models"]["tokenizer"] and "repo" not in config["models"]["tokenizer"]:

    rule train_tokenizer:
        input:
            CORPUS_FILES,
        output:
            directory(f"{MODELS}/tokenizer"),
        params:
            settings=as_settings(
                text_field=config["corpus"]["text_field"],
                max_chars=config["corpus"]["max_chars"],
                vocab_size=config["models"]["tokenizer"]["vocab_size"],
            ),
        log:
            f"{RESULTS}/logs/train_tokenizer.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_tokenizer/all.tsv"
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs train-tokenizer {input} --out-dir {output} --settings {params.settings:q} > {log} 2>&1"

else:

    rule fetch_tokenizer:
        output:
            directory(f"{MODELS}/tokenizer"),
        params:
            settings=as_settings(
                source=config["models"]["tokenizer"]
                if "vocab_size" not in config["models"]["tokenizer"]
                else PROXY,
                trust_remote_code=TRUST_REMOTE_CODE,
            ),
        log:
            f"{RESULTS}/logs/fetch_tokenizer.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_tokenizer/all.tsv"
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-tokenizer --out-dir {output} --settings {params.settings:q} > {log} 2>&1"


if "arch" in PROXY:

    rule pretrain_proxy:
        input:
            tokenizer=f"{MODELS}/tokenizer",
            shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        output:
            directory(f"{MODELS}/proxy"),
        params:
            settings=as_settings(arch=PROXY["arch"], **PROXY["pretrain"], device=config["device"]),
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

else:

    rule fetch_proxy:
        input:
            tokenizer=f"{MODELS}/tokenizer",
        output:
            directory(f"{MODELS}/proxy"),
        params:
            settings=as_settings(source=PROXY, causal_lm=True, trust_remote_code=TRUST_REMOTE_CODE),
        log:
            f"{RESULTS}/logs/fetch_proxy.log",
        benchmark:
            f"{RESULTS}/benchmarks/fetch_proxy/all.tsv"
        conda:
            "../envs/lqs.yaml"
        shell:
            "lqs fetch-model --tokenizer-dir {input.tokenizer} --out-dir {output}"
            " --settings {params.settings:q} > {log} 2>&1"


rule fetch_scorer_base:
    input:
        # An architecture-config scorer shares the demo's trained tokenizer; a fetched one has its own.
        tokenizer=[f"{MODELS}/tokenizer"] if "arch" in SCORER_BASE else [],
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
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs fetch-model {params.tokenizer} --out-dir {output} --settings {params.settings:q} > {log} 2>&1"
