"""The Python API over the bundled model: runs, classify, preprocess, errors, threads."""
import json
import os
import re
import threading
import time

import numpy as np
import pytest

from conftest import BUNDLED, FIXTURES, samples


def true_label(path):
    # Sample files are named NNNN_<class>.png; class folders compare letters and digits only.
    return re.sub(r"^\d+_", "", os.path.splitext(os.path.basename(path))[0])


def squash(s):
    return re.sub(r"[^a-z0-9]", "", s.lower())


def test_version_and_bundled_default(shiftadd):
    assert shiftadd.version() == shiftadd.__version__
    m = shiftadd.Model()  # the bundled model
    assert os.path.samefile(os.path.dirname(m.path), shiftadd.default_model_path())
    assert m.num_classes == 10 and len(m.labels) == 10


def test_classify_bundled_samples(bundled):
    s = bundled.session(threads=2)
    files = samples()
    preds = s.classify(files, top_k=3)
    assert len(preds) == len(files)
    hits = sum(squash(p[0].label) == squash(true_label(f)) for f, p in zip(files, preds))
    assert hits >= len(files) - 1
    for p in preds:
        assert len(p) == 3 and p[0].probability >= p[1].probability >= p[2].probability
    one = s.classify(files[0], top_k=1)  # a single image gives one list
    assert one[0].index == preds[0][0].index


def test_run_matches_classify_and_reads_in_place(bundled):
    s = bundled.session(threads=1)
    x = np.stack([bundled.preprocess(f) for f in samples()[:4]])
    assert x.dtype == np.float32 and x.shape == (4, *bundled.input_shape)
    logits = s.run(x)
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    np.testing.assert_array_equal(s.run(x.astype(np.float64)), logits)  # converted, same values
    # A non-contiguous view is converted too; the result is the same.
    big = np.zeros((4, *bundled.input_shape[:2], bundled.input_shape[2] * 2), np.float32)
    big[..., ::2] = x
    np.testing.assert_array_equal(s.run(big[..., ::2]), logits)


def test_preprocess_pil_array_and_file_agree(bundled):
    from PIL import Image

    f = samples()[0]
    a = bundled.preprocess(f)
    img = Image.open(f)
    np.testing.assert_array_equal(bundled.preprocess(img), a)
    np.testing.assert_array_equal(bundled.preprocess(np.asarray(img.convert("L"))), a)
    np.testing.assert_array_equal(bundled.preprocess(img.convert("RGBA")), bundled.preprocess(img.convert("RGB")))
    with pytest.raises(Exception, match="uint8"):
        bundled.preprocess(np.zeros((8, 8), np.float32))


def test_errors_are_engine_messages(shiftadd, bundled, tmp_path):
    with pytest.raises(shiftadd.Error, match="no such file"):
        shiftadd.Model(tmp_path / "missing")
    s = bundled.session()
    with pytest.raises(shiftadd.Error, match=r"expected \(B, 1, 28, 28\)"):
        s.run(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(shiftadd.Error, match=r"B >= 1"):
        s.run(np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(shiftadd.Error, match="top_k must be an integer >= 1"):
        s.classify(samples()[0], top_k=0)
    with pytest.raises(shiftadd.Error, match="top_k must be an integer >= 1"):
        s.classify(samples()[0], top_k=-1)
    with pytest.raises(shiftadd.Error, match="cannot decode image"):
        s.classify(str(FIXTURES / "idx" / "README.md"))
    with pytest.raises(shiftadd.Error, match="device='gpu'"):
        bundled.session(device="gpu")
    with pytest.raises(shiftadd.Error, match="mode='quick'"):
        bundled.session(mode="quick")
    with pytest.raises(shiftadd.Error, match="--device cuda"):
        bundled.session(device="cuda")  # no GPU here (or no CUDA module): a clear error, not a crash


def test_inspect_and_profile(bundled):
    info = bundled.inspect()
    assert info["architecture"] == "vit" and info["num_classes"] == 10
    assert info["labels"] == bundled.labels
    assert [l["name"] for l in info["layers"]][-1] == "head"
    p = bundled.profile(batch=2, runs=2, measure_energy=False, threads=1)
    assert p["batch"] == 2 and len(p["layers"]) == len(info["layers"])
    assert {"name", "ms", "mults", "adds", "shifts"} <= set(p["layers"][0])


def test_eval_on_idx_fixture(shiftadd, bundled):
    r = shiftadd.eval(bundled, FIXTURES / "idx", batch=16, threads=1)
    expected = json.loads((FIXTURES / "idx" / "expected.json").read_text())
    assert r["images"] == expected.get("images", r["images"])
    assert 0 <= r["top1"] <= r["top5"] <= 1
    assert r["format"] == "idx" and r["per_class_top1"]


def test_convert_report(shiftadd, tmp_path):
    out = tmp_path / "conv.safetensors"
    rep = shiftadd.convert(BUNDLED, out, FIXTURES / "idx", calib_split="test", calib_count=16, threads=1)
    assert out.exists() and rep["calib_images"] == 16
    assert 0 <= rep["top1_agreement"] <= 1 and isinstance(rep["warnings"], list)
    with pytest.raises(shiftadd.Error, match="already exists"):
        shiftadd.convert(BUNDLED, out, FIXTURES / "idx", calib_split="test", calib_count=16)
    conv = shiftadd.Model(out)
    assert conv.inspect()["architecture"].startswith("shiftadd_")


def test_threads_run_in_parallel_and_agree(bundled):
    files = samples()
    x = np.stack([bundled.preprocess(f) for f in files])
    want = bundled.session(threads=1).run(x)
    results, errors = {}, []

    def worker(i, session):
        try:
            for _ in range(20):
                results.setdefault(i, []).append(session.run(x[i % len(x):][:3]))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    # One session per thread, and one session shared by several threads (runs are queued).
    shared = bundled.session(threads=1)
    threads = [threading.Thread(target=worker, args=(i, bundled.session(threads=1))) for i in range(4)]
    threads += [threading.Thread(target=worker, args=(4 + i, shared)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, outs in results.items():
        start = i % len(x)
        for o in outs:
            np.testing.assert_array_equal(o, want[start:start + 3])


def test_run_releases_the_gil(bundled):
    s = bundled.session(threads=1)
    # A batch big enough that one run takes ~0.3 s on this machine, however fast it is.
    n = 64
    t0 = time.perf_counter()
    s.run(np.zeros((n, *bundled.input_shape), np.float32))
    per_image = max((time.perf_counter() - t0) / n, 1e-6)
    x = np.zeros((min(int(0.3 / per_image) + 1, 65536), *bundled.input_shape), np.float32)
    span = {}

    def run():
        span["start"] = time.perf_counter()
        s.run(x)
        span["end"] = time.perf_counter()

    t = threading.Thread(target=run)
    ticks = []
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    inside = [v for v in ticks if span["start"] + 0.01 < v < span["end"] - 0.01]
    assert span["end"] - span["start"] > 0.05, "run too short to tell"
    assert len(inside) >= 3, "the main thread did not run while Session.run ran: the GIL was held"
