#!/usr/bin/env bash
# The GPU check, in one go (about 5-8 minutes on one H100/H200): the CUDA tests, the loss-step overhead of the
# default (corrected re-ranking) against stock MNRL at 1 and 4 negatives in bfloat16, the search benchmark at 1M rows
# on the device, and MiniLM's encode throughput in float32 and bfloat16. Not part of the test suite (CI has no GPU).
#
#   bash benchmarks/gpu_check.sh [OUTPUT_FILE]     # default: gpu_check.txt, or $OUT/gpu_check.txt when $OUT is set
#
# Needs the package installed as the README says (torch with CUDA on that machine) and nothing from the network.
# Every section runs even if an earlier one fails; the file says which failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HAYSTACK_TELEMETRY_ENABLED=False TOKENIZERS_PARALLELISM=false
OUTPUT="${1:-${OUT:+$OUT/}gpu_check.txt}"
: > "$OUTPUT"
failed=0

section() {  # section TITLE TIMEOUT_S COMMAND...: run, append its output to the file, record a failure
    local title="$1" limit="$2"
    shift 2
    echo "## $title" | tee -a "$OUTPUT"
    echo "\$ $*" >> "$OUTPUT"
    local start=$SECONDS
    timeout "$limit" "$@" >> "$OUTPUT" 2>&1
    local rc=$?
    echo "(exit $rc, $((SECONDS - start)) s)" | tee -a "$OUTPUT"
    echo >> "$OUTPUT"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

section "machine" 30 python -c "
import platform, torch
print(platform.machine(), platform.python_version(), 'torch', torch.__version__)
print('CUDA', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
print('bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
section "CUDA tests" 150 python -m pytest -q -p no:cacheprovider tests/test_cuda.py
section "loss step, 1 negative, bf16 steps and encodes" 90 \
    python benchmarks/loss_step_overhead.py --device cuda --bf16 --num-negatives 1 --steps 10
section "loss step, 4 negatives, bf16 steps and encodes" 90 \
    python benchmarks/loss_step_overhead.py --device cuda --bf16 --num-negatives 4 --steps 10
section "loss step, 1 negative, float32 steps and encodes" 90 \
    python benchmarks/loss_step_overhead.py --device cuda --no-bf16-encodes --num-negatives 1 --steps 10
section "search, 1M rows, on the GPU" 120 \
    python benchmarks/search_speed.py --rows 1000000 --dim 384 --queries 64 --device cuda
section "MiniLM encode throughput" 90 python benchmarks/encode_throughput.py --device cuda --texts 20000

echo "sections failed: $failed" | tee -a "$OUTPUT"
echo "figures in $OUTPUT"
exit "$failed"
