#!/usr/bin/env bash
# Run the search, update and quality benchmarks one after another (after index_build.py has finished).
set -u
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1
INDEX=${1:-/work/main/indexes/shared}
python bench/index_search.py --index "$INDEX" > bench/results/index_search.log 2>&1
python bench/index_update.py --index "$INDEX" > bench/results/index_update.log 2>&1
python bench/retrieval_quality.py --index "$INDEX" > bench/results/retrieval_quality.log 2>&1
