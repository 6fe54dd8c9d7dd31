#!/usr/bin/env bash
# End-to-end finger de-duplication on FVC2002 set B: starts a server on an
# empty store, enrolls each of the 320 ISO/IEC 19794-2 templates as its own
# subject (position 1), runs a finger dedup job at the server's default
# target FMR and counts the pairs: genuine (two impressions of one finger,
# 1,120 in all, 280 per DB) and impostor.
#
#   ./scripts/dedup-fvc.sh [DATA_DIR]   (default ../shared/data/fingerprints/fvc2002)
#
# Needs a built release binary (./scripts/setup.sh, then cargo build --release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data="$(realpath "${1:-../shared/data/fingerprints/fvc2002}")"
bin="${CARGO_TARGET_DIR:-$HOME/.cache/cotejo/target}/release/cotejo"
dir="$(mktemp -d)"
port=50177
server="http://127.0.0.1:$port"
COTEJO__STORE__DATA_DIR="$dir" COTEJO__SERVER__LISTEN="127.0.0.1:$port" "$bin" serve >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do "$bin" stats --server "$server" >/dev/null 2>&1 && break; sleep 0.2; done
grep -v '^#' "$data/LABELS.txt" | while IFS=$'\t' read -r path label impression _; do
    "$bin" enroll --server "$server" --subject "${label}_$impression" --finger "1=$data/${path%.*}.iso" >/dev/null
done
job=$("$bin" dedup --server "$server" --modality finger --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
# Polled once a second (a poll takes CPU from the job, which runs at idle priority).
until "$bin" job status --server "$server" --json "$job" | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["state"] not in ("done", "failed", "cancelled"))'; do sleep 1; done
"$bin" job results --server "$server" --json "$job" | python3 -c '
import collections, json, sys
r = json.load(sys.stdin)
pairs = r["pairs"]
finger = lambda s: s.rsplit("_", 1)[0]
genuine = [p for p in pairs if finger(p["a"]) == finger(p["b"])]
per_db = collections.Counter(p["a"].split("_")[1] for p in genuine)
print(f"pairs {len(pairs)}: genuine {len(genuine)} of 1120 ({dict(sorted(per_db.items()))}, 280 each), impostor {len(pairs) - len(genuine)}")
'
# The job's time from the server's log: its "running" and "done" lines.
python3 - "$dir/log" <<'PY'
import re, sys
from datetime import datetime
stamps = {}
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    for event in ("dedup job running", "dedup job done"):
        if event in line:
            stamps[event] = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
if len(stamps) == 2:
    print(f"job: {(stamps['dedup job done'] - stamps['dedup job running']).total_seconds():.2f} s (server log)")
PY
