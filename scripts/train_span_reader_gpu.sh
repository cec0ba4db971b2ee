#!/usr/bin/env bash
# The span reader's GPU run: continue the shipped reader on a data file made by `python -m trainer.span_data`,
# at each learning rate given, and keep the run that scores best on the data's held-out dev questions.
# Needs only torch and transformers (no FAISS, no index), so it runs on a bare GPU machine from the repo root.
# Usage: scripts/train_span_reader_gpu.sh DATA INIT OUT [LR ...]   (env: STEPS, BATCH, DEVICE, PYTHON)
# OUT/best is the kept reader; OUT/runs.json lists every run's dev choice.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n 2,6p "$0" >&2
    exit 2
fi
data=$1 init=$2 out=$3
shift 3
rates=("${@:-3e-5}")
python=${PYTHON:-python3}
mkdir -p "$out"
for lr in "${rates[@]}"; do
    "$python" -m trainer.span_training --data "$data" --init "$init" --out "$out/lr-$lr" --steps "${STEPS:-1000}" \
        --batch-size "${BATCH:-32}" --lr "$lr" --max-length 192 --bf16 --device "${DEVICE:-cuda}" --dev-every 0
done
"$python" - "$out" <<'EOF'
import json, shutil, sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {p.parent.name: json.loads(p.read_text())["dev"]["best"] for p in sorted(out.glob("lr-*/training.json"))}
best = max(runs, key=lambda name: runs[name]["mean_em"])
# A rerun into the same OUT adds runs: the kept one is chosen again among all of them.
shutil.rmtree(out / "best", ignore_errors=True)
shutil.copytree(out / best, out / "best")
(out / "runs.json").write_text(json.dumps({"runs": runs, "kept": best}, indent=2) + "\n")
print(json.dumps({"runs": runs, "kept": best}))
EOF
