#!/usr/bin/env bash
# Install (if needed) and run the whole test suite, offline and on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
exec "${RAG_VENV:-.venv}/bin/python" -m pytest "$@"
