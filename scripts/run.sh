#!/usr/bin/env bash
# The main job: install, build the default index from the bundled corpus if it is missing, then
# serve it: the web page and HTTP API on http://127.0.0.1:8000/ (Ctrl-C stops the server).
# RAG_INDEX picks another index folder; arguments pass through to `rag-serve run` (--port, --token, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
VENV=${RAG_VENV:-.venv}
INDEX=${RAG_INDEX:-indexes/default}
if [ ! -f "$INDEX/manifest.json" ]; then
    echo "building $INDEX from data/corpus/wiki-default.jsonl.gz (3,000 Wikipedia passages, a few minutes)..." >&2
    "$VENV/bin/rag-index" build --out "$INDEX" --corpus data/corpus/wiki-default.jsonl.gz
fi
"$VENV/bin/rag-index" stats --index "$INDEX" >&2
echo "starting the server on $INDEX (loading the models takes a few seconds; the first run converts the reader once)..." >&2
exec "$VENV/bin/rag-serve" run --index "$INDEX" "$@"
