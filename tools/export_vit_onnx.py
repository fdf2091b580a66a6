#!/usr/bin/env python3
"""Export a randomly initialised timm-style ViT/DeiT to ONNX (and safetensors), for benchmarks.

Run with Debian's Python (PyTorch):
    /usr/bin/python3 tools/export_vit_onnx.py --preset deit_tiny --out /tmp/deit_tiny
writes OUT/model.onnx (opset 17, dynamic batch) and OUT/model.safetensors + config.json.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shiftadd_py.reference_vit import TimmViT  # noqa: E402
from shiftadd_py.safetensors_io import save_file  # noqa: E402

PRESETS = {  # dim, depth, heads (timm's DeiT shapes, 224x224, patch 16, 1000 classes)
    "deit_tiny": (192, 12, 3),
    "deit_small": (384, 12, 6),
    "deit_base": (768, 12, 12),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="deit_tiny")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    dim, depth, heads = PRESETS[args.preset]
    model = TimmViT(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=dim,
                    depth=depth, num_heads=heads).eval()
    for p in model.parameters():  # random but well-scaled weights
        torch.nn.init.normal_(p, std=0.02)
    os.makedirs(args.out, exist_ok=True)
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), os.path.join(args.out, "model.onnx"),
                      opset_version=args.opset, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    save_file({k: v.detach().numpy() for k, v in model.state_dict().items()},
              os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({"architecture": args.preset, "num_heads": heads, "num_classes": 1000}, f)
    print(os.path.join(args.out, "model.onnx"))


if __name__ == "__main__":
    main()
