#!/usr/bin/env bash
# The v1 API's guard: `buf lint` (buf's STANDARD rules) and `buf breaking`
# against proto/v1.api.json, the API as released. Run by .ci/run.
#   scripts/api-check.sh           lint, then fail on any breaking change
#   scripts/api-check.sh --update  after an additive change: make the new
#                                  API the one later changes are held to
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../proto"
buf="${COTEJO_BUF:-$HOME/.cache/cotejo/buf/node_modules/.bin/buf}"
if [[ ! -x $buf ]]; then
  echo "[api-check] installing buf from npm into ${buf%/node_modules/*}" >&2
  npm install --silent --no-audit --no-fund --prefix "${buf%/node_modules/*}" @bufbuild/buf@1.75.0 >&2
fi
"$buf" lint
if [[ ${1:-} == --update ]]; then
  "$buf" breaking --against v1.api.json
  "$buf" build --exclude-source-info -o -#format=json |
    python3 -c 'import json, sys; json.dump(json.load(sys.stdin), sys.stdout, indent=1); print()' >v1.api.json
  echo "[api-check] proto/v1.api.json updated" >&2
else
  "$buf" breaking --against v1.api.json
fi
echo "[api-check] buf lint and buf breaking: clean" >&2
