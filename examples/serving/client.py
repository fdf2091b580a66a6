#!/usr/bin/env python3
"""Client of examples/serving/server.py (Triton's HTTP protocol, tritonclient).

    python examples/serving/client.py IMAGE...                       # top-5 per image
    python examples/serving/client.py --bench --clients 8 --seconds 10   # throughput

Images are preprocessed here with the model's own pipeline (shiftadd.Model.preprocess), so the
server receives float32 (C, H, W) pixels. --bench sends batch-1 requests from --clients
concurrent clients (one connection each) for --seconds and prints images/s and latency.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np

MODEL_NAME = "shiftadd"


def infer(client, pixels: np.ndarray) -> np.ndarray:
    """Logits of a (B, C, H, W) float32 batch, as one request."""
    import tritonclient.http as http

    inp = http.InferInput("pixels", list(pixels.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(pixels, dtype=np.float32), binary_data=True)
    out = http.InferRequestedOutput("logits", binary_data=True)
    return client.infer(MODEL_NAME, [inp], outputs=[out]).as_numpy("logits")


def bench(url: str, shape: tuple, clients: int, seconds: float) -> dict:
    """Concurrent batch-1 requests for `seconds`; every client checks its replies' shape."""
    import tritonclient.http as http

    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    lat, errors = [[] for _ in range(clients)], []
    deadline = time.perf_counter() + seconds

    def run(i):
        try:
            with http.InferenceServerClient(url) as c:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    y = infer(c, x)
                    lat[i].append(time.perf_counter() - t0)
                    if y.shape[0] != 1:
                        raise RuntimeError(f"reply of shape {y.shape}")
        except Exception as e:  # noqa: BLE001 (reported)
            errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_ms = np.sort(np.concatenate([np.asarray(v) for v in lat]) * 1000) if any(lat) else np.zeros(0)
    n = int(all_ms.size)
    return {"clients": clients, "seconds": round(wall, 2), "requests": n, "errors": errors,
            "images_per_s": round(n / wall, 1),
            "latency_ms": {"p50": round(float(np.percentile(all_ms, 50)), 3) if n else None,
                           "p99": round(float(np.percentile(all_ms, 99)), 3) if n else None}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="JPEG/PNG/BMP images to classify")
    p.add_argument("--url", default="127.0.0.1:8000", help="Triton HTTP endpoint (host:port)")
    p.add_argument("--model", default=None,
                   help="the served model's files, for preprocessing and labels (default: the bundled model)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--bench", action="store_true", help="measure throughput instead of classifying")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args(argv)
    import shiftadd
    import tritonclient.http as http

    model = shiftadd.Model(a.model)
    if a.bench:
        print(json.dumps(bench(a.url, model.input_shape, a.clients, a.seconds)))
        return 0
    if not a.images:
        p.error("give IMAGE... or --bench")
    with http.InferenceServerClient(a.url) as c:
        logits = infer(c, np.stack([model.preprocess(f) for f in a.images]))
    for f, row in zip(a.images, logits):
        p_ = np.exp(row - row.max())
        p_ /= p_.sum()
        print(f)
        for k in np.argsort(-p_)[: a.top]:
            print(f"  {100 * p_[k]:6.2f}%  {model.labels[k] if k < len(model.labels) else k} ({k})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
