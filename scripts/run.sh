#!/usr/bin/env bash
# The main job: install, build the default index from the bundled corpus if it is missing, then
# answer queries. Set RAG_INDEX to use another index folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
INDEX=${RAG_INDEX:-indexes/default}
if [ ! -f "$INDEX/manifest.json" ]; then
    echo "building $INDEX from data/corpus/wiki-default.jsonl.gz (3,000 Wikipedia passages, about 2 minutes)..." >&2
    .venv/bin/rag-index build --out "$INDEX" --corpus data/corpus/wiki-default.jsonl.gz
fi
.venv/bin/rag-index stats --index "$INDEX" >&2
echo "index $INDEX is ready: type a query and press Enter (Ctrl-D to quit)" >&2
exec .venv/bin/rag-index search --index "$INDEX" --k 3 --format text
