#!/usr/bin/env bash
# Conditional hits (a browser revalidating: If-None-Match with the page's ETag, answered
# 304) on one hot 16 KiB URL, for two isr binaries in turn, three rounds of 5 s each:
# rps and requests per server CPU-second. isr on CPU 0, wrk -t1 -c64 on CPU 1.
#   bash bench/conditional.sh OLD_BINARY NEW_BINARY
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
match = "/page/{n}"
revalidate = 60
EOT
taskset -c 1 ./target/release/examples/bench_origin serve 127.0.0.1:19400 >/dev/null 2>&1 &
origin=$!
sleep 0.3
for rep in 1 2 3; do
  for bin in "$1" "$2"; do
    rm -rf "$dir/data"
    ISR_SECRET=x ISR_LOG=warn taskset -c 0 "$bin" serve --config "$dir/isr.toml" >/dev/null 2>&1 &
    pid=$!
    until curl -sf -o /dev/null http://127.0.0.1:19401/page/1; do sleep 0.05; done
    etag=$(curl -sI http://127.0.0.1:19401/page/1 | awk 'tolower($1) == "etag:" { print $2 }' | tr -d '\r')
    t0=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    rps=$(taskset -c 1 wrk -t1 -c64 -d5s -H "If-None-Match: $etag" http://127.0.0.1:19401/page/1 | awk '/Requests\/sec/ { print $2 }')
    t1=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    python3 -c "print('$bin', round($rps), 'rps', round($rps * 5 / (($t1 - $t0) / 100)), 'per CPU-s')"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
