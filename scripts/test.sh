#!/usr/bin/env bash
# Set-up (if needed) and the whole test suite: unit tests and the
# integration tests, which start the real server on 127.0.0.1:0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
# Build outputs live outside the clone so a fresh clone (CI) reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cotejo/target}"
cargo test --release --locked "$@"
# The integration suite again with every test server's records in
# PostgreSQL (a throwaway server, a database per data directory); tests of
# the embedded store's own parts say they are skipped.
if [[ $# -eq 0 ]]; then
  COTEJO_TEST_STORE=postgres cargo test --release --locked --test integration
fi
# Tests on ../shared/data (the identity-labelled evaluation sets) are ignored
# by a plain `cargo test`, so a clone without the data reports them as
# ignored; here they run wherever the data is.
if [[ $# -eq 0 && -d ../shared/data ]]; then
  cargo test --release --locked -- --ignored --skip faults::
fi
# Fault tests that mount a small tmpfs (a disk that fills up) need root.
if [[ $# -eq 0 && $(id -u) -eq 0 ]]; then
  cargo test --release --locked --test integration faults:: -- --ignored
fi
