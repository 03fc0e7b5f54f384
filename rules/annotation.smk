rule trajectory:
    input:
        proxy=f"{MODELS}/proxy",
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        target=f"{RESULTS}/target/tokens.parquet",
    output:
        steps=expand(f"{RESULTS}/annotation/trajectory/step-{{t}}.safetensors", t=ANNOTATED_STEPS),
        log=f"{RESULTS}/annotation/trajectory/log.parquet",
        batches=f"{RESULTS}/annotation/trajectory/batches.parquet",
    params:
        settings=as_settings(
            lr=ANNOTATION["lr"],
            steps=ANNOTATION["steps"],
            interval=ANNOTATION["interval"],
            batch_size=ANNOTATION["batch_size"],
            seed=ANNOTATION["seed"],
            micro_batch=ANNOTATION["micro_batch"],
            hvp_micro_batch=ANNOTATION["hvp_micro_batch"],
            tf32=ANNOTATION["tf32"],
            compile=ANNOTATION["compile"],
            device=config["device"],
            trust_remote_code=TRUST_REMOTE_CODE,
        ),
        out_dir=lambda wildcards, output: os.path.dirname(output.log),
    log:
        f"{RESULTS}/logs/trajectory.log",
    benchmark:
        f"{RESULTS}/benchmarks/trajectory/all.tsv"
    resources:
        gpu=1,
        mem_mb=memory_mb(PLAN.proxy_mem_mb),
        runtime=gpu_runtime(240),
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs trajectory {input.proxy:q} {input.shards:q} --target-path {input.target:q}"
        " --out-dir {params.out_dir:q} --settings {params.settings:q} > {log:q} 2>&1"


rule grad_stats:
    input:
        samples=f"{RESULTS}/proxy/samples.parquet",
        step=f"{RESULTS}/annotation/trajectory/step-{{t}}.safetensors",
        proxy=f"{MODELS}/proxy",
    output:
        f"{RESULTS}/annotation/stats/step-{{t}}/part-{{p}}.parquet",
    params:
        settings=lambda wildcards: as_settings(
            step=int(wildcards.t),
            part=int(wildcards.p),
            num_parts=config["proxy"]["num_parts"],
            stats_dtype=ANNOTATION["stats_dtype"],
            micro_batch=ANNOTATION["stats_micro_batch"],
            tf32=ANNOTATION["tf32"],
            compile=ANNOTATION["compile"],
            device=config["device"],
            trust_remote_code=TRUST_REMOTE_CODE,
        ),
    log:
        f"{RESULTS}/logs/grad_stats/step-{{t}}-part-{{p}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/grad_stats/step-{{t}}-part-{{p}}.tsv"
    resources:
        gpu=1,
        mem_mb=memory_mb(PLAN.proxy_mem_mb),
        runtime=gpu_runtime(120),
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs grad-stats {input.samples:q} {input.step:q} {input.proxy:q} --out {output:q}"
        " --nproc {resources.gpu:q} --settings {params.settings:q} > {log:q} 2>&1"


rule lqs_labels:
    input:
        expand(
            f"{RESULTS}/annotation/stats/step-{{t}}/part-{{p}}.parquet",
            t=ANNOTATED_STEPS,
            p=PROXY_PARTS,
        ),
    output:
        labels=f"{RESULTS}/annotation/labels.parquet",
        info=f"{RESULTS}/annotation/labels.json",
    params:
        settings=as_settings(
            lr=ANNOTATION["lr"],
            steps=ANNOTATION["steps"],
            interval=ANNOTATION["interval"],
            score=ANNOTATION["score"],
            normalize=ANNOTATION["normalize"],
            valid_size=config["scorer"]["valid_size"],
            seed=config["scorer"]["seed"],
        ),
    log:
        f"{RESULTS}/logs/lqs_labels.log",
    benchmark:
        f"{RESULTS}/benchmarks/lqs_labels/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs lqs-labels {input:q} --out {output.labels:q} --info-out {output.info:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"
