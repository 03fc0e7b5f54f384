#!/usr/bin/env bash
# The GPU measurements of issues 14, 15 and 23 in one go, in at most 8 minutes on one H100 or
# H200 (README, "Measuring on a GPU"): each part under its own time limit, so that one failing
# part does not cost the others, and no part runs past the 8 minutes. Logs and JSON go to $OUT
# (default ./gpu-out); the output ends with the headline figures against the goals
# ($OUT/summary.txt, benchmarks/gpu_tools.py).
#
#   bash benchmarks/prepare_device.sh       # first, where there is a network: fills .bench/
#   bash benchmarks/gpu.sh                  # on the GPU machine, in the repository's root
#   bash benchmarks/gpu.sh --cpu-smoke      # every part at tiny sizes on the CPU: checks that it runs
#   PARTS="annotation inference" RUNS="fp32:8 bf16w:16" bash benchmarks/gpu.sh  # some parts; other runs
#
# Parts, in this order: annotation (per-sample statistics: samples/s, peak memory, MFU per
# precision and micro-batch), trajectory (its parts at paper.yaml's settings, the paper's T = 100
# projected: minutes, peak GiB), inference (the scorer model alone: tokens/s, MFU per batch
# budget), score_shard (benchmarks/score_shard.py: tokenize_scorer_shard then score_shard end to
# end with its read / model / write split, against tokenizing in the scoring job; the tokenize
# stage's tokens/s per core; the windows' disk cost), paper_slice (benchmarks/paper_slice.sh:
# config/paper.yaml as shipped, few steps, real model sizes, end to end with Snakemake), and with
# the time left the compiled paths against eager: annotation_compile, score_shard_compile.
# Reads .bench/ (benchmarks/prepare_device.sh): web documents $WEB, LIMA $LIMA, wheels.
set -u
SMOKE=
case "${1:-}" in
    --cpu-smoke) SMOKE=--cpu-smoke ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu.sh [--cpu-smoke]" >&2 && exit 2 ;;
esac
OUT=${OUT:-gpu-out}
WEB=${WEB:-.bench/web.jsonl}
export WEB LIMA=${LIMA:-.bench/lima_train.jsonl}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
export PY=${PY:-python3}
STATS_RUNS=${RUNS:-fp32:8 tf32:16 bf16:16 bf16:32 bf16w:16 bf16w:32}
# annotation_compile: benchmarks/annotation.py --compile (each run eager and compiled side by side)
COMPILE_RUNS="bf16:16 bf16w:16"

if [ -n "$SMOKE" ]; then
    export CUDA_VISIBLE_DEVICES=  # the CPU, also on a machine with a GPU
    BUDGET=${BUDGET:-900}
    STATS_RUNS=${RUNS:-fp32:4 tf32:4 bf16:4 bf16w:4} COMPILE_RUNS="fp32:4 bf16w:4"
    ANNOTATION="--preset smoke --samples 8 --profile bf16w:4"
    ANNOTATION_COMPILE="--preset smoke --samples 8"
    TRAJECTORY="--preset smoke --trajectory-micro-batch 4"
    INFERENCE="--docs 24 --reference-docs 4 --max-length 64 --compare-max-tokens 1024"
    SCORE_SHARD="--docs 100 --max-length 64 --rounds 1"
    SCORE_SHARD_COMPILE="$SCORE_SHARD"
else
    BUDGET=${BUDGET:-480}
    ANNOTATION="--preset paper-160m --samples 128 --profile bf16w:16"
    ANNOTATION_COMPILE="--preset paper-160m --samples 64"
    TRAJECTORY="--preset paper-160m --trajectory-micro-batch 8"
    INFERENCE="--preset xglm-125m --reference-docs 300 --compare-max-tokens 65536 524288"
    # 20,000 web-like documents, about 8M tokens; the tokenize stage on 4 threads, the rule's default
    SCORE_SHARD="--preset xglm-125m --docs 20000 --tokenizer-threads 4 --rounds 2"
    # fewer: compiling each of the (at most 17) batch widths takes most of its time
    SCORE_SHARD_COMPILE="--preset xglm-125m --docs 2000 --tokenizer-threads 4 --rounds 1"
fi

{
    date -u
    command -v nvidia-smi > /dev/null &&
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
    nproc
    $PY - <<'EOF'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    a = torch.randn(2, 8, 16, device="cuda", dtype=torch.bfloat16)
    print("bmm out_dtype fp32:", torch.bmm(a, a.transpose(1, 2), out_dtype=torch.float32).dtype)
EOF
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

PARTS=${PARTS:-annotation trajectory inference score_shard paper_slice annotation_compile score_shard_compile}
SCALE=$([ -n "$SMOKE" ] && echo 2 || echo 1)  # a shared CPU's time varies: the smoke run's limits doubled
GRACE=15  # seconds a part has to stop after its limit's SIGINT (the paper slice writes its stage times)

part() {  # part NAME SECONDS COMMAND...: COMMAND under a time limit within the budget, output to $OUT/NAME.log
    local name=$1 limit=$(($2 * SCALE)) start=$SECONDS
    shift 2
    [[ " $PARTS " == *" $name "* ]] || return 0
    rm -f "$OUT/$name.json"
    local left=$((BUDGET - SECONDS - GRACE - 5))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
        echo "== $name: skipped, $((BUDGET - SECONDS)) s of the ${BUDGET} s budget left"
        return 0
    fi
    echo "== $name (limit ${limit} s): $*"
    timeout --signal=INT --kill-after=$GRACE "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - start)) s"
    ((status == 0)) || grep -v -e "it/s\]" -e "s/it\]" "$OUT/$name.log" | tail -n 15
}

part annotation 60 $PY benchmarks/annotation.py $ANNOTATION --skip-baseline --runs $STATS_RUNS \
    --json-out "$OUT/annotation.json"
part trajectory 60 $PY benchmarks/annotation.py $TRAJECTORY --skip-baseline --runs --trajectory \
    --json-out "$OUT/trajectory.json"
part inference 60 $PY benchmarks/inference.py $INFERENCE --web "$WEB" --json-out "$OUT/inference.json"
part score_shard 75 $PY benchmarks/score_shard.py $SCORE_SHARD --web "$WEB" --json-out "$OUT/score_shard.json"
part paper_slice 190 bash benchmarks/paper_slice.sh "$OUT" $SMOKE
part annotation_compile 90 $PY benchmarks/annotation.py $ANNOTATION_COMPILE --skip-baseline --compile \
    --runs $COMPILE_RUNS --json-out "$OUT/annotation_compile.json"
part score_shard_compile 120 $PY benchmarks/score_shard.py $SCORE_SHARD_COMPILE --compile --web "$WEB" \
    --json-out "$OUT/score_shard_compile.json"

echo "== summary ($SECONDS s in all; logs and JSON in $OUT)"
$PY benchmarks/gpu_tools.py summary "$OUT"
