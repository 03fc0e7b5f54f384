"""The stages: one module per Snakemake rule, named as the rule (lqs.stage says what each declares).

A stage imports the library (the modules of `lqs` outside this package) and never another stage.
"""
