#!/usr/bin/env bash
# Regenerate docs/report.png: rank examples/ (one folder per scene) with the embedded default model,
# write the HTML report and screenshot it in headless Chromium (apt-get install -y chromium).
#   MODEL=DIR      use this model bundle instead of the embedded default model
#   EXAMPLES=DIR   rank this folder instead of examples/
#   SIZE=W,H       browser window (default 1280,1300)
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${EXAMPLES:-examples}
SIZE=${SIZE:-1280,1300}
CLI=.venv/bin/fgresq-sdk
[ -x "$CLI" ] || CLI=fgresq-sdk
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || echo /usr/bin/chromium)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=()
if [ -n "${MODEL:-}" ]; then model=(--model "$MODEL"); fi
rc=0
"$CLI" rank "$EXAMPLES" --group-by parent "${model[@]}" --report "$tmp/report.html" >/dev/null || rc=$?
if [ "$rc" -gt 1 ]; then exit "$rc"; fi  # 1: some inputs failed; the report lists them
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --hide-scrollbars --window-size="$SIZE" \
  --screenshot="$tmp/report.png" "file://$tmp/report.html" 2>/dev/null
cp "$tmp/report.png" docs/report.png
echo "wrote docs/report.png"
