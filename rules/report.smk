report: "../report/workflow.rst"


rule plots:
    input:
        summary=f"{RESULTS}/summary.json",  # not read: the plots come after the run's stages
        scored=SCORED_FILES,
        trajectory_log=f"{RESULTS}/annotation/trajectory/log.parquet",
        labels=f"{RESULTS}/annotation/labels.parquet",
        scorer=f"{RESULTS}/scorer",
        selection=f"{RESULTS}/selection/summary.json",
    output:
        trajectory=report(f"{RESULTS}/plots/trajectory.png", caption="../report/trajectory.rst", category="Annotation"),
        labels=report(f"{RESULTS}/plots/labels.png", caption="../report/labels.rst", category="Annotation"),
        scorer=report(f"{RESULTS}/plots/scorer.png", caption="../report/scorer.rst", category="Scorer"),
        fidelity=report(f"{RESULTS}/plots/fidelity.png", caption="../report/fidelity.rst", category="Scorer"),
        scores=report(f"{RESULTS}/plots/scores.png", caption="../report/scores.rst", category="Corpus scores"),
        stages=report(f"{RESULTS}/plots/stages.png", caption="../report/stages.rst", category="Cost"),
    params:
        settings=as_settings(score_field=OUTPUT["score_field"], annotated_steps=ANNOTATED_STEPS),
        benchmarks=f"{RESULTS}/benchmarks",
        logs=f"{RESULTS}/logs",
        out_dir=lambda wildcards, output: os.path.dirname(output.scores),
    log:
        f"{RESULTS}/logs/plots.log",
    conda:
        "../envs/lqs.yaml"
    shell:
        "lqs plots {params.out_dir:q} --benchmarks-dir {params.benchmarks:q} --logs-dir {params.logs:q}"
        " --scored {input.scored:q} --trajectory-log {input.trajectory_log:q} --labels {input.labels:q}"
        " --scorer-metrics {input.scorer:q}/metrics.json --scorer-dir {input.scorer:q}"
        " --selection-summary {input.selection:q} --settings {params.settings:q} > {log:q} 2>&1"
