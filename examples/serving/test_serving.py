"""examples/serving end to end: Triton (PyTriton) on 127.0.0.1, concurrent HTTP clients
(tritonclient), logits checked against a direct Session.run, then the server is stopped."""
import os
import socket
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="PyTriton (nvidia-pytriton) is not installed")
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")

sys.path.insert(0, os.path.dirname(__file__))
import client  # noqa: E402
import server  # noqa: E402

import shiftadd  # noqa: E402


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def triton():
    h, g, m = free_ports(3)
    t = server.start(None, host="127.0.0.1", http_port=h, grpc_port=g, metrics_port=m, instances=2, threads=1,
                     max_batch=16, delay_us=2000)
    try:
        yield f"127.0.0.1:{h}"
    finally:
        t.stop()


def test_concurrent_requests_match_direct_run(triton):
    model = shiftadd.Model()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + i % 3, *model.input_shape)).astype(np.float32) for i in range(32)]
    want = [model.session(threads=1).run(x) for x in xs]
    got, errors = [None] * len(xs), []

    def worker(k):
        try:
            with http.InferenceServerClient(triton) as c:
                for i in range(k, len(xs), 8):
                    got[i] = client.infer(c, xs[i])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for g, w in zip(got, want):
        # Batched with other requests or not, each image's logits are its own.
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_bench_and_bad_request(triton):
    r = client.bench(triton, shiftadd.Model().input_shape, clients=2, seconds=1)
    assert r["requests"] > 0 and not r["errors"]
    with http.InferenceServerClient(triton) as c, pytest.raises(Exception, match="pixels"):
        client.infer(c, np.zeros((1, 3, 28, 28), np.float32))  # wrong channels: refused by Triton


def test_start_retries_a_lost_handshake(monkeypatch):
    # PyTriton's model load can lose the race with its proxy's handshake socket; start() then
    # starts a fresh server. Simulated here: the first run() fails with that error.
    from pytriton.triton import Triton

    real_run, calls = Triton.run, []

    def flaky_run(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("get_config_from_handshake_server: [Errno 111] Connection refused")
        return real_run(self)

    monkeypatch.setattr(Triton, "run", flaky_run)
    h, g, m = free_ports(3)
    t = server.start(None, host="127.0.0.1", http_port=h, grpc_port=g, metrics_port=m, instances=1)
    try:
        assert len(calls) == 2
        with http.InferenceServerClient(f"127.0.0.1:{h}") as c:
            assert c.is_model_ready(server.MODEL_NAME)
    finally:
        t.stop()


def test_start_does_not_retry_other_errors(monkeypatch):
    from pytriton.triton import Triton

    calls = []

    def failing_run(self):
        calls.append(1)
        raise RuntimeError("model failed for another reason")

    monkeypatch.setattr(Triton, "run", failing_run)
    h, g, m = free_ports(3)
    with pytest.raises(RuntimeError, match="another reason"):
        server.start(None, host="127.0.0.1", http_port=h, grpc_port=g, metrics_port=m, instances=1)
    assert len(calls) == 1
