#!/usr/bin/env python3
"""A float64 evaluation of an exported CNN, to tell which of netc and
onnxruntime is the closer to exact when they differ (not run by CI).

Usage: reference64.py CASE_DIR   (a case kept by NETC_ONNX_CASES=DIR
cargo test --test onnx_export: model.onnx, inputs/, expected/)

Evaluates the ONNX graph in numpy at float64 with the weights it holds
(the ops of the feed-forward CNN examples: Transpose, Conv, MaxPool, Relu,
Flatten, MatMul, Add, Identity, Softmax) and prints the largest relative
error of onnxruntime's and of netc's (float32) outputs against it.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def windows(x, kh, kw, sh, sw):
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3])
    )


def same_pads(x, k, st):
    h, w = x.shape[2:]
    ph = max((-(-h // st[0]) - 1) * st[0] + k[0] - h, 0)
    pw = max((-(-w // st[1]) - 1) * st[1] + k[1] - w, 0)
    return [ph // 2, pw // 2, ph - ph // 2, pw - pw // 2]


def evaluate(graph, vals):
    for n in graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        ins = [vals[i] for i in n.input if i]
        op = n.op_type
        if op == "Transpose":
            y = np.transpose(ins[0], a["perm"])
        elif op in ("Conv", "MaxPool"):
            x = ins[0]
            k, st = a["kernel_shape"], a.get("strides", [1, 1])
            pads = same_pads(x, k, st) if "auto_pad" in a else a.get("pads", [0, 0, 0, 0])
            fill = 0.0 if op == "Conv" else -np.inf
            x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
            xw = windows(np.ascontiguousarray(x), k[0], k[1], st[0], st[1])
            if op == "MaxPool":
                y = xw.max(axis=(4, 5))
            else:
                y = np.einsum("nchwij,fcij->nfhw", xw, ins[1], optimize=True)
                if len(ins) > 2:
                    y = y + ins[2][None, :, None, None]
        elif op == "Relu":
            y = np.maximum(ins[0], 0)
        elif op == "Flatten":
            y = ins[0].reshape(ins[0].shape[0], -1)
        elif op == "MatMul":
            y = ins[0] @ ins[1]
        elif op == "Add":
            y = ins[0] + ins[1]
        elif op == "Identity":
            y = ins[0]
        elif op == "Softmax":
            e = np.exp(ins[0] - ins[0].max(-1, keepdims=True))
            y = e / e.sum(-1, keepdims=True)
        else:
            raise SystemExit(f"reference64.py does not evaluate {op}")
        vals[n.output[0]] = y


def main():
    case = sys.argv[1]
    model = onnx.load(f"{case}/model.onnx")
    g = model.graph
    vals = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in g.initializer}
    feeds = {i.name: np.load(f"{case}/inputs/{i.name}.npy") for i in g.input}
    vals.update({k: v.astype(np.float64) for k, v in feeds.items()})
    evaluate(g, vals)
    session = ort.InferenceSession(f"{case}/model.onnx", providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    for o, y in zip(g.output, got):
        ref = vals[o.name]
        netc = np.load(f"{case}/expected/{o.name}.npy").astype(np.float64)
        for who, v in (("onnxruntime", y.astype(np.float64)), ("netc", netc)):
            rel = np.max(np.abs(v - ref) / np.maximum(np.abs(ref), 1e-30))
            print(f"{o.name}: {who} max rel {rel:.2e} against float64")


if __name__ == "__main__":
    main()
