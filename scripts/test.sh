#!/usr/bin/env bash
# Runs every test: unit and property tests, engine tests on tokio's paused clock, and the
# end-to-end tests that start the real `isr` binary against a loopback test origin.
# Needs only cargo today; system packages later tests need are installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
