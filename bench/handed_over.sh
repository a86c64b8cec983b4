#!/usr/bin/env bash
# Hits on connections isr has handed to hyper (their first request carried a body; see
# bench/handed_over.lua): one hot 128 KiB URL, for isr binaries in turn, three rounds of
# 5 s: rps and hits per server CPU-second. isr on CPU 0, wrk -t1 -c64 on CPU 1.
#   bash bench/handed_over.sh BINARY...
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --example bench_origin
dir=$(mktemp -d)
trap 'kill $origin 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/isr.toml" <<EOT
listen = "127.0.0.1:19401"
origin = "http://127.0.0.1:19400"
data_dir = "$dir/data"
[[route]]
match = "/big/{n}"
revalidate = 60
EOT
taskset -c 1 ./target/release/examples/bench_origin serve 127.0.0.1:19400 >/dev/null 2>&1 &
origin=$!
sleep 0.3
for rep in 1 2 3; do
  for bin in "$@"; do
    rm -rf "$dir/data"
    ISR_SECRET=x ISR_LOG=warn taskset -c 0 "$bin" serve --config "$dir/isr.toml" >/dev/null 2>&1 &
    pid=$!
    until curl -sf -o /dev/null http://127.0.0.1:19401/big/1; do sleep 0.05; done
    curl -s -o /dev/null http://127.0.0.1:19401/big/1
    t0=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    rps=$(taskset -c 1 wrk -t1 -c64 -d5s -s bench/handed_over.lua http://127.0.0.1:19401/big/1 | awk '/Requests\/sec/ { print $2 }')
    t1=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    python3 -c "print('$bin', round($rps), 'rps', round($rps * 5 / (($t1 - $t0) / 100)), 'per CPU-s')"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
