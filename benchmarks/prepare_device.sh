#!/usr/bin/env bash
# Fills .bench/ (git-ignored) with what benchmarks/gpu.sh reads on a GPU machine that has PyTorch
# and transformers but no network: copy the repository there with .bench/ in it (about 30 MB).
#
#   bash benchmarks/prepare_device.sh DATA_DIR     # DATA_DIR holds web.jsonl and lima_train.jsonl
#
#   .bench/web.jsonl          the first $WEB_DOCS documents (default: all) of DATA_DIR/web.jsonl, JSONL
#                             with a text field: the benchmarks' documents and the paper slice's corpus
#   .bench/lima_train.jsonl   DATA_DIR/lima_train.jsonl, LIMA's train split (conversations): the
#                             paper slice's target set, read as a local file (no hub)
#   .bench/wheels/            Snakemake and the workflow's packages that a PyTorch image lacks
#                             (jsonschema), as wheels for CPython 3.12 on x86-64 Linux; gpu.sh
#                             installs from them those the machine does not have
#
# PuLP (16 MB, Snakemake's ILP scheduler) is left out: gpu.sh runs Snakemake with --scheduler greedy.
# `lqs` itself is installed there from the copied source (pip install --no-deps -e .).
set -euo pipefail
DATA=${1:?usage: bash benchmarks/prepare_device.sh DATA_DIR (the folder of web.jsonl and lima_train.jsonl)}
PIP=${PIP:-python3 -m pip}
mkdir -p .bench/wheels
head -n "${WEB_DOCS:--0}" "$DATA/web.jsonl" > .bench/web.jsonl  # -0: every line
cp "$DATA/lima_train.jsonl" .bench/lima_train.jsonl

# connection_pool (a Snakemake dependency) is published as source only: a pure-Python wheel built here
$PIP wheel -q --no-deps -w .bench/wheels connection_pool==0.0.3
$PIP download -q --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --find-links .bench/wheels -d .bench/wheels \
    snakemake==9.27.1 jsonschema
rm -f .bench/wheels/pulp-*.whl
du -sh .bench/wheels; du -sh .bench  # the device takes 64 MiB with the repository
