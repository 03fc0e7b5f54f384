rule select_order:
    input:
        scored=config["output"]["path"],
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
    output:
        # update(): kept until the rerun succeeds, restored if it fails (as gather_scores')
        selected=update(config["selection"]["path"]),
        order=f"{RESULTS}/selection/order.parquet",
        summary=update(f"{RESULTS}/selection/summary.json"),
    params:
        # selection.path names the output; the stage depends on the other keys only
        settings=as_settings(
            selection={k: v for k, v in config["selection"].items() if k != "path"},
            ordering=config["ordering"],
            score_field=config["output"]["score_field"],
        ),
    log:
        f"{RESULTS}/logs/select_order.log",
    benchmark:
        f"{RESULTS}/benchmarks/select_order/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs select-order {input.scored} {input.shards} --out {output.selected} --order-out {output.order}"
        " --summary-out {output.summary} --settings {params.settings:q} > {log} 2>&1"
