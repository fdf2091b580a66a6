#!/usr/bin/env python3
"""Train a small timm-style Vision Transformer on Fashion-MNIST (CPU, PyTorch).

Data: Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/*.gz, IDX format).
Outputs (default --out models/fashion_vit):
  model.safetensors   fp32 weights with timm parameter names
  config.json         timm-hub style config (+ normalization mean/std, measured test top-1)
  samples/*.png       one correctly classified test image per class (8-bit grayscale PNG)
  samples/expected.json

The architecture is timm's VisionTransformer (tools/shiftadd_py/reference_vit.py: pre-norm blocks,
LayerNorm eps 1e-6, exact erf GELU, fused qkv Linear, class token, learned absolute position
embedding, classifier on the class token after the final norm), so the saved weights load into the
engine's timm path.
"""
import argparse
import gzip
import json
import math
import os
import random
import struct
import sys
import time
import zlib

# The 2 cores are shared with other jobs: with OpenMP's default (active, spinning) wait policy a
# 2-thread torch run slows down ~10x whenever another process holds one core, so wait passively.
# Must be set before torch (libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shiftadd_py.reference_vit import TimmViT  # noqa: E402
from shiftadd_py.safetensors_io import save_file  # noqa: E402

LABEL_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DATA_DIR = "/usr/share/datasets/fashion-mnist"


