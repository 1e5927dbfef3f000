#!/usr/bin/env python3
"""Checks netc's ONNX exports against netc's own outputs.

Usage: check.py CASE_DIR...

Each CASE_DIR holds what tests/onnx_export.rs wrote for one model:
  model.onnx          `netc export` of the model with some weights
  inputs/NAME.npy     one array per model input, as given to `netc run`
                      (token ids as float32, as netc reads them)
  expected/NAME.npy   `netc run`'s output for each model output

For every case: onnx.checker.check_model(full_check=True) (which runs
ONNX's shape inference too), then onnxruntime (CPU) on the inputs (cast to
the type the ONNX input declares, int64 for token ids), and every output
compared with netc's: |onnx - netc| <= RTOL * |netc| + ATOL elementwise,
RTOL = 1e-5 relative with an absolute floor ATOL = 1e-7 for values near
zero (softmax probabilities of 1e-9 differ by more than 1e-5 of themselves
between any two float32 implementations). Prints one line per case with the
largest relative error (over elements with |netc| >= 1e-3) and the largest
absolute error, and exits 1 if any case fails.

Needs the PyPI packages onnx, onnxruntime and numpy (.ci/run installs them).
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

RTOL = 1e-5
ATOL = 1e-7
# The two ImageNet networks with random weights sum up to 25,088 products
# per output through deep stacks of layers; they pass at RTOL since netc
# sums reductions in blocks of 256 (codegen/cpu/contraction/blocking.rs).
# Against a float64 evaluation of the same graph (tests/onnx/reference64.py)
# netc is then within 6.6e-6 (vgg16) and 6.0e-6 (alexnet), onnxruntime
# within 6.9e-6 and 4.5e-6; before blocking netc was within 3.2e-5 and
# 2.1e-5, and these two needed a looser bound.
TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def check(case):
    name = os.path.basename(os.path.normpath(case))
    path = os.path.join(case, "model.onnx")
    # Pass the path: a model over 2 GiB could not be checked in memory.
    onnx.checker.check_model(path, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        x = np.load(os.path.join(case, "inputs", i.name + ".npy"))
        dtype = TYPES[i.type]
        if dtype is np.int64:
            assert np.all(x == np.round(x)), f"{name}: token ids are not whole numbers"
        feeds[i.name] = x.astype(dtype)
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, feeds)
    ok = True
    report = []
    for n, y in zip(names, got):
        want = np.load(os.path.join(case, "expected", n + ".npy"))
        if y.shape != want.shape:
            report.append(f"{n}: shape {y.shape} but netc gave {want.shape}")
            ok = False
            continue
        diff = np.abs(y.astype(np.float64) - want.astype(np.float64))
        big = np.abs(want) >= 1e-3
        rel = float(np.max(diff[big] / np.abs(want[big]))) if big.any() else 0.0
        bad = diff > RTOL * np.abs(want) + ATOL
        verdict = "ok"
        if bad.any():
            ok = False
            k = np.unravel_index(np.argmax(diff - RTOL * np.abs(want)), diff.shape)
            verdict = f"FAILED at {tuple(int(i) for i in k)}: onnx {y[k]} netc {want[k]}"
        report.append(
            f"{n} {list(want.shape)}: max rel {rel:.2e}, max abs {float(diff.max()):.2e} {verdict}"
        )
    print(f"{'ok  ' if ok else 'FAIL'} {name}: " + "; ".join(report), flush=True)
    return ok


def main():
    cases = sys.argv[1:]
    if not cases:
        print("usage: check.py CASE_DIR...", file=sys.stderr)
        return 2
    failed = []
    for case in cases:
        try:
            if not check(case):
                failed.append(case)
        except Exception as e:  # one line per broken case, then go on
            print(f"FAIL {os.path.basename(os.path.normpath(case))}: {type(e).__name__}: {e}")
            failed.append(case)
    print(f"{len(cases) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
