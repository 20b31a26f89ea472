#!/usr/bin/env bash
# Times one guardrails resource snapshot (criterion) and the psutil equivalent in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install --quiet psutil
cargo bench --bench resource -- --warm-up-time 1 --measurement-time 5 2>&1 | grep -E "^resource_snapshot|time:"
python3 benches/peers/resource_psutil.py "${TMPDIR:-/tmp}"
