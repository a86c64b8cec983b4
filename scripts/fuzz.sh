#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), starting from and
# adding to the corpus kept in fuzz/corpus/<target>. A crash leaves its input in
# fuzz/artifacts/<target>/: turn it into a regression test named after the bug.
# Installs cargo-fuzz when missing. The stable toolchain runs it with RUSTC_BOOTSTRAP=1
# (cargo fuzz passes nightly-only sanitizer flags).
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config api_body cache_key origin_headers store_record)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  echo "== $t: ${seconds}s"
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 |
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+.*DONE)|ERROR|SUMMARY|panicked" || true
  if compgen -G "artifacts/$t/*" >/dev/null; then
    echo "$t: findings in fuzz/artifacts/$t/"; exit 1
  fi
done
