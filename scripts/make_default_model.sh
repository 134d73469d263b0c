#!/usr/bin/env bash
# Reproduce the embedded default model (README "Embedded default model"): synthetic FGRestore-style data
# from the offline photos' training split, two-stage training of fgresq-compact-vit, held-out evaluation,
# epoch selection on separate validation photos, and the bundle copied into fgresq_sdk/default_model/.
# ~35 min on 2 CPU cores.
#   bash scripts/make_default_model.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-data}
PY=.venv/bin/python
command -v apt-get >/dev/null && ! dpkg -s gnome-backgrounds >/dev/null 2>&1 && apt-get install -y -q gnome-backgrounds
# 1. data: the training photos split again into fit (12) and val (3); held-out photos (4) are the test set
$PY -m fgresq_sdk.train.synthetic --out "$WORK/fit-c6" --source all --photo-split fit --crops-per-photo 6 --seed 0
$PY -m fgresq_sdk.train.synthetic --out "$WORK/val" --source all --photo-split val --crops-per-photo 4 --seed 2
$PY -m fgresq_sdk.train.synthetic --out "$WORK/heldout" --source all --photo-split held_out --crops-per-photo 4 --seed 1
# 2. training (stage 1 DFL 2 epochs, stage 2 FGResQ 5 epochs, val metrics logged every epoch)
$PY -m fgresq_sdk.train.trainer --config train/configs/default-compact.json --manifest "$WORK/fit-c6" \
    --val-manifest "$WORK/val" --out "$WORK/run-final" --threads 2 --no-progress
# 3. the stage-2 epoch with the best pair ACC on the val photos, exported; then the held-out test (README table)
best=$($PY - "$WORK/run-final/logs.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ep = [r for r in rows if r.get("event") == "epoch" and r.get("stage") == "fgresq" and r.get("val")]
print(max(ep, key=lambda r: (r["val"]["acc"], r["epoch"]))["checkpoint"])
PYEOF
)
echo "selected $best"
.venv/bin/fgresq-sdk export --checkpoint "$best" --out "$WORK/default-bundle" --force
.venv/bin/fgresq-sdk eval --model "$WORK/default-bundle" --manifest "$WORK/heldout" --out "$WORK/eval-default"
# 4. ship it: ONNX graphs + heads + manifest (the torch checkpoint stays out of the wheel)
rm -f fgresq_sdk/default_model/*.onnx fgresq_sdk/default_model/*.npz fgresq_sdk/default_model/model.json
$PY - "$WORK/default-bundle" "$best" <<'PYEOF'
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
                     "checkpoint": Path(sys.argv[2]).name, "selected_by": "best pair ACC on the val photos",
                     "data": "synthetic FGRestore-style from the offline photos' fit split, seed 0"}
write_manifest(dst, name="fgresq-default-compact", config=src.config, files=files, precision="fp32",
               source="trained from scratch on synthetic data (scripts/make_default_model.sh)", extra=extra)
print("installed", dst)
PYEOF
# 5. examples/: two held-out photos × the two tasks with the best held-out pair ACC, levels 0/2/4
for spec in "skimage-rocket_c0 dehazing rocket-dehazing" "skimage-brick_c0 super_resolution brick-super-resolution"; do
  set -- $spec
  mkdir -p "examples/$3"
  for L in 0 2 4; do cp "$WORK/heldout/images/$1/$2/L$L.png" "examples/$3/L$L.png"; done
done
