#!/usr/bin/env python3
"""Export an upstream ShiftAddViT checkpoint (torch.save) to safetensors for shiftadd.

    /usr/bin/python3 tools/export_upstream.py checkpoint.pth model.safetensors [--force]

The checkpoint is what the upstream training code saves: a dict with a "model" entry (plus
"optimizer", "lr_scheduler", "epoch", ...), or a bare state_dict. Every tensor of the state dict
(parameters and buffers, e.g. KSH `anchor`/`mvec`/`A` and raw `shift`/`sign`) is written under
its unchanged name and dtype; nothing is rounded, clamped or re-fitted here (the engine does
that at load). Non-tensor entries are listed and skipped. The output is written atomically
and an existing file is only replaced with --force.

Loading a pickle runs code from the file: only export checkpoints you trust.

Comparing with upstream's own forward: upstream keeps `is_trained` of its hash modules as a
plain Python attribute, so a freshly built model re-fits `anchor`, `mvec` and `A` on its first
forward (or crashes under no_grad); call `model.set_retrain_resume()` after loading the
checkpoint, and take reference logits in fp32 with TF32 off (not under autocast). Checkpoints
trained before upstream's Dec 2023 commit used a dynamic per-tensor activation quantizer that
the engine does not implement (docs/shiftadd.md).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shiftadd_py.safetensors_io import save_file  # noqa: E402


def state_dict_of(obj, path):
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and any(torch.is_tensor(v) for v in obj.values()):
        return obj
    sys.exit(f"error: {path}: not a checkpoint: expected a dict with 'model' or a state_dict")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="upstream torch.save file (.pth)")
    ap.add_argument("output", help="output .safetensors file")
    ap.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    args = ap.parse_args()
    if os.path.exists(args.output) and not args.force:
        sys.exit(f"error: {args.output}: already exists; pass --force to replace it")
    try:
        obj = torch.load(args.checkpoint, map_location="cpu")
    except Exception as e:  # a truncated or foreign file: say which and why
        sys.exit(f"error: {args.checkpoint}: cannot load: {e}")
    sd = state_dict_of(obj, args.checkpoint)
    tensors, skipped = {}, []
    for name, value in sd.items():
        name = name[len("module."):] if name.startswith("module.") else name  # DataParallel
        (tensors.__setitem__(name, value) if torch.is_tensor(value) else skipped.append(name))
    if not tensors:
        sys.exit(f"error: {args.checkpoint}: the state dict holds no tensors")
    save_file(tensors, args.output, metadata={"format": "pt", "source": "shiftaddvit-upstream"})
    print(f"wrote {len(tensors)} tensors to {args.output}" +
          (f"; skipped non-tensor entries: {', '.join(skipped)}" if skipped else ""))


if __name__ == "__main__":
    main()
