#!/usr/bin/python3
"""Writes tests/fuzz/seeds/<target>/: tiny valid inputs of every form each parser reads, so
fuzzing starts from files that get deep into the parser (the fixtures add larger ones; see
run.sh). Deterministic; Debian's python3 with numpy and PIL:
    /usr/bin/python3 tests/fuzz/gen_seeds.py
"""
import gzip
import io
import json
import os
import shutil
import struct

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
rng = np.random.default_rng(0)


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def tiny_vit(dim=8, heads=2, patch=4, img=8, chans=1, classes=3, hidden=16):
    f = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3
    t = {"patch_embed.proj.weight": f(dim, chans, patch, patch), "patch_embed.proj.bias": f(dim),
         "cls_token": f(1, 1, dim), "pos_embed": f(1, (img // patch) ** 2 + 1, dim),
         "norm.weight": f(dim), "norm.bias": f(dim), "head.weight": f(classes, dim), "head.bias": f(classes)}
    b = "blocks.0."
    t.update({b + "norm1.weight": f(dim), b + "norm1.bias": f(dim), b + "attn.qkv.weight": f(3 * dim, dim),
              b + "attn.qkv.bias": f(3 * dim), b + "attn.proj.weight": f(dim, dim), b + "attn.proj.bias": f(dim),
              b + "norm2.weight": f(dim), b + "norm2.bias": f(dim), b + "mlp.fc1.weight": f(hidden, dim),
              b + "mlp.fc1.bias": f(hidden), b + "mlp.fc2.weight": f(dim, hidden), b + "mlp.fc2.bias": f(dim)})
    return t


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    vit = tiny_vit()
    f32 = {k: ("F32", v) for k, v in vit.items()}
    f16 = {k: ("F16", v.astype(np.float16)) for k, v in vit.items()}
    bf16 = {k: ("BF16", (v.view(np.uint32) >> 16).astype(np.uint16)) for k, v in vit.items()}
    config = {"num_heads": 2, "id2label": {"0": "a", "1": "b", "2": "c"}}
    shiftadd_meta = {"format": "shiftadd", "format_version": "1", "architecture": "vit",
                     "config": json.dumps(config), "layers": "{}"}
    hf = {}
    for k, (d, v) in f32.items():
        k = k.replace("blocks.0.", "vit.encoder.layer.0.")
        if k.endswith("attn.qkv.weight") or k.endswith("attn.qkv.bias"):
            kind = k.rsplit(".", 1)[1]
            for i, part in enumerate(("query", "key", "value")):
                hf["vit.encoder.layer.0.attention.attention.%s.%s" % (part, kind)] = (d, np.split(v, 3)[i])
            continue
        hf[k] = (d, v)
    hf = {k.replace("patch_embed.proj", "vit.embeddings.patch_embeddings.projection")
          .replace("cls_token", "vit.embeddings.cls_token").replace("pos_embed", "vit.embeddings.position_embeddings"): v
          for k, v in hf.items()}
    for target in ("safetensors", "meta"):
        put(target, "vit_f32.safetensors", safetensors(f32))
        put(target, "vit_f16.safetensors", safetensors(f16))
        put(target, "vit_bf16_shiftadd.safetensors", safetensors(bf16, shiftadd_meta))
        put(target, "vit_hf_names.safetensors", safetensors(hf))

    def npy(arr, version=None):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, version=version)
        return buf.getvalue()
    put("npy", "f4.npy", npy(rng.standard_normal((2, 1, 4, 4)).astype(np.float32)))
    put("npy", "f2.npy", npy(np.arange(6, dtype=np.float16).reshape(2, 3)))
    put("npy", "i8.npy", npy(np.arange(3, dtype=np.int64)))
    put("npy", "u1_v2.npy", npy(np.arange(4, dtype=np.uint8), version=(2, 0)))
    put("npy", "scalar.npy", npy(np.array(1.5, dtype=np.float32)))
    put("npy", "fortran.npy", npy(np.asfortranarray(np.ones((2, 2), np.float32))))

    rgb = (rng.random((9, 11, 3)) * 255).astype(np.uint8)
    gray = rgb[..., 0]
    def save(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()
    put("image", "rgb.jpg", save(Image.fromarray(rgb), "JPEG", quality=80))
    put("image", "gray.jpg", save(Image.fromarray(gray), "JPEG"))
    put("image", "progressive.jpg", save(Image.fromarray(rgb), "JPEG", progressive=True))
    put("image", "subsampled.jpg", save(Image.fromarray(rgb), "JPEG", subsampling=2, restart_marker_rows=1))
    put("image", "rgb.png", save(Image.fromarray(rgb), "PNG"))
    put("image", "gray.png", save(Image.fromarray(gray), "PNG"))
    put("image", "rgba.png", save(Image.fromarray(np.dstack([rgb, gray])), "PNG"))
    put("image", "palette.png", save(Image.fromarray(rgb).quantize(8), "PNG", transparency=0))
    put("image", "gray1.png", save(Image.fromarray(gray > 128), "PNG"))
    put("image", "gray16.png", save(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"))
    put("image", "rgb.bmp", save(Image.fromarray(rgb), "BMP"))
    put("image", "palette.bmp", save(Image.fromarray(rgb).quantize(8), "BMP"))
    put("image", "gray.bmp", save(Image.fromarray(gray), "BMP"))

    def idx(arr):
        return bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    images = (rng.random((3, 4, 4)) * 255).astype(np.uint8)
    put("idx", "images-idx3-ubyte", idx(images))
    put("idx", "images-idx3-ubyte.gz", gzip.compress(idx(images), mtime=0))
    put("idx", "rgb-images-idx3-ubyte", idx((rng.random((2, 3, 3, 3)) * 255).astype(np.uint8)))
    put("idx", "labels-idx1-ubyte.gz", gzip.compress(idx(np.array([1, 2, 0], np.uint8)), mtime=0))


if __name__ == "__main__":
    main()
