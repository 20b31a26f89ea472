#!/usr/bin/env bash
# Video truncation probe: the criterion bench times guardrails' library call and an ffprobe
# process per file in the same run; then whole processes over 100 files: one guardrails
# CLI call against 100 ffprobe calls (how a shell or Python pipeline probes a folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=$(bash benches/peers/make_videos.sh)
cargo bench --bench integrity --features data -- video --warm-up-time 1 --measurement-time 5 2>&1 | grep -E "^video|time:"
cargo build --release --features cli --quiet
LIST=()
for i in $(seq 1 100); do LIST+=("$DIR/clip.mp4"); done
time ./target/release/guardrails -q validate video "${LIST[@]}"
time (for f in "${LIST[@]}"; do ffprobe -v error -show_format -show_streams "$f" >/dev/null; done)
