rule demo_data:
    output:
        corpus=DEMO_FILES[0],
        target=DEMO_FILES[1],
    params:
        settings=as_settings(**config["demo"]),
    log:
        f"{RESULTS}/logs/demo_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_data/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs demo-data {output.corpus:q} {output.target:q} --settings {params.settings:q} > {log:q} 2>&1"


rule output_schema:
    input:
        corpus=whole_corpus_inputs,
    output:
        f"{RESULTS}/corpus/output_schema.parquet",
    params:
        corpus_state=CORPUS_STATE,
        corpus_versions=corpus_versions,
        # a record holding an output field is a bad record, which adds no column
        settings=lambda wildcards: as_settings(
            **corpus_settings(wildcards),
            score_field=OUTPUT["score_field"],
            extra_fields=OUTPUT["extra_fields"],
        ),
    log:
        f"{RESULTS}/logs/output_schema.log",
    benchmark:
        f"{RESULTS}/benchmarks/output_schema/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        'lqs output-schema --plan "$LQS_CORPUS_PLAN" --out {output:q} --settings {params.settings:q} > {log:q} 2>&1'


rule tokenize_shard:
    input:
        corpus=corpus_inputs,
        tokenizer=f"{MODELS}/tokenizer",
    output:
        shard=f"{RESULTS}/corpus/shard-{{shard}}.parquet",
        rejects=f"{RESULTS}/corpus/rejects-{{shard}}.jsonl",
    params:
        corpus_versions=corpus_versions,
        settings=lambda wildcards: as_settings(
            **corpus_settings(wildcards),
            max_length=config["corpus"]["max_length"],
            on_bad_record=config["corpus"]["on_bad_record"],
        ),
    log:
        f"{RESULTS}/logs/tokenize_shard/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize_shard/{{shard}}.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        'lqs tokenize-shard --plan "$LQS_CORPUS_PLAN" --shard {wildcards.shard:q} --tokenizer-dir {input.tokenizer:q}'
        " --out {output.shard:q} --rejects {output.rejects:q} --settings {params.settings:q}"
        " > {log:q} 2>&1"


rule prepare_target:
    input:
        # A hub data set arrives through rule fetch_target (rules/models.smk) as a local file.
        source=[f"{RESULTS}/target/source.parquet"] if TARGET_FROM_HUB else target_source_file,
        tokenizer=f"{MODELS}/tokenizer",
    output:
        # J's part (the annotation reads only this file) and the held-out part (efficacy).
        tokens=f"{RESULTS}/target/tokens.parquet",
        eval_tokens=f"{RESULTS}/target/eval_tokens.parquet",
    params:
        settings=as_settings(
            text_field=config["target"]["text_field"],
            max_length=config["target"]["max_length"],
            split=config["target"]["split"],
            revision=config["target"]["revision"],
            max_samples=config["target"]["max_samples"],
            eval_fraction=config["target"]["eval_fraction"],
            seed=config["target"]["seed"],
        ),
        source=f"{RESULTS}/target/source.parquet" if TARGET_FROM_HUB else config["target"]["source"],
    log:
        f"{RESULTS}/logs/prepare_target.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_target/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs prepare-target {params.source:q} --tokenizer-dir {input.tokenizer:q} --out {output.tokens:q}"
        " --eval-out {output.eval_tokens:q} --settings {params.settings:q} > {log:q} 2>&1"


rule sample_proxy:
    input:
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        tokenizer=f"{MODELS}/tokenizer",
    output:
        f"{RESULTS}/proxy/samples.parquet",
    params:
        settings=as_settings(size=config["proxy"]["size"], seed=config["proxy"]["seed"]),
    log:
        f"{RESULTS}/logs/sample_proxy.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_proxy/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs sample-proxy {input.shards:q} --tokenizer-dir {input.tokenizer:q} --out {output:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"
