#!/usr/bin/env bash
# A cluster on this machine: PostgreSQL (initdb in cluster/pg, a free port
# on 127.0.0.1), two shards with two replicas each and a router, all
# `cotejo serve` on PostgreSQL. The router listens on 127.0.0.1:50060 (the
# shard nodes on 50061-50064); logs go to cluster/*.log. Ctrl-C stops
# everything. Extra arguments go to every `cotejo serve`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cotejo/target}"
cargo build --release --locked --bin cotejo
cotejo="$CARGO_TARGET_DIR/release/cotejo"

root="$PWD/cluster"
mkdir -p "$root"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
  # PostgreSQL refuses to run as root.
  chown postgres:postgres "$root"
  as_pg=(runuser -u postgres --)
fi
if [[ ! -f "$root/pg/PG_VERSION" ]]; then
  "${as_pg[@]}" "$bin/initdb" -D "$root/pg" -U cotejo --auth=trust -E UTF8 >/dev/null
fi
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${as_pg[@]}" "$bin/pg_ctl" -D "$root/pg" -o "-p $port -c listen_addresses=127.0.0.1 -k $root" \
  -l "$root/postgres.log" -w start >/dev/null
export COTEJO__STORE__URL="postgres://cotejo@127.0.0.1:$port/postgres"
# Templates are sealed with a key of the operator's, never kept in PostgreSQL.
if [[ ! -f "$root/keys/ACTIVE" ]]; then
  "$cotejo" keys new --key-dir "$root/keys" >/dev/null
fi
export COTEJO__STORE__KEY_DIR="$root/keys"

pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  "${as_pg[@]}" "$bin/pg_ctl" -D "$root/pg" -m fast -w stop >/dev/null || true
}
trap stop EXIT INT TERM

node() { # name port args...
  local name=$1 port=$2
  shift 2
  "$cotejo" serve --listen "127.0.0.1:$port" --data-dir "$root/$name" "$@" >"$root/$name.log" 2>&1 &
  pids+=($!)
}
node shard0-a 50061 --shard 0/2 "$@"
node shard0-b 50062 --shard 0/2 "$@"
node shard1-a 50063 --shard 1/2 "$@"
node shard1-b 50064 --shard 1/2 "$@"
node router 50060 --route "http://127.0.0.1:50061,http://127.0.0.1:50062;http://127.0.0.1:50063,http://127.0.0.1:50064" "$@"
echo "PostgreSQL on 127.0.0.1:$port; shard 0/2 on :50061 :50062, shard 1/2 on :50063 :50064; router on :50060"
echo "try: cotejo enroll --server http://127.0.0.1:50060 --subject alice --face <image>; cotejo identify --server http://127.0.0.1:50060 --face <image>"
wait "${pids[@]}"
