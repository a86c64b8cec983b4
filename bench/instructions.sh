#!/usr/bin/env bash
# User-space instructions per hit, counted by valgrind's callgrind, for each BINARY: N
# keep-alive GETs of one cached 16 KiB page on one connection after 200 to warm up
# (counters zeroed after the warm-up). Deterministic to about 0.1 %, where timings on this
# machine swing by 10 %: for changes to isr's own work per hit (the kernel's is not counted).
#   bash bench/instructions.sh BINARY... [N]   (N defaults to 5000; installs valgrind;
#   PIN="taskset -c 0" runs isr on one CPU; LOAD=SECONDS replaces the N GETs on one
#   connection by `wrk -t1 -c64` for that long (needs wrk), so that epoll waits are shared
#   by many hits as in the benchmarks, and counts per request wrk made)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/callgrind.sh
n=5000
bins=()
for a in "$@"; do
  if [[ $a =~ ^[0-9]+$ ]]; then n=$a; else bins+=("$a"); fi
done
[ ${#bins[@]} -gt 0 ] || bins=(./target/release/isr)
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind >/dev/null
cargo build --release -q --example bench_origin
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
urls() { for _ in $(seq 1 "$1"); do printf 'url = "http://127.0.0.1:19405/page/1"\noutput = /dev/null\n'; done; }
urls 200 > "$dir/warm"
urls "$n" > "$dir/urls"
./target/release/examples/bench_origin serve 127.0.0.1:19400 >/dev/null 2>&1 &
for bin in "${bins[@]}"; do
  rm -rf "$dir/data" "$dir"/cg.out*
  cat > "$dir/isr.toml" <<EOT
listen = "127.0.0.1:19405"
origin = "http://127.0.0.1:19400"
data_dir = "$dir/data"
[[route]]
match = "/page/{n}"
revalidate = 3600
EOT
  ISR_LOG=warn ${PIN:-} valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" serve --config "$dir/isr.toml" >/dev/null 2>&1 &
  vg=$!
  until curl -sf -o /dev/null http://127.0.0.1:19405/page/1; do sleep 0.2; done
  curl -s -K "$dir/warm"
  callgrind_control -z "$vg" >/dev/null 2>&1
  if [ -n "${LOAD:-}" ]; then
    n=$(taskset -c 1 wrk -t1 -c64 -d"${LOAD}s" http://127.0.0.1:19405/page/1 | awk '/requests in/ { print $1 }')
  else
    curl -s -K "$dir/urls"
  fi
  total=$(callgrind_total "$dir" "$vg")
  echo "$bin: $((total / n)) user-space instructions per hit ($total for $n hits)"
done
