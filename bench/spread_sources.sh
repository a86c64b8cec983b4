#!/usr/bin/env bash
# The 16 KiB spread (1,000 URLs) from three places, interleaved: isr (bodies in memory
# files, revalidate = 3600 so that nothing regenerates), nginx static from the pages on
# the disk's file system (ext4 here), and nginx static from the same pages on tmpfs
# (/dev/shm: the same kind of memory as isr's page files). Prints rps, p99 and server CPU.
#   bash bench/spread_sources.sh [REPS] [SECONDS]   (servers on CPU 0, wrk -t1 -c64 on CPU 1)
set -euo pipefail
reps=${1:-3}
secs=${2:-10}
cd "$(dirname "$0")/.."
cargo build --release -q --bin isr --example bench_origin
dir=$(mktemp -d)
shm=$(mktemp -d -p /dev/shm)
chmod 755 "$dir" "$shm"  # nginx's worker runs as www-data
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir" "$shm"' EXIT
./target/release/examples/bench_origin write "$dir/static" 1000 >/dev/null
cp -r "$dir/static" "$shm/static"
nginx() {  # nginx NAME PORT ROOT
  mkdir -p "$dir/$1"
  cat > "$dir/$1/nginx.conf" <<EOT
daemon off; worker_processes 1; error_log stderr crit; pid $dir/$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_body_temp_path $dir/$1; proxy_temp_path $dir/$1; fastcgi_temp_path $dir/$1;
  uwsgi_temp_path $dir/$1; scgi_temp_path $dir/$1;
  open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s; default_type text/html;
  server { listen 127.0.0.1:$2; root $3; }
}
EOT
  taskset -c 0 /usr/sbin/nginx -p "$dir/$1" -c "$dir/$1/nginx.conf" &
}
source bench/spread_isr.sh
spread_isr "$dir" 3600 1
nginx ext4 19401 "$dir/static"
ext4=$!
nginx tmpfs 19402 "$shm/static"
tmpfs=$!
spread() {  # spread PORT SECONDS [wrk options]
  PREFIX=/page/ PAGES=1000 taskset -c 1 wrk -t1 -c64 "-d$2s" "${@:3}" -s bench/spread.lua "http://127.0.0.1:$1/"
}
for port in 19405 19401 19402; do
  until curl -sf -o /dev/null "http://127.0.0.1:$port/page/0"; do sleep 0.05; done
  spread $port 3 >/dev/null; spread $port 3 >/dev/null  # warm: every page twice and more
done
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }  # utime + stime, 1/100 s
for rep in $(seq 1 "$reps"); do
  for target in isr:19405:$isr_pid nginx-ext4:19401:$ext4 nginx-tmpfs:19402:$tmpfs; do
    IFS=: read -r name port pid <<<"$target"
    # nginx's work is in its worker, the master's only child
    [ "$name" = isr ] || pid=$(pgrep -P "$pid")
    before=$(ticks "$pid")
    out=$(spread "$port" "$secs" --latency)
    used=$(( $(ticks "$pid") - before ))
    echo "rep $rep $name: $(echo "$out" | awk '/Requests\/sec/ {print $2}') rps, p99 $(echo "$out" | awk '$1 == "99%" {print $2}'), server CPU $((used * 10)) ms of $((secs * 1000))"
  done
done
