# The scorer trained on the annotation's labels; with scorer.checkpoint, rule fetch_scorer
# (rules/models.smk) writes results/scorer instead (the ruleorder there).
rule train_scorer:
    input:
        samples=f"{RESULTS}/proxy/samples.parquet",
        labels=f"{RESULTS}/annotation/labels.parquet",
        base=f"{MODELS}/scorer_base",
    output:
        directory(f"{RESULTS}/scorer"),
    params:
        settings=as_settings(
            lr=SCORER["lr"],
            epochs=SCORER["epochs"],
            batch_size=SCORER["batch_size"],
            warmup_steps=SCORER["warmup_steps"],
            weight_decay=SCORER["weight_decay"],
            clip=SCORER["clip"],
            max_length=SCORER["max_length"],
            seed=SCORER["seed"],
            device=config["device"],
            trust_remote_code=TRUST_REMOTE_CODE,
        ),
    log:
        f"{RESULTS}/logs/train_scorer.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_scorer/all.tsv"
    resources:
        gpu=1,
        mem_mb=memory_mb(PLAN.scorer_mem_mb),
        runtime=gpu_runtime(240),
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs train-scorer {input.samples:q} {input.labels:q} {input.base:q} --out-dir {output:q}"
        " --nproc {resources.gpu:q} --settings {params.settings:q} > {log:q} 2>&1"


# The scorer's windows of a shard, made on a CPU node (the SLURM profile's default partition), so
# that score_shard's GPU runs the model alone.
rule tokenize_scorer_shard:
    input:
        tokenized=f"{RESULTS}/corpus/shard-{{shard}}.parquet",
        tokenizer=SCORER_TOKENIZER,
    output:
        f"{RESULTS}/scorer_windows/shard-{{shard}}.parquet",
    params:
        corpus_versions=corpus_versions,
        settings=lambda wildcards: as_settings(
            **corpus_settings(wildcards),
            # a checkpoint's is in its scorer.json
            max_length=None if SCORER_CHECKPOINT else SCORER["max_length"],
            max_windows_per_doc=INFERENCE["max_windows_per_doc"],
            chunk_docs=INFERENCE["chunk_docs"],
            trust_remote_code=TRUST_REMOTE_CODE,
        ),
    threads: INFERENCE["tokenizer_workers"] or 4
    log:
        f"{RESULTS}/logs/tokenize_scorer_shard/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize_scorer_shard/{{shard}}.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        'lqs tokenize-scorer-shard --plan "$LQS_CORPUS_PLAN" --shard {wildcards.shard:q} --tokenized-shard {input.tokenized:q}'
        " --tokenizer-dir {input.tokenizer:q} --out {output:q} --settings {params.settings:q} > {log:q} 2>&1"


rule score_shard:
    input:
        windows=f"{RESULTS}/scorer_windows/shard-{{shard}}.parquet",
        scorer=f"{RESULTS}/scorer",
    output:
        scores=f"{RESULTS}/scores/shard-{{shard}}.parquet",
        stats=f"{RESULTS}/scores/shard-{{shard}}.json",
    params:
        settings=as_settings(
            max_tokens=INFERENCE["max_tokens"],
            dtype=INFERENCE["dtype"],
            compile=INFERENCE["compile"],
            device=config["device"],
            trust_remote_code=TRUST_REMOTE_CODE,
        ),
    log:
        f"{RESULTS}/logs/score_shard/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_shard/{{shard}}.tsv"
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=gpu_runtime(240),
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs score-shard --windows {input.windows:q} --scorer-dir {input.scorer:q} --out {output.scores:q}"
        " --shard {wildcards.shard:q} --stats-out {output.stats:q} --settings {params.settings:q} > {log:q} 2>&1"


