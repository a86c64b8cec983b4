#!/usr/bin/env bash
# Runs every test: unit, property and doc tests, engine tests on tokio's paused clock,
# and the end-to-end tests that start the real `isr` binary against a loopback test
# origin, the cluster tests that run several nodes against a real redis-server, and the
# admin page driven in a real headless Chromium, and CDN purging through a real Varnish.
# Installs the system packages the tests need when they are missing (Debian: apt-get).
# Ends with one summary line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)   # tests/cluster.rs
command -v chromium >/dev/null || missing+=(chromium)           # tests/admin_browser.rs
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v varnishd >/dev/null || missing+=(varnish)              # tests/cdn.rs
compgen -G "/usr/lib/*/varnish/vmods/libvmod_xkey.so" >/dev/null || missing+=(varnish-modules)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (needed by the tests)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