# ----------------------------------------------------------------------------- data
def read_idx(path):
    """Parse a (gzipped) IDX file into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError("%s: unsupported IDX header" % path)
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError("%s: size mismatch" % path)
    return arr.reshape(dims)


def load_split(split, data_dir=DATA_DIR):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % prefix))
    y = read_idx(os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % prefix))
    return x, y.astype(np.int64)


# ----------------------------------------------------------------------------- model (timm naming)
class VisionTransformer(TimmViT):
    """reference_vit.TimmViT with this script's defaults and a timm-like weight init."""

    def __init__(self, img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64,
                 depth=4, num_heads=4, mlp_ratio=2.0, eps=1e-6):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, eps=eps)
        self._init()

    def _init(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # patch embed like a linear layer (lecun-ish)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)


# ----------------------------------------------------------------------------- PNG writer
def write_png_gray8(path, img):
    """Write a 2-D uint8 array as an 8-bit grayscale PNG (no external dependencies)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))  # filter type 0 per row

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


# ----------------------------------------------------------------------------- training
def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augment(xb, gen, pad):
    """xb: (B,1,28,28) float in [0,1]. Random horizontal flip + random crop with zero padding."""
    B, _, H, W = xb.shape
    flip = torch.rand(B, generator=gen) < 0.5
    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    if pad > 0:
        xp = F.pad(xb, (pad, pad, pad, pad))  # zero = black background
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
        ys = (dy[:, None] + torch.arange(H)[None, :])  # B,H
        xs = (dx[:, None] + torch.arange(W)[None, :])  # B,W
        bi = torch.arange(B)[:, None, None]
        xb = xp[:, 0][bi, ys[:, :, None], xs[:, None, :]].unsqueeze(1)
    return xb


@torch.no_grad()
def evaluate(model, x, y, mean, std, bs=1000):
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], bs):
        xb = (x[i:i + bs] - mean) / std
        correct += (model(xb).argmax(-1) == y[i:i + bs]).sum().item()
    return correct / x.shape[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/fashion_vit")
    ap.add_argument("--patch", type=int, default=7)
    ap.add_argument("--dim", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=0.3, help="warmup epochs")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--pad", type=int, default=0, help="random-crop padding (0 = off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench-steps", type=int, default=0,
                    help="only time this many training steps, print the epoch estimate and exit")
    ap.add_argument("--log-every", type=int, default=0, help="print running loss every N steps")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also report test accuracy every N epochs (monitoring only; 0 = only at the end)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    t_start = time.time()

    xtr_u8, ytr_np = load_split("train")
    xte_u8, yte_np = load_split("test")
    xtr = torch.from_numpy(xtr_u8.astype(np.float32) / 255.0).unsqueeze(1)
    xte = torch.from_numpy(xte_u8.astype(np.float32) / 255.0).unsqueeze(1)
    ytr = torch.from_numpy(ytr_np)
    yte = torch.from_numpy(yte_np)
    # normalization statistics of the train split only
    mean = float(xtr.double().mean())
    std = float(xtr.double().std())
    print("train %s test %s  mean %.6f std %.6f" % (tuple(xtr.shape), tuple(xte.shape), mean, std), flush=True)

    model = VisionTransformer(img_size=28, patch_size=args.patch, in_chans=1, num_classes=10,
                              embed_dim=args.dim, depth=args.depth, num_heads=args.heads,
                              mlp_ratio=args.mlp_ratio, eps=1e-6)
    nparam = sum(p.numel() for p in model.parameters())
    print("model: patch %d dim %d depth %d heads %d mlp %.1f  params %d" %
          (args.patch, args.dim, args.depth, args.heads, args.mlp_ratio, nparam), flush=True)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or n in ("cls_token", "pos_embed") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = xtr.shape[0] // args.batch  # drop last partial batch
    total = steps_per_epoch * args.epochs
    warm = int(args.warmup * steps_per_epoch)

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(xtr.shape[0], generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            xb = augment(xtr[idx], gen, args.pad)
            xb = (xb - mean) / std
            yb = ytr[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            loss_sum += loss.item() * yb.shape[0]
            correct += (logits.argmax(-1) == yb).sum().item()
            seen += yb.shape[0]
            if args.log_every and (i + 1) % args.log_every == 0:
                print("  step %d/%d  loss %.4f  acc %.4f  %.1fs" % (i + 1, steps_per_epoch, loss_sum / seen,
                                                                  correct / seen, time.time() - t0), flush=True)
            if args.bench_steps and i + 1 == args.bench_steps:
                dt = time.time() - t0
                print("bench: %d steps in %.2fs -> %.1fs/epoch (%d steps/epoch)" %
                      (args.bench_steps, dt, dt / args.bench_steps * steps_per_epoch, steps_per_epoch))
                return
        msg = "epoch %2d/%d  loss %.4f  train_acc %.4f  lr %.2e  %.1fs" % (
            epoch + 1, args.epochs, loss_sum / seen, correct / seen, lr_at(step - 1), time.time() - t0)
        if args.eval_every and (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:
            msg += "  test_acc %.4f" % evaluate(model, xte, yte, mean, std)
        print(msg, flush=True)

    train_time = time.time() - t_start
    test_top1 = evaluate(model, xte, yte, mean, std)
    print("final test top-1 %.4f  (training+eval time %.1fs)" % (test_top1, train_time), flush=True)

    # ------------------------------------------------------------------ outputs
    os.makedirs(args.out, exist_ok=True)
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(args.out, "model.safetensors"),
              metadata={"format": "pt", "architecture": "vit"})
    config = {
        "architecture": "vit_fashion_mnist",
        "num_classes": 10,
        "num_features": args.dim,
        "embed_dim": args.dim,
        "num_heads": args.heads,
        "depth": args.depth,
        "mlp_ratio": args.mlp_ratio,
        "patch_size": args.patch,
        "img_size": 28,
        "in_chans": 1,
        "global_pool": "token",
        "class_token": True,
        "layer_norm_eps": 1e-6,
        "label_names": LABEL_NAMES,
        "id2label": {str(i): n for i, n in enumerate(LABEL_NAMES)},
        "pretrained_cfg": {
            "input_size": [1, 28, 28],
            "mean": [mean],
            "std": [std],
            "crop_pct": 1.0,
            "interpolation": "bicubic",
            "num_classes": 10,
        },
        "test_top1": round(test_top1, 6),
        "training": {
            "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "weight_decay": args.wd,
            "warmup_epochs": args.warmup, "label_smoothing": args.label_smoothing,
            "crop_pad": args.pad, "hflip": True, "seed": args.seed, "threads": args.threads,
            "seconds": round(train_time, 1), "torch": torch.__version__,
        },
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    # samples: first correctly classified test image of each class
    sdir = os.path.join(args.out, "samples")
    os.makedirs(sdir, exist_ok=True)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model((xte - mean) / std), dim=-1)
    pred = probs.argmax(-1)
    expected = {}
    for c in range(10):
        cand = torch.nonzero((yte == c) & (pred == c)).flatten()
        idx = int(cand[0])
        slug = LABEL_NAMES[c].lower().replace("/", "_").replace("-", "").replace(" ", "_")
        fname = "%04d_%s.png" % (idx, slug)
        write_png_gray8(os.path.join(sdir, fname), xte_u8[idx])
        expected[fname] = {
            "test_index": idx,
            "label": LABEL_NAMES[c],
            "label_id": c,
            "pred": LABEL_NAMES[int(pred[idx])],
            "pred_id": int(pred[idx]),
            "prob": round(float(probs[idx, pred[idx]]), 6),
        }
    with open(os.path.join(sdir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")
    print("wrote %s (total %.1fs)" % (args.out, time.time() - t_start), flush=True)


if __name__ == "__main__":
    main()