# output.layout per_shard: a shard's part of the scored output, written on a CPU node from the
# shard's records and scores, so that editing output.* rewrites the parts and rescores nothing.
rule write_part:
    input:
        scores=f"{RESULTS}/scores/shard-{{shard}}.parquet",
        rejects=f"{RESULTS}/corpus/rejects-{{shard}}.jsonl",
        output_schema=OUTPUT_SCHEMA,
        # the scorer's weights, for a Parquet part's provenance block
        scorer=f"{RESULTS}/scorer",
    output:
        # kept until the rerun succeeds (update())
        part=update(f"{OUTPUT['path']}/{lqs_output.part_name('{shard}', OUTPUT['format'])}"),
        index=f"{RESULTS}/parts/shard-{{shard}}.parquet",
        rejects=f"{RESULTS}/parts/rejects-{{shard}}.jsonl",
        stats=f"{RESULTS}/parts/shard-{{shard}}.json",
    params:
        corpus_versions=corpus_versions,
        settings=lambda wildcards: as_settings(
            **corpus_settings(wildcards),
            on_bad_record=config["corpus"]["on_bad_record"],
            **scored_record_settings(),
            **provenance_settings(wildcards),
        ),
        output_schema=output_schema_flag,
    log:
        f"{RESULTS}/logs/write_part/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/write_part/{{shard}}.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        'lqs write-part --plan "$LQS_CORPUS_PLAN" --shard {wildcards.shard:q} --scores {input.scores:q}'
        " --rejects {input.rejects:q} --scorer-dir {input.scorer:q} {params.output_schema:q} --out {output.part:q}"
        " --index-out {output.index:q} --rejects-out {output.rejects:q} --stats-out {output.stats:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule gather_scores:
    input:
        # layout single: the score shards and tokenization's rejects; per_shard: write_part's
        # parts, their documents, rejects and counts
        scores=[] if PER_SHARD_OUTPUT else expand(f"{RESULTS}/scores/shard-{{shard}}.parquet", shard=SHARDS),
        stats=expand(f"{RESULTS}/scores/shard-{{shard}}.json", shard=SHARDS),
        rejects=expand(f"{RESULTS}/{'parts' if PER_SHARD_OUTPUT else 'corpus'}/rejects-{{shard}}.jsonl", shard=SHARDS),
        parts=SCORED_FILES if PER_SHARD_OUTPUT else [],
        part_index=expand(f"{RESULTS}/parts/shard-{{shard}}.parquet", shard=SHARDS) if PER_SHARD_OUTPUT else [],
        part_stats=expand(f"{RESULTS}/parts/shard-{{shard}}.json", shard=SHARDS) if PER_SHARD_OUTPUT else [],
        output_schema=[] if PER_SHARD_OUTPUT else OUTPUT_SCHEMA,
        # With a pretrained scorer (scorer.checkpoint) there is no proxy, annotation or training metrics.
        metrics=gather_model_inputs("metrics"),
        annotation=gather_model_inputs("annotation"),
        proxy=gather_model_inputs("proxy"),
        # the scorer's weights, for the provenance block
        scorer=f"{RESULTS}/scorer",
    output:
        # update(): Snakemake keeps the previous results until this job succeeds (it backs them
        # up and restores them if the job fails) instead of deleting them before it starts.
        scored=[] if PER_SHARD_OUTPUT else [update(OUTPUT["path"])],
        rejects=update(OUTPUT["rejects_path"]),
        summary=update(f"{RESULTS}/summary.json"),
        # the scored output's documents in storage order, with their scores (select_order, plots)
        index=update(f"{RESULTS}/scores/index.parquet"),
    params:
        # every layout: per_shard only sizes the files (the provenance block), never reads them
        corpus_versions=corpus_versions,
        settings=lambda wildcards: as_settings(
            **corpus_settings(wildcards),
            on_bad_record=config["corpus"]["on_bad_record"],
            **scored_record_settings(),
            layout=OUTPUT["layout"],
            **provenance_settings(wildcards),
        ),
        # the scored file, or the directory of the parts (per_shard)
        out=lambda wildcards, input, output: os.path.dirname(input.parts[0]) if PER_SHARD_OUTPUT else output.scored[0],
        benchmarks=f"{RESULTS}/benchmarks",
        output_schema=output_schema_flag,
        models=gather_model_arguments,
    log:
        f"{RESULTS}/logs/gather_scores.log",
    benchmark:
        f"{RESULTS}/benchmarks/gather_scores/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        'lqs gather-scores --plan "$LQS_CORPUS_PLAN" --score-paths {input.scores:q} --reject-paths {input.rejects:q}'
        " --stats-paths {input.stats:q} --part-paths {input.parts:q} --part-index-paths {input.part_index:q}"
        " --part-stats-paths {input.part_stats:q} --out {params.out:q}"
        " --rejects-out {output.rejects:q} --summary-out {output.summary:q} --index-out {output.index:q}"
        " --benchmarks-dir {params.benchmarks:q}"
        " {params.output_schema:q} {params.models:q} --scorer-dir {input.scorer:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"
