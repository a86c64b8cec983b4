#!/usr/bin/env bash
# Scale: PAGES stored pages of BYTES each (default 1,000,000 x 16 KiB) behind a 256 MiB
# memory tier. Measures store size, time to first HIT after start, RSS, and hit
# throughput when hits come from the memory tier (1,000 URLs) versus mostly from disk
# (random over all pages).   bash bench/scale.sh [PAGES] [BYTES] [SECONDS]
# KEEP=DIR keeps the filled store in DIR and reuses it on the next run; ISR_BIN=PATH runs
# another isr binary on it (default: the release build).
set -euo pipefail
pages=${1:-1000000}
bytes=${2:-16384}
secs=${3:-10}
cd "$(dirname "$0")/.."
cargo build --release -q --bin isr
cargo build --release -q -p isr --example fill_store
pid=
if [ -n "${KEEP:-}" ]; then
  dir=$KEEP
  mkdir -p "$dir"
  trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
else
  dir=$(mktemp -d)
  trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
fi
[ -d "$dir/data" ] || ./target/release/examples/fill_store "$dir/data" "$pages" "$bytes"
echo "store size: $(du -sh "$dir/data" | cut -f1)"
cat > "$dir/isr.toml" <<EOT
listen = "127.0.0.1:19098"
origin = "http://127.0.0.1:9"
data_dir = "$dir/data"
[cache]
memory = "256MiB"
EOT
start=$(date +%s%N)
ISR_LOG=warn taskset -c 0 "${ISR_BIN:-./target/release/isr}" serve --config "$dir/isr.toml" >/dev/null 2>&1 &
pid=$!
until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19098/page/$((pages / 2)))" = 200 ]; do kill -0 $pid; sleep 0.005; done
echo "first HIT after $(( ($(date +%s%N) - start) / 1000000 )) ms"
# RSS, plus the bytes isr holds in page files (memfds), which count in its memory tier but
# not in RSS.
rss() {
  local files
  files=$(for f in /proc/$pid/fd/*; do
    case "$(readlink "$f")" in /memfd:*) stat -L -c %s "$f" ;; esac
  done | awk '{ s += $1 } END { printf "%d", s / 1048576 }')
  echo "$(( $(awk '/VmRSS/ {print $2}' /proc/$pid/status) / 1024 )) MiB + ${files} MiB in page files"
}
# Seeded anew for every pass: wrk's LuaJIT starts math.random from the same state in each
# process, so unseeded passes would replay one sequence, and the second would find the
# pages the first one kept in the memory tier (or made eligible for it) in the same order.
cat > "$dir/random.lua" <<EOT
local pages = $pages
init = function(args) math.randomseed(tonumber(os.getenv("SEED")) or os.time()) end
request = function() return wrk.format("GET", "/page/" .. math.random(0, pages - 1)) end
EOT
PREFIX=/page/ PAGES=1000 taskset -c 1 wrk -t1 -c64 -d"${secs}s" -s bench/spread.lua http://127.0.0.1:19098/ >/dev/null  # warm 1,000
echo "memory-tier hits (1,000 URLs): $(PREFIX=/page/ PAGES=1000 taskset -c 1 wrk -t1 -c64 -d"${secs}s" -s bench/spread.lua http://127.0.0.1:19098/ | awk '/Requests\/sec/ {print $2}') rps; RSS $(rss)"
echo "mostly-disk hits (random over $pages URLs): $(taskset -c 1 wrk -t1 -c64 -d"${secs}s" -s "$dir/random.lua" http://127.0.0.1:19098/ | awk '/Requests\/sec/ {print $2}') rps; RSS $(rss)"
echo "again, tier now churning: $(taskset -c 1 wrk -t1 -c64 -d"${secs}s" -s "$dir/random.lua" http://127.0.0.1:19098/ | awk '/Requests\/sec/ {print $2}') rps; RSS $(rss)"
