#!/usr/bin/env bash
# Skewed traffic on the million-page store: each BINARY in turn serves the store that
# `KEEP=/tmp/isr-scale bash bench/scale.sh` fills (isr on CPU 0, a 256 MiB memory tier),
# a 10 s warm-up then a measured 10 s of `wrk -t1 -c64` on CPU 1 with bench/zipf.lua
# (Zipf over PAGES pages, exponent ZIPF_S). Prints rps and isr's CPU per hit: how well the
# memory tier keeps the popular pages, and what the rest costs.
#   bash bench/zipf_ab.sh BINARY... [STORE=/tmp/isr-scale] [PAGES=150000] [ZIPF_S=0.8]
set -euo pipefail
cd "$(dirname "$0")/.."
store=${STORE:-/tmp/isr-scale}
export PAGES=${PAGES:-150000} ZIPF_S=${ZIPF_S:-0.8}
[ -f "$store/isr.toml" ] || { echo "no filled store in $store: run KEEP=$store bash bench/scale.sh first" >&2; exit 1; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }   # utime + stime, in clock ticks
hz=$(getconf CLK_TCK)
for bin in "$@"; do
  ISR_LOG=warn taskset -c 0 "$bin" serve --config "$store/isr.toml" >/dev/null 2>&1 &
  pid=$!
  until curl -s -o /dev/null http://127.0.0.1:19098/page/1; do kill -0 $pid; sleep 0.05; done
  SEED=3 taskset -c 1 wrk -t1 -c64 -d10s -s bench/zipf.lua http://127.0.0.1:19098/ >/dev/null
  t0=$(cpu_ticks $pid)
  rps=$(SEED=4 taskset -c 1 wrk -t1 -c64 -d10s -s bench/zipf.lua http://127.0.0.1:19098/ | awk '/Requests\/sec/ { print $2 }')
  t1=$(cpu_ticks $pid)
  awk -v b="$bin" -v r="$rps" -v t="$((t1 - t0))" -v s="$ZIPF_S" -v p="$PAGES" -v hz="$hz" \
    'BEGIN { printf "%s: Zipf %s over %d pages, %.0f rps, %.1f us of isr CPU per hit\n", b, s, p, r, t / hz / (r * 10) * 1e6 }'
  kill $pid
  wait $pid 2>/dev/null || true
done
