# Target `efficacy` (docs/stages.md#the-efficacy-experiment), not part of `all`: small causal LMs
# trained from scratch on equal token budgets, one job per arm and seed, then a table and a figure.


# An evaluation set from the hub (efficacy.eval_source, not a local file): prepare_eval_source's input.
rule fetch_eval_source:
    output:
        f"{EVAL_DIR}/source.parquet",
    params:
        settings=as_settings(split=EFFICACY["eval_split"], revision=None),
        source=EVAL_SOURCE,
    log:
        f"{RESULTS}/logs/fetch_eval_source.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_eval_source/all.tsv"
    priority: FETCH_PRIORITY
    localrule: True
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs fetch-eval-source {params.source:q} --out {output} --settings {params.settings:q} > {log} 2>&1"


# efficacy.eval_source, parsed and tokenized as the target set is (first window of target.max_length).
rule prepare_eval_source:
    input:
        source=lambda wildcards: f"{EVAL_DIR}/source.parquet" if EVAL_FROM_HUB else EVAL_SOURCE,
        tokenizer=f"{MODELS}/tokenizer",
    output:
        f"{EVAL_DIR}/target.parquet",
    params:
        settings=as_settings(
            text_field=config["target"]["text_field"],
            max_length=config["target"]["max_length"],
            split=EFFICACY["eval_split"],
        ),
    log:
        f"{RESULTS}/logs/prepare_eval_source.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_eval_source/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs prepare-eval-source {input.source:q} --tokenizer-dir {input.tokenizer} --out {output}"
        " --settings {params.settings:q} > {log} 2>&1"


rule efficacy_corpus_eval:
    input:
        expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
    output:
        f"{EVAL_DIR}/corpus.parquet",
    params:
        settings=as_settings(docs=EFFICACY["corpus_eval_docs"]),
    log:
        f"{RESULTS}/logs/efficacy_corpus_eval.log",
    benchmark:
        f"{RESULTS}/benchmarks/efficacy_corpus_eval/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs efficacy-corpus-eval {input} --out {output} --settings {params.settings:q} > {log} 2>&1"


rule efficacy_train:
    input:
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        order=f"{RESULTS}/selection/order.parquet",
        target_eval=efficacy_target_eval,
        corpus_eval=f"{EVAL_DIR}/corpus.parquet",
        tokenizer=f"{MODELS}/tokenizer",
        proxy=efficacy_proxy,
    output:
        f"{RESULTS}/efficacy/runs/{{arm}}-{{seed}}.parquet",
    wildcard_constraints:
        arm="|".join(EFFICACY_ARMS),
        seed=r"\d+",
    params:
        settings=as_settings(
            **{
                k: EFFICACY[k]
                for k in ("model", "tokens", "lr", "batch_tokens", "warmup_steps", "weight_decay", "eval_every")
            },
            device=config["device"],
            trust_remote_code=TRUST_REMOTE_CODE,
        ),
        proxy=lambda wildcards, input: f"--proxy-dir {input.proxy}" if input.proxy else "",
    log:
        f"{RESULTS}/logs/efficacy_train/{{arm}}-{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/efficacy_train/{{arm}}-{{seed}}.tsv"
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: int(attempt * (8000 + 2 * EFFICACY["batch_tokens"])),
        runtime=gpu_runtime(240),
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs efficacy-train {input.shards} --order {input.order} --target-eval {input.target_eval}"
        " --corpus-eval {input.corpus_eval} --tokenizer-dir {input.tokenizer} {params.proxy}"
        " --arm {wildcards.arm} --seed {wildcards.seed} --out {output}"
        " --nproc {resources.gpu} --settings {params.settings:q} > {log} 2>&1"


rule efficacy:
    input:
        runs=expand(
            f"{RESULTS}/efficacy/runs/{{arm}}-{{seed}}.parquet", arm=EFFICACY_ARMS, seed=range(EFFICACY["seeds"])
        ),
        target_eval=efficacy_target_eval,
        corpus_eval=f"{EVAL_DIR}/corpus.parquet",
    output:
        summary=f"{RESULTS}/efficacy/summary.json",
        curves=f"{RESULTS}/efficacy/curves.parquet",
        plot=report(f"{RESULTS}/efficacy/curves.png", caption="../report/efficacy.rst", category="Efficacy"),
    params:
        # Recorded in summary.json with the results they produced.
        settings=as_settings(
            seeds=EFFICACY["seeds"],
            settings={
                "efficacy": EFFICACY,
                "target": {k: config["target"][k] for k in ("eval_fraction", "seed")},
                "selection": SELECTION,
                "ordering": config["ordering"],
            },
        ),
    log:
        f"{RESULTS}/logs/efficacy.log",
    benchmark:
        f"{RESULTS}/benchmarks/efficacy/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs efficacy {input.runs} --target-eval {input.target_eval} --corpus-eval {input.corpus_eval}"
        " --summary-out {output.summary} --curves-out {output.curves} --plot-out {output.plot}"
        " --settings {params.settings:q} > {log} 2>&1"
