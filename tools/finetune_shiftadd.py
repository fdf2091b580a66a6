#!/usr/bin/python3
"""Fine-tune a converted ShiftAddViT model (docs/format.md) on Fashion-MNIST and write an
engine-ready file in the same format.

    /usr/bin/python3 tools/finetune_shiftadd.py MODEL_IN MODEL_OUT [--epochs 3] [--lr 3e-4]
        [--batch 128] [--teacher models/fashion_vit] [--threads 2] [--limit N] [--force]

The model is tools/shiftadd_py/shiftadd_vit.py (written from the spec, not from upstream code):
  * shift layers: latent float weights with a straight-through power-of-two quantizer (round(log2|w|)
    clamped to [-14, 0], sign), Q16.16 activation / bias quantization with a straight-through
    gradient, trainable per-channel scale where the file has one;
  * MoE routers: the chosen expert's output is multiplied by g / g.detach() (g = softmax gate
    probability of the chosen expert; value 1, so the forward equals inference, while the task loss
    reaches the router), plus the spec's latency-aware load-balancing loss (section 4):
    imp_e = alpha_e sum g_e(x), load_e = alpha_e sum P(e | x), L = CV^2(imp) + CV^2(load) summed
    over the MoE layers, alpha = --alpha (default (6, 4) for (dense, shift)); P(e | x) is the smooth
    top-1 probability under unit Gaussian logit noise. Loss = task + --balance-weight (0.01) * L.
  * KSH attention: anchors / mvec / A fixed (codes are not differentiable); V, dconv taps, proj and
    every other float parameter (LayerNorms, embeddings, dense experts, head) train.
  * task loss: cross entropy on the labels, or with --teacher (the dense model) (1 - kd) CE + kd
    KL(teacher || student) at temperature --temp (times temp^2).
Training uses the TRAIN split only (random horizontal flips, as the dense model was trained); the
final test top-1 printed at the end is computed by the PyTorch model in eval mode (the engine's
semantics). MODEL_OUT is written atomically and refused if it exists unless --force.
"""
import argparse
import math
import os
import sys
import time

# Passive OpenMP waiting: the cores are shared (see tools/train_fashion_vit.py). Before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shiftadd_py.shiftadd_vit import ShiftAddViT, MoELinear  # noqa: E402
from train_fashion_vit import load_split, DATA_DIR  # noqa: E402


def evaluate(model, x, y, batch=500):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
    return correct / x.shape[0]


