#!/usr/bin/env python3
"""Random-weight benchmark models for scripts/device-check.sh, and PyTorch eager timings.

    gen_bench_models.py write OUT_DIR [--f32] [--onnx]
        writes the models below (safetensors, F16; --f32: F32), and with --onnx each dense model
        also as model.onnx (opset 17, dynamic batch, the same weights) for onnxruntime
    gen_bench_models.py routed OUT_DIR SHARE [--f32]
        writes only shiftadd_pvt_v2_b0_share<SHARE> and _b1_: the ShiftAdd PVTv2 models of `write`
        (same weights) with routers calibrated to send SHARE (0 to 1) of the tokens to the shift
        expert instead of half (tools/bench_shiftadd.py --shift-shares)
    gen_bench_models.py torch OUT_DIR BATCH... # PyTorch eager fp32/fp16 latency, one JSON line each

Models (224x224, 1000 classes), in the names the engine loads:
  deit_tiny / deit_small / deit_base: timm ViT (DeiT shapes: dim 192/384/768, depth 12, heads
      3/6/12, patch 16); the reference is tools/shiftadd_py/reference_vit.py (timm naming).
  pvt_v2_b0 / pvt_v2_b1: dense PVTv2 (upstream names, tests/reference/pvt_v2.py).
  shiftadd_pvt_v2_b0 / shiftadd_pvt_v2_b1: ShiftAddViT PVTv2 with MoE on attention and MLP
      (tests/reference/shiftadd_pvt.py), shift weights, KSH buffers and routers initialised and
      calibrated as tests/fixtures/gen_shiftadd_goldens.py does (each expert gets tokens).
Weights are random: only latency is measured with them.
"""
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
sys.path.insert(0, os.path.join(REPO, "tools"))
from gen_goldens import nontrivial_init  # noqa: E402
from pvt_v2 import PyramidVisionTransformerV2  # noqa: E402
from shiftadd_py.reference_vit import TimmViT  # noqa: E402
from shiftadd_py.safetensors_io import save_file  # noqa: E402

DEIT = {"deit_tiny": (192, 3), "deit_small": (384, 6), "deit_base": (768, 12)}
PVT = {"b0": [32, 64, 160, 256], "b1": [64, 128, 320, 512]}
PVT_HEADS, PVT_MLP, PVT_DEPTHS = [1, 2, 5, 8], [8, 8, 4, 4], [2, 2, 2, 2]


def deit(name):
    dim, heads = DEIT[name]
    return TimmViT(224, 16, 3, 1000, dim, 12, heads, 4.0)


def pvt(variant):
    return PyramidVisionTransformerV2(PVT[variant], PVT_HEADS, PVT_MLP, PVT_DEPTHS, num_classes=1000)


def save(model, d, config, dtype=np.float16, onnx=False):
    os.makedirs(d, exist_ok=True)
    with torch.no_grad():  # round the weights to the stored dtype, so ONNX gets exactly them
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.as_tensor(v.numpy().astype(dtype).astype(np.float32)))
    sd = {k: v.detach().contiguous().numpy().astype(dtype) for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f)
    if onnx:
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), os.path.join(d, "model.onnx"), opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def write(out, dtype=np.float16, onnx=False, shift_share=None):
    """Every model below into out. shift_share (routed): only the ShiftAdd PVTv2 models, as
    shiftadd_pvt_v2_<v>_share<P>, the same weights with routers sending that share of the
    calibration tokens to the shift expert (the generator replays every model to get there)."""
    from gen_shiftadd_goldens import calibrate, init_shiftadd  # noqa: E402
    from shiftadd_pvt import ShiftAddPVTv2  # noqa: E402
    gen = torch.Generator().manual_seed(0)
    every = shift_share is None
    for name, (dim, heads) in DEIT.items():
        m = nontrivial_init(deit(name).eval(), gen)
        if every:
            save(m, os.path.join(out, name), {"num_heads": heads, "num_classes": 1000, "img_size": 224}, dtype, onnx)
            print("wrote", name, flush=True)
    for v in PVT:
        m = nontrivial_init(pvt(v).eval(), gen)
        if every:
            save(m, os.path.join(out, "pvt_v2_" + v),
                 {"architecture": "pvt_v2_" + v, "img_size": 224, "num_classes": 1000}, dtype, onnx)
        m = ShiftAddPVTv2(PVT[v], PVT_HEADS, PVT_MLP, PVT_DEPTHS, kind="moe", num_classes=1000).eval()
        nontrivial_init(m, gen)
        init_shiftadd(m, gen)
        calibrate(m, torch.randn(2, 3, 224, 224, generator=gen), 0.5 if every else shift_share)
        name = "shiftadd_pvt_v2_" + v + ("" if every else "_share%g" % shift_share)
        save(m, os.path.join(out, name), {"architecture": "shiftadd_pvt_v2_" + v, "img_size": 224, "num_classes": 1000},
             dtype)
        print("wrote", name if not every else "pvt_v2_%s and %s" % (v, name), flush=True)


def time_model(model, batch, dtype, runs=20, warmup=5):
    """Median ms of one forward with the engine's contract: fp32 input in (pageable) host memory,
    copied to the GPU, logits copied back (Session::run does the same)."""
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x.to("cuda").to(dtype)).float().cpu()
        torch.cuda.synchronize()
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x.to("cuda").to(dtype)).float().cpu()
            ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def torch_bench(out, batches):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for name in list(DEIT) + ["pvt_v2_" + v for v in PVT]:
        m = deit(name) if name in DEIT else pvt(name[len("pvt_v2_"):])
        m = m.eval().cuda()
        for dtype, tag in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            mm = m.to(dtype)
            for b in batches:
                print(json.dumps({"model": name, "batch": b, "dtype": tag, "median_ms": time_model(mm, b, dtype)}),
                      flush=True)
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "write":
        write(sys.argv[2], np.float32 if "--f32" in sys.argv[3:] else np.float16, "--onnx" in sys.argv[3:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "routed":
        share = float(sys.argv[3])
        if not 0.0 <= share <= 1.0:
            sys.exit("routed: SHARE is a fraction of the tokens, 0 to 1 (got %s)" % sys.argv[3])
        write(sys.argv[2], np.float32 if "--f32" in sys.argv[4:] else np.float16, shift_share=share)
    elif len(sys.argv) >= 4 and sys.argv[1] == "torch":
        torch_bench(sys.argv[2], [int(b) for b in sys.argv[3:]])
    else:
        sys.exit(__doc__)
