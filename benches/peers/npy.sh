#!/usr/bin/env bash
# The NPY finite scan (criterion) and numpy's equivalent on the same 1 GiB file, in one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install --quiet numpy
cargo bench --bench integrity --features data -- --warm-up-time 1 --measurement-time 10 2>&1 | grep -E "^npy|time:|thrpt:"
python3 benches/peers/npy_numpy.py
