#!/usr/bin/env bash
# One hot URL under a kind of load that bench/run.py does not make, for isr binaries in
# turn, three rounds of 5 s each: rps and requests per server CPU-second. isr on CPU 0,
# wrk -t1 -c64 on CPU 1.
#   bash bench/one_url.sh conditional BINARY...   browsers revalidating: If-None-Match with
#                                                 the page's ETag on a 16 KiB page (304s)
#   bash bench/one_url.sh handed-over BINARY...   hits on connections handed to hyper (their
#                                                 first request carried a body; see
#                                                 bench/first_request.lua), 128 KiB page
#   bash bench/one_url.sh after-miss BINARY...    hits on connections whose first request
#                                                 was a miss, 16 KiB page
set -euo pipefail
cd "$(dirname "$0")/.."
mode=$1
shift
case "$mode" in
  conditional) url=/page/1 ;;
  handed-over) url=/big/1 first=body ;;
  after-miss) url=/page/1 first=miss ;;
  *) echo "mode must be conditional, handed-over or after-miss, not $mode" >&2; exit 2 ;;
esac
cargo build --release -q --example bench_origin
dir=$(mktemp -d)
trap 'kill $origin 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/isr.toml" <<EOT
listen = "127.0.0.1:19401"
origin = "http://127.0.0.1:19400"
data_dir = "$dir/data"
[[route]]
match = "${url%/*}/{n}"
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
    until curl -sf -o /dev/null "http://127.0.0.1:19401$url"; do sleep 0.05; done
    if [ "$mode" = conditional ]; then
      etag=$(curl -sI "http://127.0.0.1:19401$url" | awk 'tolower($1) == "etag:" { print $2 }' | tr -d '\r')
      load=(-H "If-None-Match: $etag")
    else
      curl -s -o /dev/null "http://127.0.0.1:19401$url"
      load=(-s bench/first_request.lua)
    fi
    t0=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    rps=$(URL=$url FIRST=${first:-} taskset -c 1 wrk -t1 -c64 -d5s "${load[@]}" "http://127.0.0.1:19401$url" | awk '/Requests\/sec/ { print $2 }')
    t1=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
    python3 -c "print('$bin', round($rps), 'rps', round($rps * 5 / (($t1 - $t0) / 100)), 'per CPU-s')"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
