#!/usr/bin/env bash
# GPU smoke test: encode, data-loading and training images/s, plus a 2-process torchrun check when
# the machine has 2 GPUs. Installs nothing and reaches no network (random weights, generated
# images); a few minutes on one GPU. Without a GPU it runs a toy CPU version, to test the script.
#
#   scripts/gpu_smoke.sh [OUT.md] [--compile]
#
# Uses $PYTHON (default: python3) with clipdebias and its dependencies importable: installed, or
# this checkout (added to PYTHONPATH here) plus wheels you unpacked onto PYTHONPATH beforehand.
# Writes the table to OUT.md (default gpu_smoke.md) and the raw numbers to OUT.json.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
out="${1:-gpu_smoke.md}"
shift $(( $# > 0 ? 1 : 0 ))

export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if ! "$python" -c "import clipdebias, torch, open_clip, faiss" 2>/dev/null; then
    echo "error: $python cannot import clipdebias, torch, open_clip and faiss; install them first" >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi not found: no NVIDIA GPU visible"
fi
exec "$python" "$repo/benchmarks/gpu_smoke.py" --out "$out" "$@"
