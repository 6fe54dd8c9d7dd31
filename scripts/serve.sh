#!/usr/bin/env bash
# Set-up (if needed) and run the server on its embedded defaults:
# gRPC on 127.0.0.1:50051, data in ./data. Extra arguments go to `cotejo serve`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cotejo/target}"
exec cargo run --release --locked --bin cotejo -- serve "$@"
