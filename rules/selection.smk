rule select_order:
    input:
        scored=SCORED_FILES,
        # gather_scores' index of it: the documents' ids and scores, in its order
        scores_index=f"{RESULTS}/scores/index.parquet",
        shards=expand(f"{RESULTS}/corpus/shard-{{shard}}.parquet", shard=SHARDS),
        # the trained scorer's validation predictions, for its fidelity at this cut (none for a
        # pretrained scorer: no labels)
        scorer=[] if SCORER_CHECKPOINT else f"{RESULTS}/scorer",
        # gather_scores' summary: its provenance block's scorer and corpus
        scores_summary=f"{RESULTS}/summary.json",
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
            config_sha256=CONFIG_DIGESTS["selection"],
        ),
        scorer=lambda wildcards, input: ["--scorer-dir", input.scorer] if input.scorer else [],
    log:
        f"{RESULTS}/logs/select_order.log",
    benchmark:
        f"{RESULTS}/benchmarks/select_order/all.tsv"
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs select-order --scored {input.scored:q} --scores-index {input.scores_index:q} --shard-paths {input.shards:q} --out {output.selected:q}"
        " --order-out {output.order:q} --summary-out {output.summary:q} {params.scorer:q}"
        " --scores-summary {input.scores_summary:q} --settings {params.settings:q} > {log:q} 2>&1"
