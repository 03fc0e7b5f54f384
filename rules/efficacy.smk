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
        "lqs fetch-eval-source {params.source:q} --out {output:q} --settings {params.settings:q} > {log:q} 2>&1"


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
        "lqs prepare-eval-source {input.source:q} --tokenizer-dir {input.tokenizer:q} --out {output:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


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
        "lqs efficacy-corpus-eval {input:q} --out {output:q} --settings {params.settings:q} > {log:q} 2>&1"


# The classifier arms (efficacy.arms): a target-vs-corpus text classifier, trained and run on CPU.
# Positives: J's target texts, read as prepare_target reads them; negatives: corpus documents
# outside the corpus evaluation set. Every accepted document's score is kept (scores.parquet);
# the top ones are the classifier arm's (order.parquet) and, in the lqs arm's ordering.* by
# the classifier's scores, the classifier_folded arm's (folded.parquet).
rule efficacy_classifier:
    input:
        corpus=whole_corpus_inputs,
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        target=[f"{RESULTS}/target/source.parquet"] if TARGET_FROM_HUB else target_source_file,
        order=f"{RESULTS}/selection/order.parquet",
        corpus_eval=f"{EVAL_DIR}/corpus.parquet",
    output:
        scores=f"{RESULTS}/efficacy/classifier/scores.parquet",
        order=CLASSIFIER_ORDER,
        folded=CLASSIFIER_FOLDED,
    params:
        corpus_state=CORPUS_STATE,
        corpus_versions=corpus_versions,
        target=f"{RESULTS}/target/source.parquet" if TARGET_FROM_HUB else TARGET_SOURCE,
        settings=lambda wildcards: as_settings(
            **corpus_settings(wildcards),
            **{f"target_{k}": config["target"][k] for k in CLASSIFIER_TARGET_KEYS},
            negatives=EFFICACY["classifier_negatives"],
            ordering=config["ordering"],
        ),
    log:
        f"{RESULTS}/logs/efficacy_classifier.log",
    benchmark:
        f"{RESULTS}/benchmarks/efficacy_classifier/all.tsv"
    resources:
        mem_mb=8000,
    conda:
        "../envs/lqs.yaml"
    shell:
        'lqs efficacy-classifier --plan "$LQS_CORPUS_PLAN" --tokenized-shards {input.shards:q} --target {params.target:q}'
        " --order {input.order:q} --corpus-eval {input.corpus_eval:q} --scores-out {output.scores:q}"
        " --order-out {output.order:q} --folded-out {output.folded:q} --settings {params.settings:q} > {log:q} 2>&1"


rule efficacy_train:
    input:
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        # the lqs arm's documents, which set the budget B; the classifier arms' are arm_order
        order=f"{RESULTS}/selection/order.parquet",
        arm_order=efficacy_arm_order,
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
        proxy=lambda wildcards, input: ["--proxy-dir", *input.proxy] if input.proxy else [],
        arm_order=lambda wildcards, input: ["--arm-order", *input.arm_order] if input.arm_order else [],
    log:
        f"{RESULTS}/logs/efficacy_train/{{arm}}-{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/efficacy_train/{{arm}}-{{seed}}.tsv"
    resources:
        gpu=1,
        mem_mb=memory_mb(PLAN.efficacy_mem_mb),
        runtime=gpu_runtime(240),
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs efficacy-train {input.shards:q} --order {input.order:q} --target-eval {input.target_eval:q}"
        " --corpus-eval {input.corpus_eval:q} --tokenizer-dir {input.tokenizer:q} {params.proxy:q} {params.arm_order:q}"
        " --arm {wildcards.arm:q} --seed {wildcards.seed:q} --out {output:q}"
        " --nproc {resources.gpu:q} --settings {params.settings:q} > {log:q} 2>&1"


rule efficacy:
    input:
        runs=expand(
            f"{RESULTS}/efficacy/runs/{{arm}}-{{seed}}.parquet", arm=EFFICACY_ARMS, seed=range(EFFICACY["seeds"])
        ),
        target_eval=efficacy_target_eval,
        corpus_eval=f"{EVAL_DIR}/corpus.parquet",
        # its counts and CPU seconds, recorded in the summary
        classifier=[CLASSIFIER_ORDER] if set(EFFICACY_ARMS) & {"classifier", "classifier_folded"} else [],
        # its provenance block's scorer and corpus
        selection_summary=f"{RESULTS}/selection/summary.json",
        # the caption's fixed text; the stage adds a paragraph stating the measured differences
        caption_template=EFFICACY_CAPTION_TEMPLATE,
    output:
        summary=f"{RESULTS}/efficacy/summary.json",
        curves=f"{RESULTS}/efficacy/curves.parquet",
        # The report's caption is the caption this job writes, so that it can give the numbers
        # (a Snakemake caption is read when the report is made; an absolute path is taken as is).
        plot=report(f"{RESULTS}/efficacy/curves.png", caption=os.path.abspath(EFFICACY_CAPTION), category="Efficacy"),
        caption=EFFICACY_CAPTION,
    params:
        classifier=lambda wildcards, input: ["--classifier", *input.classifier] if input.classifier else [],
        # Recorded in summary.json with the results they produced.
        settings=as_settings(
            seeds=EFFICACY["seeds"],
            arms=EFFICACY_ARMS,
            settings={
                "efficacy": EFFICACY,
                "target": {k: config["target"][k] for k in ("eval_fraction", "seed")},
                "selection": SELECTION,
                "ordering": config["ordering"],
            },
            config_sha256=CONFIG_DIGESTS["efficacy"],
        ),
    log:
        f"{RESULTS}/logs/efficacy.log",
    benchmark:
        f"{RESULTS}/benchmarks/efficacy/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs efficacy {input.runs:q} --target-eval {input.target_eval:q} --corpus-eval {input.corpus_eval:q}"
        " --summary-out {output.summary:q} --curves-out {output.curves:q} --plot-out {output.plot:q}"
        " --caption-template {input.caption_template:q} --caption-out {output.caption:q} {params.classifier:q}"
        " --selection-summary {input.selection_summary:q} --settings {params.settings:q} > {log:q} 2>&1"
