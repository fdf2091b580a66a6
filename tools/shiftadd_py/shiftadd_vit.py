"""PyTorch implementation of converted ShiftAddViT ViT models (docs/format.md, architecture "vit").

Written from /work/shared/spec/shiftaddvit.md (sections 2-4) and docs/format.md, independently of
the C++ engine: it is the golden reference for the engine's converted-ViT path and the model that
tools/finetune_shiftadd.py fine-tunes.

    model = ShiftAddViT.load("converted.safetensors")   # any mix of dense / shift / moe / ksh
    model.eval(); logits = model(x)                      # x: (B, C, H, W) preprocessed pixels
    model.save("out.safetensors", source_note="...")     # engine-ready file, same format

Eval mode reproduces the engine's semantics exactly (up to fp32 rounding):
  * shift layer:  y = scale * (q(x) W^T + q(b)),  W = g 2^s decoded from the 5-bit codes,
    q(v) = clamp(floor(v 2^16) / 2^16, -32768, 32767); the stored bias is b / scale.
  * MoE layer:    router logits = Wg x + bg, expert 1 (shift) iff logit1 > logit0 (ties -> 0),
    output = the chosen expert's output (combine "none"; "log_exp" applies log(exp(y) + eps)).
  * KSH block:    q, k L2-normalised per token and head, each hashed with the block's shared
    per-head hash (sigma = mean distance of that image, head and stream), bits {0,1};
    Z = 0.5 V + cq (ck^T V) / pi, Z /= ||Z||, Z += 9-tap dconv of V along the token index, proj.
  * everything else: timm ViT (pre-norm blocks, exact GELU, cls token, final norm, head).

Train mode (fine-tuning):
  * shift layers keep a latent float weight u (in units of the per-channel scale, so that the
    initial latent is exactly decode(codes)); the forward uses P2(u) = sign(u) 2^clamp(round(log2|u|),
    -14, 0) with a straight-through gradient (dL/du = dL/dP2(u)); activations and bias go through
    the Q16.16 floor quantizer with a straight-through gradient. The per-channel scale (when the
    file has one) is a trainable float.
  * MoE: both experts are computed, each token takes its top-1 expert's output, multiplied by
    g / g.detach() where g is the softmax gate probability of the chosen expert: the value is
    exactly 1 (the forward equals inference), but the task loss now sends a gradient to the router
    (d out / d logits = out * d log g / d logits), which is how routers learn which tokens suit
    which expert. The spec's latency-aware load-balancing loss (section 4) is collected per
    layer, see `balance_loss()`.
  * KSH: anchors, mvec and A are fixed buffers; the codes are not differentiable (no gradient to
    q and k through the hash); gradients flow through V, the dconv taps, proj and all other
    float parameters.
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # package import (tools/ on sys.path) or plain module import
    from shiftadd_py.safetensors_io import load_file, save_file
except ImportError:  # pragma: no cover
    from safetensors_io import load_file, save_file

Q_SCALE = 2.0 ** 16
S_MIN = -14
COMBINE_EPS = 2.220446e-16


# ============================================================================ shift codes
def decode_codes(codes):
    """5-bit codes (core/shift_codes.h) -> float weights g 2^s. codes: uint8 numpy/tensor."""
    c = torch.as_tensor(np.asarray(codes, dtype=np.uint8).astype(np.int64))
    mag = c & 15
    s = 1 - mag
    w = torch.pow(2.0, s.double()).float()
    w = torch.where((c & 16) != 0, -w, w)
    return torch.where(mag == 0, torch.zeros_like(w), w)


INT8_LEVELS = 7  # exponents per output row that 4-bit storage (and fast mode's int8) hold


def _exponents(u, bits):
    """Sign and exponent of P2(u) per weight: s = clamp(round(log2|u|), -14, 0); with bits == 4
    each row keeps the 7 exponents below its largest e: a weight below becomes 2^(e-6) when
    |u| >= 2^(e-7), else 0 (the converter's rule, convert/fit.cpp). Returns (sign, s, nonzero)."""
    a = u.abs()
    s = torch.clamp(torch.round(torch.log2(torch.where(a > 0, a, torch.ones_like(a)))), S_MIN, 0)
    nz = a > 0
    if bits == 4:
        e = torch.where(nz, s, torch.full_like(s, -1e9)).max(dim=1, keepdim=True).values
        lowest = e - (INT8_LEVELS - 1)
        below = nz & (s < lowest)
        s = torch.where(below, lowest.expand_as(s), s)
        nz = nz & ~(below & (a < torch.pow(2.0, lowest - 1)))
    return torch.sign(u), s, nz


def pow2_quantize(u, bits=5):
    """P2(u) = sign(u) 2^s (0 for u == 0; see _exponents), no gradient."""
    g, s, nz = _exponents(u, bits)
    return torch.where(nz, g * torch.pow(2.0, s), torch.zeros_like(u))


def encode_codes(u, bits=5):
    """Latent weights -> uint8 (5-bit) codes of P2(u)."""
    g, s, nz = _exponents(u.detach().double(), bits)
    code = (1 - s.long()) | torch.where(g < 0, 16, 0).long()
    return torch.where(nz, code, torch.zeros_like(code)).to(torch.uint8).numpy()


# Storage at the real width (format v2, docs/format.md), rows packed LSB first.
def pack_codes(codes, bits):
    """[N, K] 5-bit codes -> (packed uint8 [N, ceil(K*bits/8)], int8 row exponents or None)."""
    c = np.asarray(codes, dtype=np.uint8)
    N, K = c.shape
    if bits == 5:
        bitpos = 5 * np.arange(K)
        out = np.zeros((N, (5 * K + 7) // 8), dtype=np.uint16)
        for b in range(5):
            pos = bitpos + b
            np.add.at(out, (slice(None), pos // 8), ((c >> b) & 1).astype(np.uint16) << (pos % 8))
        return out.astype(np.uint8), None
    nz = (c & 15) != 0
    s = np.where(nz, 1 - (c & 15).astype(np.int64), -127)
    e = s.max(axis=1)
    level = np.where(nz, e[:, None] - s + 1, 0)
    if (level > INT8_LEVELS).any():
        raise ValueError("a row spans more than 7 exponents: it does not fit 4 bits")
    nib = (level | np.where(c & 16, 8, 0)).astype(np.uint8)
    if K % 2:
        nib = np.concatenate([nib, np.zeros((N, 1), np.uint8)], axis=1)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8), e.astype(np.int8)


def unpack_codes(packed, K, bits, exponents=None):
    """Inverse of pack_codes: packed rows -> [N, K] 5-bit codes."""
    p = np.asarray(packed, dtype=np.uint8)
    if bits == 5:
        pos = 5 * np.arange(K)
        v = p[:, pos // 8].astype(np.uint16) | (np.concatenate([p, np.zeros((p.shape[0], 1), np.uint8)], axis=1)
                                                [:, pos // 8 + 1].astype(np.uint16) << 8)
        return ((v >> (pos % 8)) & 31).astype(np.uint8)
    nib = np.stack([p & 15, p >> 4], axis=2).reshape(p.shape[0], -1)[:, :K].astype(np.int64)
    level = nib & 7
    s = np.asarray(exponents, dtype=np.int64)[:, None] - (level - 1)
    if ((level > 0) & ((s < S_MIN) | (s > 0))).any():
        raise ValueError("4-bit shift codes name an exponent outside [-14, 0]")
    code = (1 - s) | np.where(nib & 8, 16, 0)
    return np.where(level > 0, code, 0).astype(np.uint8)


def quantize_q16(x):
    return torch.clamp(torch.floor(x * Q_SCALE) / Q_SCALE, -32768.0, 32767.0)


def quantize_q16_ste(x):
    return x + (quantize_q16(x) - x).detach()


# ============================================================================ linear layers
class ShiftLinear(nn.Module):
    """Shift (power-of-two) linear layer; see the module docstring."""

    def __init__(self, codes, bias, scale=None, bits=5):
        super().__init__()
        w = decode_codes(codes)
        self.out_features, self.in_features = w.shape
        self.bits = bits  # stored width: 4 keeps 7 exponents per row (training quantizes the same way)
        self.has_scale = scale is not None
        self.u = nn.Parameter(w.clone())  # latent weight in units of scale; P2(u) == decode(codes)
        self.bias = nn.Parameter(torch.as_tensor(np.array(bias, dtype=np.float32)))
        sc = np.array(scale, dtype=np.float32) if scale is not None else np.ones(w.shape[0], np.float32)
        self.scale = nn.Parameter(torch.as_tensor(sc), requires_grad=self.has_scale)
        self.exact64 = False  # eval: accumulate in float64 (golden generation)

    def weight_q(self):
        return pow2_quantize(self.u.detach(), self.bits)

    def forward(self, x):
        if self.training:
            wq = self.u + (pow2_quantize(self.u, self.bits) - self.u).detach()
            y = F.linear(quantize_q16_ste(x), wq, quantize_q16_ste(self.bias))
            return y * self.scale if self.has_scale else y
        wq = self.weight_q()
        if self.exact64:
            y = F.linear(quantize_q16(x).double(), wq.double(), quantize_q16(self.bias).double())
            if self.has_scale:
                y = y * self.scale.double()
            return y.float()
        y = F.linear(quantize_q16(x), wq, quantize_q16(self.bias))
        return y * self.scale if self.has_scale else y

    def state_tensors(self, prefix):
        packed, exponents = pack_codes(encode_codes(self.u, self.bits), self.bits)
        out = {prefix + ".codes": packed, prefix + ".bias": self.bias.detach().float().numpy().copy()}
        if exponents is not None:
            out[prefix + ".exponent"] = exponents
        if self.has_scale:
            out[prefix + ".scale"] = self.scale.detach().float().numpy().copy()
        return out

    def exponent_range(self):
        c = encode_codes(self.u, self.bits)
        nz = c[(c & 15) != 0]
        if nz.size == 0:
            return [0, 0]
        s = 1 - (nz & 15).astype(np.int64)
        return [int(s.min()), int(s.max())]


def _dense_from(t, prefix):
    w = torch.as_tensor(np.array(t[prefix + ".weight"], dtype=np.float32))
    lin = nn.Linear(w.shape[1], w.shape[0], bias=(prefix + ".bias") in t)
    with torch.no_grad():
        lin.weight.copy_(w)
        if lin.bias is not None:
            lin.bias.copy_(torch.as_tensor(np.array(t[prefix + ".bias"], dtype=np.float32)))
    return lin


def _shift_from(t, prefix, bits=0, K=None):
    """A shift layer from its stored codes: bits 0 (format v1, one code per byte) or 4 / 5 (v2)."""
    codes = t[prefix + ".codes"]
    if bits:
        codes = unpack_codes(codes, K, bits, t.get(prefix + ".exponent"))
    return ShiftLinear(codes, t[prefix + ".bias"], t.get(prefix + ".scale"), bits=bits or 5)


def _in_features(t, block, name, dim):
    """Input width of a block's linear layer: the model dim, or for fc2 the hidden width (fc1's
    output: the length of its bias, whatever its kind)."""
    if name != "mlp.fc2":
        return dim
    p = "blocks.%d.mlp.fc1" % block
    for key in (p + ".bias", p + ".experts.0.bias"):
        if key in t:
            return int(np.asarray(t[key]).shape[0])
    raise ValueError("%s: no bias to read the hidden width from" % p)


class MoELinear(nn.Module):
    """Top-1 mixture of a dense expert (0) and a shift expert (1); see the module docstring."""

    def __init__(self, t, prefix, combine="none", bits=0):
        super().__init__()
        self.router = _dense_from(t, prefix + ".router")
        dense = _dense_from(t, prefix + ".experts.0")
        self.experts = nn.ModuleList([dense, _shift_from(t, prefix + ".experts.1", bits, dense.in_features)])
        self.combine = combine
        self.last_aux = None     # training: (gate probs [T,2], P(expert chosen) [T,2]) of the last call
        self.count = None        # tokens per expert, accumulated while `counting` is True
        self.counting = False
        self.forced = None       # optional override of the routing (LongTensor of expert ids)
        self.alpha = None        # per-layer (dense, shift) latencies for balance_loss (None: the global)

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        logits = self.router(x2)
        choice = (logits[:, 1] > logits[:, 0])
        if self.forced is not None:
            choice = self.forced.reshape(-1).bool()
        y0 = self.experts[0](x2)
        y1 = self.experts[1](x2)
        y = torch.where(choice[:, None], y1, y0)
        if self.combine == "log_exp":
            y = torch.log(torch.exp(y) + COMBINE_EPS)
        if self.counting:
            n1 = int(choice.sum())
            c = torch.tensor([choice.numel() - n1, n1], dtype=torch.long)
            self.count = c if self.count is None else self.count + c
        if self.training:
            g = torch.softmax(logits, dim=-1)
            gsel = torch.where(choice, g[:, 1], g[:, 0])
            y = y * (gsel / gsel.detach())[:, None]
            # Smooth P(e in top-1 | x): each logit perturbed by independent N(0, 1) noise (the
            # noisy top-k gating the load term comes from), P(e1) = Phi((l1 - l0) / sqrt 2).
            p1 = 0.5 * (1.0 + torch.erf((logits[:, 1] - logits[:, 0]) / 2.0))
            self.last_aux = (g, torch.stack([1.0 - p1, p1], dim=-1))
        return y.reshape(*shape[:-1], y.shape[-1])

    def state_tensors(self, prefix):
        out = {prefix + ".router.weight": self.router.weight.detach().numpy().copy(),
               prefix + ".router.bias": self.router.bias.detach().numpy().copy(),
               prefix + ".experts.0.weight": self.experts[0].weight.detach().numpy().copy(),
               prefix + ".experts.0.bias": self.experts[0].bias.detach().numpy().copy()}
        out.update(self.experts[1].state_tensors(prefix + ".experts.1"))
        return out


def cv_squared(v):
    """Squared coefficient of variation, Var(v) / (Mean(v)^2 + 1e-10) (unbiased variance)."""
    if v.numel() < 2:
        return v.new_zeros(())
    return v.float().var() / (v.float().mean() ** 2 + 1e-10)


# ============================================================================ attention
class SoftmaxAttention(nn.Module):
    def __init__(self, qkv, proj, heads):
        super().__init__()
        self.qkv, self.proj, self.heads = qkv, proj, heads

    def forward(self, x):
        B, N, C = x.shape
        d = C // self.heads
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * d ** -0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


def _l2_normalise(x):
    n = torch.sqrt((x * x).sum(-1, keepdim=True))
    return x / torch.where(n > 0, n, torch.ones_like(n))


class KSHAttention(nn.Module):
    """LinAngular attention on KSH codes of q and k (separately hashed, one shared hash per head)."""

    def __init__(self, qkv, proj, heads, anchor, mvec, A, taps):
        super().__init__()
        self.qkv, self.proj, self.heads = qkv, proj, heads
        self.register_buffer("anchor", torch.as_tensor(np.array(anchor, dtype=np.float32)))  # [H,m,d]
        self.register_buffer("mvec", torch.as_tensor(np.array(mvec, dtype=np.float32)))      # [H,m]
        self.register_buffer("A", torch.as_tensor(np.array(A, dtype=np.float32)))            # [H,bits,m]
        self.dconv = nn.Parameter(torch.as_tensor(np.array(taps, dtype=np.float32)))         # [H,9]
        self.record = None  # list: collects hash pre-activations (golden generation)

    def hash_preact(self, x):
        """x: [B,H,N,d] (normalised) -> pre-activations y [B,H,N,bits]."""
        diff = x.unsqueeze(3) - self.anchor[None, :, None, :, :]        # [B,H,N,m,d]
        D = (diff * diff).sum(-1)                                         # [B,H,N,m]
        sigma = D.mean(dim=(2, 3), keepdim=True)
        Kf = torch.exp(-D / (2.0 * sigma)) - self.mvec[None, :, None, :]
        return Kf @ self.A.transpose(1, 2).unsqueeze(0)                  # [B,H,N,bits]

    def forward(self, x):
        B, N, C = x.shape
        H = self.heads
        d = C // H
        qkv = self.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                                  # [B,H,N,d]
        with torch.no_grad():
            yq = self.hash_preact(_l2_normalise(q))
            yk = self.hash_preact(_l2_normalise(k))
            if self.record is not None:
                self.record.append((yq.clone(), yk.clone()))
            cq = (yq > 0).to(v.dtype)
            ck = (yk > 0).to(v.dtype)
        kv = ck.transpose(-2, -1) @ v                                     # [B,H,bits,d]
        y = cq @ kv                                                       # [B,H,N,d]
        z = 0.5 * v + y / math.pi
        z = _l2_normalise(z)
        # 9-tap conv along the token index per head, zero padded: out[n] = sum_t w[t] v[n-4+t]
        vp = F.pad(v, (0, 0, 4, 4))
        conv = sum(self.dconv[None, :, t, None, None] * vp[:, :, t:t + N, :] for t in range(9))
        z = z + conv
        return self.proj(z.transpose(1, 2).reshape(B, N, C))


# ============================================================================ model
class Block(nn.Module):
    def __init__(self, dim, eps, attn, fc1, fc2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _copy_ln(ln, t, prefix):
    with torch.no_grad():
        ln.weight.copy_(torch.as_tensor(np.array(t[prefix + ".weight"], dtype=np.float32)))
        ln.bias.copy_(torch.as_tensor(np.array(t[prefix + ".bias"], dtype=np.float32)))


def _read_model(path):
    """(tensors, metadata, config) of a converted file, a dense timm safetensors or a directory."""
    cfg_path = None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        for name in ("model.safetensors",):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
    else:
        cand = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
        cfg_path = cand if os.path.exists(cand) else None
    t, md = load_file(path)
    if md.get("format") == "shiftadd":
        cfg = json.loads(md["config"])
    else:
        if not cfg_path or not os.path.exists(cfg_path):
            raise ValueError("%s: not a shiftadd file and no config.json beside it" % path)
        with open(cfg_path) as f:
            cfg = json.load(f)
        md = {}
    t = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in t.items()}
    return t, md, cfg


class ShiftAddViT(nn.Module):
    def __init__(self, tensors, metadata, config):
        super().__init__()
        t = tensors
        self.metadata = dict(metadata)
        self.config = dict(config)
        layers = json.loads(metadata["layers"]) if metadata.get("layers") else {}
        version = metadata.get("format_version", "1")
        if version not in ("1", "2"):
            raise ValueError("shiftadd format version %r is not supported (1 and 2 are)" % version)
        self.layer_desc = layers
        cfg = self.config
        self.dim = int(cfg["embed_dim"])
        self.depth = int(cfg["depth"])
        self.heads = int(cfg["num_heads"])
        eps = float(cfg.get("layer_norm_eps", 1e-6))
        pre = cfg.get("shiftadd_preprocess") or cfg.get("pretrained_cfg") or {}
        self.mean = [float(m) for m in pre.get("mean", [0.0])]
        self.std = [float(s) for s in pre.get("std", [1.0])]

        pw = torch.as_tensor(t["patch_embed.proj.weight"])
        self.patch = pw.shape[-1]
        self.patch_embed = nn.Conv2d(pw.shape[1], pw.shape[0], self.patch, self.patch)
        with torch.no_grad():
            self.patch_embed.weight.copy_(pw)
            self.patch_embed.bias.copy_(torch.as_tensor(t["patch_embed.proj.bias"]))
        self.cls_token = nn.Parameter(torch.as_tensor(t["cls_token"]).clone())
        self.distilled = "dist_token" in t
        if self.distilled:
            self.dist_token = nn.Parameter(torch.as_tensor(t["dist_token"]).clone())
        self.pos_embed = nn.Parameter(torch.as_tensor(t["pos_embed"]).clone())

        self.kinds = {}
        blocks = []
        for i in range(self.depth):
            lin = {}
            for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                p = "blocks.%d.%s" % (i, name)
                kind = layers.get(p, {}).get("kind")
                if kind is None:
                    kind = "moe" if (p + ".router.weight") in t else "shift" if (p + ".codes") in t else "dense"
                self.kinds[p] = kind
                bits = int(layers.get(p, {}).get("bits", 5)) if version == "2" else 0
                if kind == "dense":
                    lin[name] = _dense_from(t, p)
                elif kind == "shift":
                    lin[name] = _shift_from(t, p, bits, _in_features(t, i, name, self.dim))
                elif kind == "moe":
                    lin[name] = MoELinear(t, p, layers.get(p, {}).get("combine", "none"), bits)
                else:
                    raise ValueError("%s: unknown layer kind %r" % (p, kind))
            pa = "blocks.%d.attn" % i
            akind = layers.get(pa, {}).get("kind") or ("ksh" if (pa + ".ksh.A") in t else "softmax")
            self.kinds[pa] = akind
            if akind == "ksh":
                attn = KSHAttention(lin["attn.qkv"], lin["attn.proj"], self.heads, t[pa + ".ksh.anchor"],
                                    t[pa + ".ksh.mvec"], t[pa + ".ksh.A"],
                                    np.asarray(t[pa + ".dconv.weight"]).reshape(self.heads, 9))
            elif akind == "softmax":
                attn = SoftmaxAttention(lin["attn.qkv"], lin["attn.proj"], self.heads)
            else:
                raise ValueError("%s: unknown attention kind %r" % (pa, akind))
            blk = Block(self.dim, eps, attn, lin["mlp.fc1"], lin["mlp.fc2"])
            _copy_ln(blk.norm1, t, "blocks.%d.norm1" % i)
            _copy_ln(blk.norm2, t, "blocks.%d.norm2" % i)
            blocks.append(blk)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(self.dim, eps=eps)
        _copy_ln(self.norm, t, "norm")
        self.head = _dense_from(t, "head")
        if self.distilled:
            self.head_dist = _dense_from(t, "head_dist")

    # ------------------------------------------------------------------ construction / io
    @classmethod
    def load(cls, path):
        t, md, cfg = _read_model(path)
        return cls(t, md, cfg)

    def moe_layers(self):
        return [(n, m) for n, m in self.named_modules() if isinstance(m, MoELinear)]

    def shift_layers(self):
        return [(n, m) for n, m in self.named_modules() if isinstance(m, ShiftLinear)]

    def set_exact64(self, on=True):
        for _, m in self.shift_layers():
            m.exact64 = on

    def preprocess_u8(self, x_u8):
        """uint8 (B, H, W) or (B, C, H, W) pixels -> normalised float input (no resizing)."""
        x = torch.as_tensor(np.asarray(x_u8)).float() / 255.0
        if x.dim() == 3:
            x = x.unsqueeze(1)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        B = x.shape[0]
        toks = [self.cls_token.expand(B, -1, -1)]
        if self.distilled:
            toks.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat(toks + [x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if self.distilled:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        return self.head(x[:, 0])

    def balance_loss(self, alpha=(6.0, 4.0)):
        """Latency-aware load-balancing loss of spec section 4, summed over the MoE layers of the
        last training forward (a layer's own `alpha`, when set, replaces the argument): imp_e = alpha_e sum_x g_e(x), load_e = alpha_e sum_x P(e | x),
        L = CV^2(imp) + CV^2(load)."""
        total = None
        for _, m in self.moe_layers():
            if m.last_aux is None:
                continue
            a = torch.tensor(m.alpha if m.alpha is not None else alpha, dtype=torch.float32)
            g, p = m.last_aux
            imp = a * g.sum(0)
            load = a * p.sum(0)
            l = cv_squared(imp) + cv_squared(load)
            total = l if total is None else total + l
        return total if total is not None else torch.zeros(())

    # ------------------------------------------------------------------ saving
    def state_tensors(self):
        out = {}

        def put(name, v):
            out[name] = v.detach().float().numpy().copy() if torch.is_tensor(v) else v

        put("patch_embed.proj.weight", self.patch_embed.weight)
        put("patch_embed.proj.bias", self.patch_embed.bias)
        put("cls_token", self.cls_token)
        if self.distilled:
            put("dist_token", self.dist_token)
        put("pos_embed", self.pos_embed)
        for i, blk in enumerate(self.blocks):
            for name, mod in (("attn.qkv", blk.attn.qkv), ("attn.proj", blk.attn.proj),
                              ("mlp.fc1", blk.fc1), ("mlp.fc2", blk.fc2)):
                p = "blocks.%d.%s" % (i, name)
                if isinstance(mod, (ShiftLinear, MoELinear)):
                    out.update(mod.state_tensors(p))
                else:
                    put(p + ".weight", mod.weight)
                    if mod.bias is not None:
                        put(p + ".bias", mod.bias)
            if isinstance(blk.attn, KSHAttention):
                pa = "blocks.%d.attn" % i
                put(pa + ".ksh.anchor", blk.attn.anchor)
                put(pa + ".ksh.mvec", blk.attn.mvec)
                put(pa + ".ksh.A", blk.attn.A)
                put(pa + ".dconv.weight", blk.attn.dconv)
            put("blocks.%d.norm1.weight" % i, blk.norm1.weight)
            put("blocks.%d.norm1.bias" % i, blk.norm1.bias)
            put("blocks.%d.norm2.weight" % i, blk.norm2.weight)
            put("blocks.%d.norm2.bias" % i, blk.norm2.bias)
        put("norm.weight", self.norm.weight)
        put("norm.bias", self.norm.bias)
        put("head.weight", self.head.weight)
        put("head.bias", self.head.bias)
        if self.distilled:
            put("head_dist.weight", self.head_dist.weight)
            put("head_dist.bias", self.head_dist.bias)
        return dict(sorted(out.items()))

    def updated_layers(self, shift_ratios=None):
        """The metadata "layers" object with exponent ranges (and, if given, MoE shift ratios)
        re-derived from the current weights."""
        layers = json.loads(json.dumps(self.layer_desc))
        for i, blk in enumerate(self.blocks):
            for name, mod in (("attn.qkv", blk.attn.qkv), ("attn.proj", blk.attn.proj),
                              ("mlp.fc1", blk.fc1), ("mlp.fc2", blk.fc2)):
                p = "blocks.%d.%s" % (i, name)
                e = layers.setdefault(p, {})
                sh = mod if isinstance(mod, ShiftLinear) else mod.experts[1] if isinstance(mod, MoELinear) else None
                if sh is None:
                    e.setdefault("kind", "dense")
                    continue
                e["kind"] = "moe" if isinstance(mod, MoELinear) else "shift"
                e["bits"] = sh.bits
                e["exponent"] = sh.exponent_range()
                e["scale"] = bool(sh.has_scale)
                if isinstance(mod, MoELinear):
                    e["combine"] = mod.combine
                    if shift_ratios and p in shift_ratios:
                        e["shift_ratio"] = round(float(shift_ratios[p]), 6)
            pa = "blocks.%d.attn" % i
            e = layers.setdefault(pa, {})
            if isinstance(blk.attn, KSHAttention):
                e.update({"kind": "ksh", "bits": int(blk.attn.A.shape[1]), "anchors": int(blk.attn.A.shape[2])})
            else:
                e.setdefault("kind", "softmax")
        return layers

    def save(self, path, source_note="", shift_ratios=None):
        md = {"format": "shiftadd", "format_version": "2", "architecture": "vit",
              "config": json.dumps(self.config, separators=(",", ":")),
              "layers": json.dumps(self.updated_layers(shift_ratios), separators=(",", ":"), sort_keys=True)}
        src = self.metadata.get("source", "")
        md["source"] = (src + " | " if src else "") + source_note if source_note else src
        save_file(self.state_tensors(), path, metadata=md)  # atomic (temp file + rename)
