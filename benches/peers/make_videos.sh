#!/usr/bin/env bash
# Writes the bench videos (needs ffmpeg): a 60 s 1280x720 30 fps H.264 + AAC clip as MP4,
# remuxed to MKV and AVI, in ${GUARDRAILS_VIDEO_BENCH:-/tmp/guardrails_bench/videos}.
set -euo pipefail
DIR=${GUARDRAILS_VIDEO_BENCH:-/tmp/guardrails_bench/videos}
mkdir -p "$DIR"
cd "$DIR"
ff() { ffmpeg -hide_banner -loglevel error -y "$@"; }
[ -f clip.mp4 ] || ff -f lavfi -i testsrc=size=1280x720:rate=30:duration=60 -f lavfi -i sine=duration=60 \
    -c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -shortest clip.mp4
[ -f clip.mkv ] || ff -i clip.mp4 -c copy clip.mkv
[ -f clip.avi ] || ff -i clip.mp4 -c:v copy -an -bsf:v h264_mp4toannexb clip.avi
echo "$DIR"
