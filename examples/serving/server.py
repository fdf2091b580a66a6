#!/usr/bin/env python3
"""Serve a shiftadd model on Triton Inference Server through PyTriton (docs/serving.md).

    python examples/serving/server.py --model models/fashion_vit --instances 2 --threads 1

Triton receives HTTP (port 8000) and gRPC (8001) requests, queues them, and its dynamic batcher
merges waiting requests into one batch (up to --max-batch, waiting at most --delay-us for
more); each model instance holds its own shiftadd Session, and instances run in parallel.
Input "pixels": float32 (C, H, W) preprocessed (shiftadd.Model.preprocess); output "logits":
float32 (classes,). Metrics (Prometheus) on port 8002.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig

import numpy as np

import shiftadd

MODEL_NAME = "shiftadd"
START_ATTEMPTS = 3  # see start(): PyTriton's handshake race


def _python_library_path() -> None:
    """Triton's Python backend stub links libpython3.X.so.1.0. Where the running interpreter has
    its own (pyenv, conda), put it first on the library path of the server PyTriton starts, or
    the stub mixes another libpython with this interpreter's standard library and fails."""
    libdir, lib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and lib and os.path.exists(os.path.join(libdir, lib)):
        paths = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in paths.split(":"):
            os.environ["LD_LIBRARY_PATH"] = libdir + (":" + paths if paths else "")


def make_infer_funcs(model: shiftadd.Model, instances: int, threads: int, device: str, mode: str):
    """One inference function per model instance, each over its own Session."""
    from pytriton.decorators import batch

    def make(session):
        @batch
        def infer(pixels: np.ndarray):
            return {"logits": session.run(pixels)}

        return infer

    return [make(model.session(threads=threads, device=device, mode=mode)) for _ in range(instances)]


def start(model_path: str | None = None, *, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, instances: int = 2, threads: int = 1, device: str = "cpu", mode: str = "exact",
          max_batch: int = 32, delay_us: int = 500, log_verbose: int = 0):
    """Starts Triton with the model bound and returns the running pytriton.triton.Triton (call
    .stop() on it). The model is loaded once and shared by the instances' sessions."""
    _python_library_path()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    model = shiftadd.Model(model_path)
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          metrics_address=host, metrics_port=metrics_port, log_verbose=log_verbose)
    for attempt in range(1, START_ATTEMPTS + 1):
        triton = Triton(config=config)
        try:
            triton.bind(
                model_name=MODEL_NAME,
                infer_func=make_infer_funcs(model, instances, threads, device, mode),
                inputs=[Tensor(name="pixels", dtype=np.float32, shape=model.input_shape)],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(model.num_classes,))],
                config=ModelConfig(max_batch_size=max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us)),
                strict=True,
            )
            triton.run()
            return triton
        except Exception as e:
            triton.stop()
            # PyTriton's model load can lose the race between Triton's Python stub and its own
            # proxy's handshake socket ("Connection refused" in get_config_from_handshake_server):
            # a fresh server then loads normally. Any other error, or the last attempt, is final.
            if attempt == START_ATTEMPTS or "handshake" not in str(e):
                raise
            print(f"server: model load lost PyTriton's handshake race (attempt {attempt} of {START_ATTEMPTS}); "
                  "starting again", file=sys.stderr)
        except BaseException:
            triton.stop()
            raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model file or directory (default: the bundled Fashion-MNIST ViT)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--instances", type=int, default=2, help="model instances (sessions) running in parallel")
    p.add_argument("--threads", type=int, default=1, help="engine threads per instance (0: every core)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--mode", default="exact", choices=["exact", "fast"], help="shift-layer arithmetic")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch the dynamic batcher forms")
    p.add_argument("--delay-us", type=int, default=500,
                   help="how long the batcher waits for more requests to fill a batch (microseconds)")
    a = p.parse_args(argv)
    for name in ("instances", "max_batch"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        triton = start(a.model, host=a.host, http_port=a.http_port, grpc_port=a.grpc_port,
                       metrics_port=a.metrics_port, instances=a.instances, threads=a.threads, device=a.device,
                       mode=a.mode, max_batch=a.max_batch, delay_us=a.delay_us)
    except shiftadd.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"serving model '{MODEL_NAME}' on http://{a.host}:{a.http_port} (gRPC {a.grpc_port}); Ctrl-C stops",
          flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
