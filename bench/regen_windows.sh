#!/usr/bin/env bash
# Hits on the spread (1,000 URLs of 16 KiB, revalidate = 60 s) in WINDOWS windows of SECONDS
# in a row, so that one window holds the burst of 1,000 regenerations a minute after
# warm-up; prints each window's rps, p90, p99, isr's CPU and the origin requests made
# during it.
#   bash bench/regen_windows.sh [ORIGIN_CPU] [WINDOWS] [SECONDS]   (isr on CPU 0, wrk on
#   CPU 1; ISR_BIN=FILE for another isr binary; defaults 1, 8 and 10)
set -euo pipefail
origin_cpu=${1:-1}
windows=${2:-8}
secs=${3:-10}
cd "$(dirname "$0")/.."
cargo build --release -q --bin isr --example bench_origin
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
source bench/spread_isr.sh
spread_isr "$dir" 60 "$origin_cpu"
PREFIX=/page/ PAGES=1000 taskset -c 1 wrk -t1 -c64 -d5s -s bench/spread.lua http://127.0.0.1:19405/ >/dev/null
cpu() { awk '{print $14 + $15}' "/proc/$isr_pid/stat"; }  # clock ticks (1/100 s)
for w in $(seq 1 "$windows"); do
  before=$(curl -s http://127.0.0.1:19400/_count); ticks=$(cpu)
  out=$(PREFIX=/page/ PAGES=1000 taskset -c 1 wrk -t1 -c64 -d"$secs"s --latency -s bench/spread.lua http://127.0.0.1:19405/)
  after=$(curl -s http://127.0.0.1:19400/_count)
  echo "window $w: $(echo "$out" | awk '/Requests\/sec/ {print $2}') rps, p90 $(echo "$out" | awk '$1 == "90%" {print $2}'), p99 $(echo "$out" | awk '$1 == "99%" {print $2}'), isr CPU $(( ($(cpu) - ticks) * 10 )) ms, origin requests $((after - before))"
done
