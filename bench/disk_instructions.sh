#!/usr/bin/env bash
# User-space instructions per disk-tier request, counted by valgrind's callgrind, for each
# BINARY, on the million-page store that `KEEP=/tmp/isr-scale bash bench/scale.sh` fills:
# isr on CPU 0 under callgrind, `wrk -t1 -c16` on CPU 1 over random pages /page/0 …
# /page/PAGES-1 (default 200,000, a subset this VM's page cache keeps), a 5 s warm-up, then
# counters zeroed and a 10 s measured pass. Steadier than timings (a few %), for changes to
# the store's read path; the kernel's work is not counted.
#   bash bench/disk_instructions.sh BINARY... [STORE=/tmp/isr-scale] [PAGES=200000]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/callgrind.sh
store=${STORE:-/tmp/isr-scale}
pages=${PAGES:-200000}
[ -f "$store/isr.toml" ] || { echo "no filled store in $store: run KEEP=$store bash bench/scale.sh first" >&2; exit 1; }
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind >/dev/null
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/random.lua" <<EOT
local pages = $pages
init = function(args) math.randomseed(tonumber(os.getenv("SEED")) or os.time()) end
request = function() return wrk.format("GET", "/page/" .. math.random(0, pages - 1)) end
EOT
for bin in "$@"; do
  rm -f "$dir"/cg.out*
  ISR_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" serve --config "$store/isr.toml" >/dev/null 2>&1 &
  vg=$!
  until curl -sf -o /dev/null http://127.0.0.1:19098/page/5; do sleep 0.2; done
  SEED=3 taskset -c 1 wrk -t1 -c16 -d5s -s "$dir/random.lua" http://127.0.0.1:19098/ >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  n=$(SEED=4 taskset -c 1 wrk -t1 -c16 -d10s -s "$dir/random.lua" http://127.0.0.1:19098/ | awk '/requests in/ {print $1}')
  total=$(callgrind_total "$dir" "$vg")
  echo "$bin: $((total / n)) user-space instructions per request ($n requests)"
done
