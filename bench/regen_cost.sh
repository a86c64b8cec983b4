#!/usr/bin/env bash
# CPU isr spends per regeneration of an unchanged page: COUNT pages of 16 KiB, all tagged
# `all`, regenerated at once by an eager tag revalidation while no visitor loads isr.
#   bash bench/regen_cost.sh [BINARY] [COUNT]   (isr on CPU 0, the origin on CPU 1)
# PERF=FILE also records a profile of isr (perf record --call-graph dwarf) into FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-./target/release/isr}
count=${2:-1000}
cargo build --release -q --example bench_origin
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/isr.toml" <<EOT
listen = "127.0.0.1:19405"
origin = "http://127.0.0.1:19400"
data_dir = "$dir/data"
[[route]]
match = "/page/{n}"
revalidate = 3600
tags = ["all"]
EOT
taskset -c 1 ./target/release/examples/bench_origin serve 127.0.0.1:19400 >/dev/null 2>&1 &
ISR_SECRET=s ISR_LOG=warn taskset -c 0 "$bin" serve --config "$dir/isr.toml" >/dev/null 2>&1 &
pid=$!
until curl -sf -o /dev/null http://127.0.0.1:19405/page/0; do sleep 0.05; done
seq 0 $((count - 1)) | sed "s|.*|url = \"http://127.0.0.1:19405/page/&\"\noutput = /dev/null|" > "$dir/urls"
curl -s -K "$dir/urls"
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }  # clock ticks (1/100 s)
curl -s -o /dev/null -X POST -H "Authorization: Bearer s" -H "content-type: application/json" \
  -d '{"tag": "all", "eager": true}' http://127.0.0.1:19405/_isr/revalidate  # warm the path
sleep 3
[ -n "${PERF:-}" ] && { perf record -F 4000 --call-graph dwarf,16384 -p "$pid" -o "$PERF" >/dev/null 2>&1 & sleep 1; }
start=$(curl -s http://127.0.0.1:19400/_count); before=$(cpu); t0=$(date +%s%N)
curl -s -o /dev/null -X POST -H "Authorization: Bearer s" -H "content-type: application/json" \
  -d '{"tag": "all", "eager": true}' http://127.0.0.1:19405/_isr/revalidate
until [ $(( $(curl -s http://127.0.0.1:19400/_count) - start )) -ge "$count" ]; do sleep 0.01; done
sleep 1  # the last stores commit
ticks=$(( $(cpu) - before ))
[ -n "${PERF:-}" ] && { kill -INT %3 2>/dev/null || pkill -INT -f "perf record"; wait %3 2>/dev/null || true; }
echo "$count regenerations: $((ticks * 10)) ms of isr CPU, $((ticks * 10000 / count)) µs each; wall $(( ($(date +%s%N) - t0) / 1000000 - 1000 )) ms"
