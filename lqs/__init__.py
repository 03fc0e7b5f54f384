"""Learnability-Quality Scoring (LQS) of pretraining corpora. One module per pipeline stage;
`lqs.cli` is the command line the workflow calls; `lqs.scorer.load` is the Python API."""

__version__ = "0.1.0"
