#!/usr/bin/env bash
# System calls per request on one hot URL (16 KiB; URL=/big/1 for 128 KiB), counted with
# perf's syscall tracepoints (needs perf and tracefs; run as root), for nginx serving the
# page as a static file and for each isr binary given. Server on CPU 0, wrk -t1 -c64 -d3s
# on CPU 1.
#   [URL=/big/1] bash bench/syscalls.sh BINARY...
set -euo pipefail
cd "$(dirname "$0")/.."
url=${URL:-/page/1}
cargo build --release -q --example bench_origin
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
taskset -c 1 ./target/release/examples/bench_origin serve 127.0.0.1:19400 >/dev/null 2>&1 &
pids+=($!)
sleep 0.3
mkdir -p "$dir/static${url%/*}"
curl -s -o "$dir/static$url" "http://127.0.0.1:19400$url"
cat > "$dir/nginx.conf" <<EOT
daemon off; worker_processes 1; error_log stderr warn; pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s;
  default_type text/html;
  server { listen 127.0.0.1:19402; root $dir/static; }
}
EOT
cat > "$dir/isr.toml" <<EOT
listen = "127.0.0.1:19401"
origin = "http://127.0.0.1:19400"
data_dir = "$dir/data"
[[route]]
match = "${url%/*}/{n}"
revalidate = 60
EOT
calls=(recvfrom sendto sendfile64 writev setsockopt epoll_wait)
# count NAME PID URL: per-request counts of the calls above, EAGAINs of recvfrom, and all.
count() {
  local events=() c
  for c in "${calls[@]}"; do events+=(-e "syscalls:sys_enter_$c"); done
  perf stat -x, "${events[@]}" -e raw_syscalls:sys_enter \
    -e syscalls:sys_exit_recvfrom --filter 'ret == -11' -p "$2" -o "$dir/perf.out" -- sleep 3.5 &
  local perf=$!
  sleep 0.2
  local reqs
  reqs=$(taskset -c 1 wrk -t1 -c64 -d3s "$3" | awk '/requests in/ { print $1 }')
  wait $perf
  awk -F, -v r="$reqs" -v name="$1" '$1 ~ /^[0-9]+$/ {
      e = $3; sub(/^syscalls:sys_enter_|^raw_syscalls:sys_/, "", e); sub(/^syscalls:sys_exit_recvfrom/, "recvfrom EAGAIN", e)
      line = line sprintf("  %s %.2f", e, $1 / r) }
    END { print name ":" line }' "$dir/perf.out"
}
taskset -c 0 nginx -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
count nginx-static "$(pgrep -f 'nginx: worker' -P "$(cat "$dir/nginx.pid")")" "http://127.0.0.1:19402$url"
for bin in "$@"; do
  rm -rf "$dir/data"
  ISR_SECRET=x ISR_LOG=warn taskset -c 0 "$bin" serve --config "$dir/isr.toml" >/dev/null 2>&1 &
  pid=$!
  until curl -sf -o /dev/null "http://127.0.0.1:19401$url"; do sleep 0.05; done
  curl -s -o /dev/null "http://127.0.0.1:19401$url"
  count "$bin" "$pid" "http://127.0.0.1:19401$url"
  kill $pid
  wait $pid 2>/dev/null || true
done
