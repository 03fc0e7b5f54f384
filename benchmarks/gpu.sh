#!/usr/bin/env bash
# The GPU measurements of issues 14 and 15 in one go, each part under its own time limit, so
# that one failing part does not cost the others. Outputs (logs and JSON) go to $OUT (default
# ./gpu-out). Web documents: $WEB (default .bench/web.jsonl: JSONL with a text field).
#
#   OUT=gpu-out bash benchmarks/gpu.sh          # about 5 minutes on one H100/H200
#   SMOKE=1 bash benchmarks/gpu.sh              # the same steps at tiny sizes, on a CPU
#   PARTS="annotation inference" RUNS="fp32:8 bf16w:16" ... # some parts; other fast-path runs
set -u
OUT=${OUT:-gpu-out}
WEB=${WEB:-.bench/web.jsonl}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
PY=${PY:-python3}

if [ -n "${SMOKE:-}" ]; then
    ANNOTATION="--preset smoke --samples 8 --runs ${RUNS:-fp32:4 tf32:4 bf16:4 bf16:8 bf16w:4}"
    PROFILE="--profile ${PROFILE_RUN:-bf16w:4}"
    TRAJECTORY="--preset smoke --trajectory-micro-batch 4"
    INFERENCE="--docs 24 --reference-docs 4 --max-length 64 --compare-max-tokens 1024 --score-shard-docs 100"
else
    ANNOTATION="--preset paper-160m --samples 128 --runs ${RUNS:-fp32:8 tf32:8 tf32:16 bf16:16 bf16:32 bf16:64 bf16w:16 bf16w:32}"
    PROFILE="--profile ${PROFILE_RUN:-bf16w:16}"
    TRAJECTORY="--preset paper-160m --trajectory-micro-batch 8"
    INFERENCE="--preset xglm-125m --reference-docs 300 --compare-max-tokens 65536 524288 --score-shard-docs 100000"
fi

{
    date -u
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

part() {  # part NAME SECONDS COMMAND...: runs COMMAND under a time limit, output to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start))s"
    grep -v -e "it/s\]" -e "s/it\]" "$OUT/$name.log" | tail -n 45
}

PARTS=${PARTS:-annotation trajectory inference}
[[ " $PARTS " == *" annotation "* ]] && part annotation 130 $PY benchmarks/annotation.py $ANNOTATION $PROFILE \
    ${BASELINE:-} --json-out "$OUT/annotation.json"
[[ " $PARTS " == *" trajectory "* ]] && part trajectory 120 $PY benchmarks/annotation.py $TRAJECTORY --skip-baseline \
    --runs --trajectory --json-out "$OUT/trajectory.json"
[[ " $PARTS " == *" inference "* ]] && part inference 170 $PY benchmarks/inference.py $INFERENCE --web "$WEB" \
    --json-out "$OUT/inference.json"
true
