#!/usr/bin/env bash
# Run bedside's whole test suite: fetch the default models if missing (scripts/setup.sh), then
# `cargo test --workspace`. Tests that need the reference fixtures in ../shared skip without them
# unless BEDSIDE_REQUIRE_SHARED=1 (CI sets it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo test --workspace --locked "$@"
