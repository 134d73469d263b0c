#!/usr/bin/env bash
# Reproduce the embedded default model (README "Embedded default model"): synthetic FGRestore-style data
# from the offline photos' training split, two-stage training of fgresq-compact-vit, held-out evaluation,
# and the bundle copied into fgresq_sdk/default_model/. ~35 min on 2 CPU cores.
#   bash scripts/make_default_model.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-data}
PY=.venv/bin/python
command -v apt-get >/dev/null && ! dpkg -s gnome-backgrounds >/dev/null 2>&1 && apt-get install -y -q gnome-backgrounds
# 1. data: training photos (15) × 6 seeded crops; held-out photos (4) × 4 crops, a different seed
$PY -m fgresq_sdk.train.synthetic --out "$WORK/train-c6" --source all --photo-split train --crops-per-photo 6 --seed 0
$PY -m fgresq_sdk.train.synthetic --out "$WORK/heldout" --source all --photo-split held_out --crops-per-photo 4 --seed 1
# 2. training (stage 1 DFL 2 epochs, stage 2 FGResQ 6 epochs), exported to a bundle
$PY -m fgresq_sdk.train.trainer --config train/configs/default-compact.json --manifest "$WORK/train-c6" \
    --out "$WORK/run-default" --threads 2 --export --no-progress
# 3. held-out evaluation (the README table)
.venv/bin/fgresq-sdk eval --model "$WORK/run-default/bundle" --manifest "$WORK/heldout" --out "$WORK/eval-default"
# 4. ship it: ONNX graphs + heads + manifest (the torch checkpoint stays out of the wheel)
rm -f fgresq_sdk/default_model/*.onnx fgresq_sdk/default_model/*.npz fgresq_sdk/default_model/model.json
$PY - "$WORK/run-default/bundle" <<'PYEOF'
import json, shutil, sys
from pathlib import Path
from fgresq_sdk.bundle import load_bundle, write_manifest
src = load_bundle(sys.argv[1])
dst = Path("fgresq_sdk/default_model")
files = {}
for role in ("encoder", "compare_head", "heads"):
    shutil.copy2(src.path(role), dst / src.path(role).name)
    files[role] = src.path(role).name
m = src.manifest
extra = {k: m[k] for k in ("opset", "feature_dim", "inputs", "outputs") if k in m}
extra["training"] = {"recipe": "train/configs/default-compact.json", "script": "scripts/make_default_model.sh",
                     "data": "synthetic FGRestore-style, offline photos (training split), seed 0"}
write_manifest(dst, name="fgresq-default-compact", config=src.config, files=files, precision="fp32",
               source="trained from scratch on synthetic data (scripts/make_default_model.sh)", extra=extra)
print("installed", dst)
PYEOF
