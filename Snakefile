from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/annotation.smk"
include: "rules/scoring.smk"


rule all:
    input:
        config["output"]["path"],
        f"{RESULTS}/summary.json",
