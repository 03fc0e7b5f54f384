#!/usr/bin/env bash
# The paper slice (benchmarks/paper_slice.yaml: config/paper.yaml with few steps, a small proxy set
# and the real model sizes) run end to end with Snakemake in a copy of the workflow, so that no
# results/ of the checkout is touched. benchmarks/gpu.sh runs it as its part paper_slice.
#
#   bash benchmarks/paper_slice.sh OUT [--cpu-smoke]    # OUT/paper_slice.json: stage times
#
# On a machine without Snakemake it installs it from .bench/wheels (benchmarks/prepare_device.sh)
# and `lqs` from this checkout. $SLICE_DOCS documents of $WEB are the corpus (default: all; 300
# with --cpu-smoke), $LIMA the target set; $SLICE_DIR the workflow's directory (default: a
# temporary one, deleted afterwards).
set -u
OUT=$1
SMOKE=${2:-}
PY=${PY:-python3}
REPO=$PWD
WEB=${WEB:-.bench/web.jsonl}
LIMA=${LIMA:-.bench/lima_train.jsonl}
CONFIGS=(config/paper.yaml paper_slice.yaml)
[ "$SMOKE" = --cpu-smoke ] && CONFIGS+=(paper_slice_smoke.yaml) && SLICE_DOCS=${SLICE_DOCS:-300}

if ! $PY -c "import snakemake" 2>/dev/null; then
    [ -d .bench/wheels ] || { echo "no Snakemake here and no .bench/wheels: run benchmarks/prepare_device.sh"; exit 1; }
    echo "installing Snakemake from .bench/wheels"
    # only the distributions missing here: the machine's own versions of the others stay
    $PY -m pip install -q --no-index --no-deps $($PY benchmarks/gpu_tools.py missing-wheels .bench/wheels) || exit
fi
if ! command -v lqs > /dev/null; then
    $PY -m pip install -q --no-deps --no-build-isolation -e . || exit
fi

if [ -n "${SLICE_DIR:-}" ]; then work=$SLICE_DIR; else work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT; fi
cp -r Snakefile rules envs config report profiles "$work"/
mkdir -p "$work/.bench"
head -n "${SLICE_DOCS:--0}" "$WEB" > "$work/.bench/web.jsonl"  # -0: every line
cp "$LIMA" "$work/.bench/lima_train.jsonl"
cp benchmarks/paper_slice.yaml benchmarks/paper_slice_smoke.yaml "$work"/
echo "workflow in $work: config/paper.yaml with ${CONFIGS[*]:1} ($(wc -l < "$work/.bench/web.jsonl") documents)"

# GPU jobs side by side on the one GPU (profiles/local's gpu=1 would run them one at a time).
# Stopped by a time limit (SIGINT, which Snakemake gets too), the stage times so far are still written.
trap 'echo "interrupted: writing the stage times so far"' INT TERM
start=$SECONDS
(cd "$work" && $PY -m snakemake --cores all --configfile "${CONFIGS[@]}" --scheduler greedy --printshellcmds)
status=$?
echo "snakemake: exit $status after $((SECONDS - start)) s"
PYTHONPATH=$REPO $PY benchmarks/gpu_tools.py slice-stages "$work/results" --seconds $((SECONDS - start)) \
    --json-out "$OUT/paper_slice.json"
exit $status
