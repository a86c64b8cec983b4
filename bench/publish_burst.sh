#!/usr/bin/env bash
# Hits during a publish: isr on CPU 0 holds 1,000 pages of 16 KiB and 1,000 of 128 KiB;
# wrk -t1 -c64 (CPU 1) runs WINDOWS windows of SECONDS on the 16 KiB spread, and at the
# start of window BURST the origin's content changes and an eager revalidation of `/big`
# makes isr regenerate (and compress) the 1,000 changed 128 KiB pages. Prints each
# window's rps, p50, p99, max, isr's CPU and the origin requests made during it; then,
# with no load, how long the same publish takes until the last page is new.
# MODE=expire publishes with `"mode": "expire"` (read-your-writes: a visitor of a changed
# page waits for its new version, joining its queued regeneration), and a visitor asks for
# one 128 KiB page after another during the publish window; their latencies are printed.
#   bash bench/publish_burst.sh [WINDOWS] [SECONDS] [BURST]   (defaults 6, 5, 3;
#   ISR_BIN=FILE for another isr binary, MODE=stale|expire, default stale)
set -euo pipefail
windows=${1:-6}
secs=${2:-5}
burst=${3:-3}
mode=${MODE:-stale}
cd "$(dirname "$0")/.."
cargo build --release -q --bin isr --example bench_origin
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
source bench/spread_isr.sh
spread_isr "$dir" 3600 1 $'[[route]]\nmatch = "/big/{n}"\nrevalidate = 3600'
# Every page twice, so that each is cached and has had a hit.
for p in page big; do for _ in 1 2; do for n in $(seq 0 999); do
  printf 'url = "http://127.0.0.1:19405/%s/%s"\noutput = /dev/null\n' "$p" "$n"
done; done; done > "$dir/urls"
curl -s -K "$dir/urls"
publish() {
  curl -s -X POST -H 'authorization: Bearer bench' -H 'content-type: application/json' \
    -d "{\"path\": \"/big\", \"type\": \"layout\", \"mode\": \"$mode\", \"eager\": true}" \
    http://127.0.0.1:19405/_isr/revalidate >/dev/null
}
# One visitor at a time asks for 128 KiB pages (every 7th, from the last) while the
# publish runs: total seconds and x-isr-cache of each.
visitors() {
  for n in $(seq 999 -7 0); do
    curl -s -o /dev/null -w '%{time_total} %header{x-isr-cache}\n' "http://127.0.0.1:19405/big/$n"
    sleep 0.02
  done
}
cpu() { awk '{print $14 + $15}' "/proc/$isr_pid/stat"; }  # clock ticks (1/100 s)
count() { curl -s http://127.0.0.1:19400/_count; }
spread() { PREFIX=/page/ PAGES=1000 taskset -c 1 wrk -t1 -c64 -d"$1"s --latency -s bench/spread.lua http://127.0.0.1:19405/; }
spread 3 >/dev/null
curl -s http://127.0.0.1:19400/_reset >/dev/null
for w in $(seq 1 "$windows"); do
  if [ "$w" = "$burst" ]; then
    curl -s http://127.0.0.1:19400/_bump >/dev/null
    (sleep 0.5; publish) &
    if [ "$mode" = expire ]; then (sleep 0.6; visitors > "$dir/visitors") & visiting=$!; fi
  fi
  before=$(count); ticks=$(cpu)
  out=$(spread "$secs")
  echo "window $w: $(echo "$out" | awk '/Requests\/sec/ {print $2}') rps, p50 $(echo "$out" | awk '$1 == "50%" {print $2}'), p99 $(echo "$out" | awk '$1 == "99%" {print $2}'), max $(echo "$out" | awk '$1 == "Latency" {print $4}'), isr CPU $(( ($(cpu) - ticks) * 10 )) ms, origin requests $(( $(count) - before ))"
done
if [ "$mode" = expire ]; then
  wait "$visiting"
  sort -n "$dir/visitors" | awk '{ n[$2]++; t[$2, n[$2]] = $1 * 1000 }
    END { for (s in n) printf "visitors during the publish, %s: %d, p50 %.1f ms, p90 %.1f ms, max %.1f ms\n",
      s, n[s], t[s, int((n[s] + 1) / 2)], t[s, int(n[s] * 0.9 + 0.5)], t[s, n[s]] }'
fi
# The same publish with no load, once the first has finished: until the last page is
# new and isr's CPU has gone quiet.
until [ "$(count)" -ge 1000 ]; do sleep 0.1; done
sleep 2
curl -s http://127.0.0.1:19400/_reset >/dev/null
version=$(curl -s http://127.0.0.1:19400/_bump)
start=$(date +%s%N); ticks=$(cpu)
publish
until [ "$(count)" -ge 1000 ] && curl -s http://127.0.0.1:19405/big/999 | grep -q "v$version</h1>"; do sleep 0.02; done
last=$(cpu); while sleep 0.1; [ "$(cpu)" != "$last" ]; do last=$(cpu); done
echo "the publish with no load: $(( ($(date +%s%N) - start) / 1000000 - 100 )) ms, isr CPU $(( ($(cpu) - ticks) * 10 )) ms"
