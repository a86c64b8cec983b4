#!/usr/bin/env bash
# Start-up with many stored pages: time from `isr serve` starting to its first HIT,
# after a clean stop and after kill -9. The origin is a closed port, so a 200 HIT proves
# the page came from the store.
#   bash bench/startup.sh [PAGES=1000000] [BYTES=1024]
set -euo pipefail
pages=${1:-1000000}
bytes=${2:-1024}
cd "$(dirname "$0")/.."
cargo build --release -q --bin isr
cargo build --release -q -p isr --example fill_store
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
./target/release/examples/fill_store "$dir" "$pages" "$bytes"
echo "store size: $(du -sh "$dir" | cut -f1)"

# Starts isr and waits for a HIT on a page from the middle of the store; sets $pid.
first_hit() {
  local start end
  start=$(date +%s%N)
  ./target/release/isr serve --origin http://127.0.0.1:9 --listen 127.0.0.1:18099 --data-dir "$dir" >/dev/null 2>&1 &
  pid=$!
  until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18099/page/$((pages / 2)))" = 200 ]; do sleep 0.005; done
  end=$(date +%s%N)
  echo "$1: first HIT after $(( (end - start) / 1000000 )) ms; RSS $(( $(awk '/VmRSS/ {print $2}' /proc/$pid/status) / 1024 )) MiB"
}

first_hit "clean start"
kill -TERM "$pid"; wait "$pid" || true
first_hit "restart after clean stop"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
first_hit "restart after kill -9"
kill -TERM "$pid"; wait "$pid" || true
