#!/usr/bin/env bash
# Runs every test: unit, property and doc tests, engine tests on tokio's paused clock,
# and the end-to-end tests that start the real `isr` binary against a loopback test
# origin. Needs only cargo today; system packages later tests need are installed here.
# Ends with one summary line: "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
