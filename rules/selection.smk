rule select_order:
    input:
        scored=SCORED_FILES,
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
    output:
        # update(): kept until the rerun succeeds, restored if it fails (as gather_scores')
        selected=update(SELECTION["path"]),
        order=f"{RESULTS}/selection/order.parquet",
        summary=update(f"{RESULTS}/selection/summary.json"),
    params:
        # selection.path names the output; the stage depends on the other keys only
        settings=as_settings(
            selection={k: v for k, v in SELECTION.items() if k != "path"},
            ordering=config["ordering"],
            score_field=OUTPUT["score_field"],
            output_format=OUTPUT["format"],
            layout=OUTPUT["layout"],
        ),
    log:
        f"{RESULTS}/logs/select_order.log",
    benchmark:
        f"{RESULTS}/benchmarks/select_order/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs select-order --scored {input.scored} --shard-paths {input.shards} --out {output.selected} --order-out {output.order}"
        " --summary-out {output.summary} --settings {params.settings:q} > {log} 2>&1"
