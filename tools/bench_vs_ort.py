#!/usr/bin/env python3
"""Latency of shiftadd against onnxruntime on the same ONNX model, same machine, same script.

    python3 -m pip install onnxruntime numpy        # the peer (PyPI Python)
    python3 tools/bench_vs_ort.py [--preset deit_tiny] [--threads 2] [--batch 1]

Exports a random-weight DeiT-shaped model with Debian's PyTorch (/usr/bin/python3), then
alternates rounds of onnxruntime (CPU, intra-op threads = --threads, sequential execution) and
`shiftadd bench` on the same .onnx file, and prints the median latencies and their ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ort_latencies(path, batch, threads, runs, warmup):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def shiftadd_median(cli, path, batch, threads, runs, warmup):
    r = subprocess.run([cli, "bench", path, "--batch", str(batch), "--threads", str(threads),
                        "--runs", str(runs), "--warmup", str(warmup), "--json"],
                       check=True, capture_output=True, text=True)
    return json.loads(r.stdout)["median_ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deit_tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both engines")
    ap.add_argument("--cli", default=os.path.join(REPO, "build", "shiftadd"))
    ap.add_argument("--model", help="an existing .onnx file instead of exporting one")
    args = ap.parse_args()

    path = args.model
    if not path:
        out = os.path.join(tempfile.gettempdir(), "shiftadd_bench_" + args.preset)
        path = os.path.join(out, "model.onnx")
        if not os.path.exists(path):
            subprocess.run(["/usr/bin/python3", os.path.join(REPO, "tools", "export_vit_onnx.py"),
                            "--preset", args.preset, "--out", out], check=True)
    ort_med, sa_med = [], []
    for _ in range(args.rounds):
        ort_med.append(statistics.median(ort_latencies(path, args.batch, args.threads, args.runs, 5)))
        sa_med.append(shiftadd_median(args.cli, path, args.batch, args.threads, args.runs, 5))
    o, s = min(ort_med), min(sa_med)
    print(f"model {args.preset} ({path}), batch {args.batch}, threads {args.threads}, "
          f"onnxruntime {ort.__version__}")
    print("| engine | median ms (best of %d rounds) | all rounds |" % args.rounds)
    print("| --- | --- | --- |")
    print(f"| onnxruntime | {o:.2f} | {', '.join(f'{v:.2f}' for v in ort_med)} |")
    print(f"| shiftadd | {s:.2f} | {', '.join(f'{v:.2f}' for v in sa_med)} |")
    print(f"shiftadd / onnxruntime = {s / o:.2f}x")


if __name__ == "__main__":
    main()