def teacher_logits(teacher, x, batch=1000):
    teacher.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(teacher(x[i:i + batch]))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_in")
    ap.add_argument("model_out")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--teacher", default=None, help="dense model (dir or safetensors) for logit distillation")
    ap.add_argument("--kd", type=float, default=0.7, help="weight of the distillation term (with --teacher)")
    ap.add_argument("--temp", type=float, default=2.0, help="distillation temperature")
    ap.add_argument("--alpha", type=float, nargs=2, default=(6.0, 4.0), metavar=("DENSE", "SHIFT"),
                    help="expert latencies for the load-balancing loss (spec: 6 4)")
    ap.add_argument("--alpha-from-file", action="store_true",
                    help="per MoE layer alpha = (r, 1 - r) with r the layer's shift_ratio in the input file "
                         "(what `convert --latency-aware` derived from measured expert latencies, "
                         "r = t_dense / (t_dense + t_shift)), so the balance point keeps the measured share")
    ap.add_argument("--balance-weight", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images")
    ap.add_argument("--val", type=int, default=0,
                    help="hold out the last N training images (not trained on) and report their top-1 per epoch")
    ap.add_argument("--eval-limit", type=int, default=0, help="final test evaluation on the first N images (0 = all)")
    ap.add_argument("--data", default=DATA_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--force", action="store_true", help="replace MODEL_OUT if it exists")
    args = ap.parse_args()

    if os.path.exists(args.model_out) and not args.force:
        sys.exit("error: %s exists (use --force to replace it)" % args.model_out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t_start = time.time()

    model = ShiftAddViT.load(args.model_in)
    print("model %s: %s" % (args.model_in, ", ".join("%s=%s" % (k, v) for k, v in sorted(model.kinds.items())
                                                       if v not in ("dense", "softmax"))), flush=True)
    xtr_u8, ytr = load_split("train", args.data)
    xte_u8, yte = load_split("test", args.data)
    if args.limit:
        xtr_u8, ytr = xtr_u8[:args.limit], ytr[:args.limit]
    xva_u8 = yva = None
    if args.val:
        xva_u8, yva = xtr_u8[-args.val:], ytr[-args.val:]
        xtr_u8, ytr = xtr_u8[:-args.val], ytr[:-args.val]
    if args.eval_limit:
        xte_u8, yte = xte_u8[:args.eval_limit], yte[:args.eval_limit]
    xtr = model.preprocess_u8(xtr_u8.copy())
    xte = model.preprocess_u8(xte_u8.copy())
    ytr = torch.from_numpy(ytr)
    yte = torch.from_numpy(yte)
    if xva_u8 is not None:
        xva = model.preprocess_u8(xva_u8.copy())
        yva = torch.from_numpy(yva)
    print("train %d images (%d held out for validation), test %d images" %
          (xtr.shape[0], args.val, xte.shape[0]), flush=True)

    t_logits = t_logits_flip = None
    if args.teacher:
        teacher = ShiftAddViT.load(args.teacher)
        t_logits = teacher_logits(teacher, xtr)
        t_logits_flip = teacher_logits(teacher, torch.flip(xtr, dims=[3]))
        print("teacher %s: train top-1 %.4f" % (args.teacher, float((t_logits.argmax(-1) == ytr).float().mean())),
              flush=True)
        del teacher

    top1_start = evaluate(model, xte, yte)
    print("before fine-tuning: test top-1 %.4f (PyTorch, engine semantics)" % top1_start, flush=True)
    if args.val:
        print("before fine-tuning: val top-1 %.4f" % evaluate(model, xva, yva), flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd)
    steps_per_epoch = xtr.shape[0] // args.batch
    total = max(1, int(round(steps_per_epoch * args.epochs)))
    warm = min(100, total // 10)

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    gen = torch.Generator().manual_seed(args.seed)
    moes = model.moe_layers()
    if args.alpha_from_file:
        for name, m in moes:
            r = model.layer_desc.get(_file_name(name), {}).get("shift_ratio")
            if r is not None:
                m.alpha = (float(r), 1.0 - float(r))
        print("alpha per layer from the file: " + ", ".join(
            "%s (%.3f, %.3f)" % ((_file_name(n),) + tuple(m.alpha)) for n, m in moes if m.alpha), flush=True)
    step = 0
    epoch = 0
    while step < total:
        model.train()
        for _, m in moes:
            m.counting, m.count = True, None
        t0 = time.time()
        perm = torch.randperm(xtr.shape[0], generator=gen)
        sums = {"loss": 0.0, "task": 0.0, "bal": 0.0, "acc": 0, "n": 0}
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[i * args.batch:(i + 1) * args.batch]
            xb, yb = xtr[idx], ytr[idx]
            flip = torch.rand(idx.shape[0], generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], torch.flip(xb, dims=[3]), xb)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(xb)
            ce = F.cross_entropy(logits, yb)
            if t_logits is not None:
                tl = torch.where(flip[:, None], t_logits_flip[idx], t_logits[idx])
                T = args.temp
                kd = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(tl / T, -1), reduction="batchmean",
                              log_target=True) * T * T
                task = (1 - args.kd) * ce + args.kd * kd
            else:
                task = ce
            bal = model.balance_loss(tuple(args.alpha)) if moes else torch.zeros(())
            loss = task + args.balance_weight * bal
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            n = yb.shape[0]
            sums["loss"] += float(loss) * n
            sums["task"] += float(task) * n
            sums["bal"] += float(bal) * n
            sums["acc"] += int((logits.argmax(-1) == yb).sum())
            sums["n"] += n
            if args.log_every and (i + 1) % args.log_every == 0:
                print("  epoch %d step %d/%d  loss %.4f  task %.4f  balance %.4f  train_acc %.4f  %.1fs" % (
                    epoch + 1, i + 1, steps_per_epoch, sums["loss"] / sums["n"], sums["task"] / sums["n"],
                    sums["bal"] / sums["n"], sums["acc"] / sums["n"], time.time() - t0), flush=True)
        epoch += 1
        ratios = {}
        for name, m in moes:
            if m.count is not None:
                ratios[name] = float(m.count[1]) / max(1, int(m.count.sum()))
            m.counting = False
        msg = "epoch %d done: loss %.4f  train_acc %.4f  lr %.2e  %.1fs" % (
            epoch, sums["loss"] / max(1, sums["n"]), sums["acc"] / max(1, sums["n"]), lr_at(step - 1),
            time.time() - t0)
        if ratios:
            msg += "  shift share %.3f..%.3f (mean %.3f)" % (min(ratios.values()), max(ratios.values()),
                                                           sum(ratios.values()) / len(ratios))
        if args.val:
            msg += "  val top-1 %.4f" % evaluate(model, xva, yva)
        print(msg, flush=True)

    # shift ratios of the final model on (up to) 10000 training images, for the metadata
    shift_ratios = {}
    if moes:
        model.eval()
        for _, m in moes:
            m.counting, m.count = True, None
        with torch.no_grad():
            for i in range(0, min(10000, xtr.shape[0]), 1000):
                model(xtr[i:i + 1000])
        for name, m in moes:
            m.counting = False
            shift_ratios[_file_name(name)] = float(m.count[1]) / max(1, int(m.count.sum()))
        print("shift share per MoE layer: " + ", ".join("%s %.3f" % kv for kv in sorted(shift_ratios.items())),
              flush=True)

    top1 = evaluate(model, xte, yte)
    print("final test top-1 %.4f (PyTorch, engine semantics; before %.4f)  total %.1fs" %
          (top1, top1_start, time.time() - t_start), flush=True)
    note = ("fine-tuned by tools/finetune_shiftadd.py on Fashion-MNIST train (%d images, %g epochs, lr %g, "
            "batch %d, teacher %s, balance weight %g, alpha %s); PyTorch test top-1 %.4f" %
            (xtr.shape[0], args.epochs, args.lr, args.batch, args.teacher or "none", args.balance_weight,
             list(args.alpha), top1))
    model.save(args.model_out, source_note=note, shift_ratios=shift_ratios)
    print("wrote %s" % args.model_out, flush=True)


def _file_name(module_name):
    """Module path of a MoE layer in ShiftAddViT -> its tensor prefix in the file."""
    # blocks.{i}.attn.qkv / blocks.{i}.attn.proj / blocks.{i}.fc1 / blocks.{i}.fc2
    parts = module_name.split(".")
    if parts[-1] in ("fc1", "fc2"):
        return ".".join(parts[:-1] + ["mlp", parts[-1]])
    return module_name


if __name__ == "__main__":
    main()
