#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ API headers from Debian trixie's libonnxruntime-dev package, without
# touching the system's apt configuration: a throw-away sources list and apt state folder are passed
# with -o options, `apt-get download` fetches only the .deb (no install, no dependencies) and `dpkg -x`
# unpacks it into the build folder. Nothing third-party is ever written into the source tree.
#
# Usage: fetch_ort_headers.sh [DEST]      (default DEST: cpp_bindings/build/_deps/ort)
# Prints the include folder (the one holding onnxruntime_cxx_api.h) on its last line of stdout.
# Env: FGRESQ_DEBIAN_MIRROR (default: the mirror of this machine's bookworm sources, else deb.debian.org)
#      FGRESQ_ORT_SUITE (default: trixie)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/build/_deps/ort}"
suite="${FGRESQ_ORT_SUITE:-trixie}"

find_header() { find "$1" -name onnxruntime_cxx_api.h -print -quit 2>/dev/null || true; }

hdr="$(find_header "$dest")"
if [ -n "$hdr" ]; then
  dirname "$hdr"
  exit 0
fi

command -v apt-get >/dev/null || { echo "fetch_ort_headers: apt-get not found (not a Debian system); set FGRESQ_ORT_INCLUDE_DIR instead" >&2; exit 3; }
command -v dpkg >/dev/null || { echo "fetch_ort_headers: dpkg not found" >&2; exit 3; }

# The mirror URL of this machine's Debian sources (deb822 "URIs:" or one-line "deb URL suite"), reused for trixie.
mirror="${FGRESQ_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)"
fi
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; break}}' | grep -v -- '-security' | grep '/debian/\?$' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
for k in "/usr/share/keyrings/debian-archive-$suite-automatic.gpg" /usr/share/keyrings/debian-archive-keyring.gpg; do
  if [ -f "$k" ]; then keyring="$k"; break; fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
chmod -R a+rwx "$tmp"   # apt drops to the _apt user for downloads
echo "deb [signed-by=$keyring] $mirror $suite main" > "$tmp/sources.list"

opts=(
  -o "Dir::Etc::sourcelist=$tmp/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$tmp/lists"
  -o "Dir::Cache=$tmp/cache"
  -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache="
  -o "APT::Get::List-Cleanup=0"
  -o "Acquire::Languages=none"
  -o "Debug::NoLocking=1"
)

echo "fetch_ort_headers: apt-get update ($mirror $suite main, private state in $tmp)" >&2
apt-get -q "${opts[@]}" update >&2
# apt-get update reports an unreachable mirror as a warning; no package list means no download.
ls "$tmp"/lists/*_Packages* >/dev/null 2>&1 ||
  { echo "fetch_ort_headers: no package list for $suite from $mirror (no network access to the mirror?)" >&2; exit 5; }
echo "fetch_ort_headers: apt-get download libonnxruntime-dev" >&2
(cd "$tmp/deb" && apt-get -q "${opts[@]}" download libonnxruntime-dev >&2)
deb="$(ls "$tmp"/deb/libonnxruntime-dev_*.deb | head -n1)"
mkdir -p "$dest"
dpkg -x "$deb" "$dest"
basename "$deb" > "$dest/SOURCE_DEB"
hdr="$(find_header "$dest")"
[ -n "$hdr" ] || { echo "fetch_ort_headers: $deb holds no onnxruntime_cxx_api.h" >&2; exit 4; }
echo "fetch_ort_headers: headers from $(cat "$dest/SOURCE_DEB") in $(dirname "$hdr")" >&2
dirname "$hdr"
