from snakemake.utils import min_version

min_version("9.0")


# The offline demo is the default; a config given with --configfile replaces it (rather than
# being merged into it), so config/paper.yaml is complete on its own. --config edits either.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/annotation.smk"
include: "rules/scoring.smk"
include: "rules/selection.smk"
include: "rules/efficacy.smk"
include: "rules/report.smk"


rule all:
    input:
        config["output"]["path"],
        f"{RESULTS}/summary.json",
