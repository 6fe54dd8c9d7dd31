#!/usr/bin/env python3
"""Face-verification cross-check of an embedding ONNX model on pre-aligned crops.

    python eval_aligned.py MODEL_ONNX DATA_DIR [--threads N] [--batch B]

DATA_DIR holds 112x112 RGB images and a LABELS.txt (tab-separated
`relative_path<TAB>identity`, lines starting with '#' are comments).
Every unordered pair of images is scored by cosine similarity:
genuine = same identity, impostor = different identity.
Prints EER, TAR@FAR=1% and TAR@FAR=0.1%.

Preprocessing matches what the service must do outside the graph:
RGB, (pixel - 127.5) / 128, NHWC float32. The model's input/output are taken
from the graph (first input, first output).

Needs numpy, onnxruntime, pillow.
"""

import argparse
import os
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def read_labels(data_dir):
    paths, ids = [], []
    with open(os.path.join(data_dir, "LABELS.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            rel, ident = line.split("\t")[:2]
            paths.append(os.path.join(data_dir, rel))
            ids.append(ident)
    return paths, ids


def load_image(path):
    im = Image.open(path).convert("RGB")
    if im.size != (112, 112):
        raise SystemExit(f"{path}: expected 112x112 aligned crop, got {im.size}")
    return (np.asarray(im, np.float32) - 127.5) / 128.0


def embed(sess, paths, batch):
    inp = sess.get_inputs()[0].name
    out = sess.get_outputs()[0].name
    embs = []
    for i in range(0, len(paths), batch):
        x = np.stack([load_image(p) for p in paths[i:i + batch]])
        embs.append(sess.run([out], {inp: x})[0])
    e = np.concatenate(embs).astype(np.float64)
    # Re-normalise anyway so the script also works for models without an L2 tail.
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def eer(gen, imp):
    """Equal error rate: sweep the threshold over all observed scores
    (accept if score >= t) and take the point where FAR and FRR cross."""
    thr = np.unique(np.concatenate([gen, imp]))
    gen_s, imp_s = np.sort(gen), np.sort(imp)
    frr = np.searchsorted(gen_s, thr, side="left") / len(gen_s)          # gen < t
    far = 1.0 - np.searchsorted(imp_s, thr, side="left") / len(imp_s)    # imp >= t
    i = int(np.argmin(np.abs(far - frr)))
    return (far[i] + frr[i]) / 2.0, thr[i]


def tar_at_far(gen, imp, far):
    """TAR at the strictest threshold whose FAR does not exceed `far`
    (accept if score > t, t = the (k+1)-th highest impostor score)."""
    imp_desc = np.sort(imp)[::-1]
    k = int(np.floor(far * len(imp_desc)))
    t = imp_desc[min(k, len(imp_desc) - 1)]
    return float(np.mean(gen > t)), float(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_onnx")
    ap.add_argument("data_dir")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model_onnx, so, providers=["CPUExecutionProvider"])

    paths, ids = read_labels(args.data_dir)
    t0 = time.perf_counter()
    e = embed(sess, paths, args.batch)
    dt = time.perf_counter() - t0

    labels = np.unique(ids, return_inverse=True)[1]
    sim = e @ e.T
    iu = np.triu_indices(len(paths), k=1)
    scores = sim[iu]
    same = labels[iu[0]] == labels[iu[1]]
    gen, imp = scores[same], scores[~same]

    e_rate, e_thr = eer(gen, imp)
    tar1, t1 = tar_at_far(gen, imp, 0.01)
    tar01, t01 = tar_at_far(gen, imp, 0.001)
    print(f"model      {args.model_onnx}")
    print(f"images     {len(paths)} ({len(set(ids))} identities), embedded in {dt:.1f}s")
    print(f"pairs      genuine {len(gen)}, impostor {len(imp)}")
    print(f"cosine     genuine mean {gen.mean():.4f}, impostor mean {imp.mean():.4f}")
    print(f"EER        {100 * e_rate:.2f}%  (threshold {e_thr:.4f})")
    print(f"TAR@FAR1%  {100 * tar1:.2f}%  (threshold {t1:.4f})")
    print(f"TAR@FAR0.1% {100 * tar01:.2f}%  (threshold {t01:.4f})")


if __name__ == "__main__":
    main()
