#!/usr/bin/env bash
# The JSON guard benches and the Python json_repair peer, in one run on one machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install --quiet json_repair
cargo bench --bench json_guard --features json -- --warm-up-time 1 --measurement-time 5 2>&1 | grep -E "^json_guard|time:|thrpt:"
python3 benches/peers/json_repair_peer.py
