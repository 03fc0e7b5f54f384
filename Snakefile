from snakemake.utils import min_version

min_version("9.0")


# The offline demo is the default; files given with --configfile and values given with --config
# are merged into it (rules/common.smk: a model source given there replaces the default's).
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
        get_final_output(),
