"""ShiftAddViT building blocks in PyTorch, written from ../shared/spec/shiftaddvit.md (sections
2-4), not from the upstream code: the independent reference the engine's goldens come from.

Parameter and buffer names follow the upstream checkpoints (spec section 5), so a state dict of
these modules loads into the engine exactly as an upstream checkpoint would. Everything is fp32.

The PVTv2 ShiftAddViT model built from these modules is tests/reference/shiftadd_pvt.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

Q_SCALE = 2.0 ** 16
EPS_COMBINE = 2.220446e-16  # the MoE combine's log(exp(y) + eps), in fp32


def quantize_q16(x):
    """Q16.16 floor quantizer of spec section 3: clamp(floor(x * 2^16) / 2^16, -32768, 32767)."""
    return torch.clamp(torch.floor(x * Q_SCALE) / Q_SCALE, -32768.0, 32767.0)


class LinearShift(nn.Module):
    """DeepShift-PS linear layer: W = g * 2^s with s = round_half_even(clamp(shift, -14, 0)),
    g = sign(round_half_even(sign)); y = q(x) W^T + q(b)."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.shift = nn.Parameter(torch.empty(out_features, in_features))
        self.sign = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def weight(self):
        s = torch.round(torch.clamp(self.shift, -14.0, 0.0))  # torch.round: half to even
        g = torch.sign(torch.round(self.sign))
        return g * torch.pow(2.0, s)

    @classmethod
    def from_dense(cls, linear):
        """Upstream initialisation from a dense weight: shift = round(log2|w|), sign = sign(w)."""
        m = cls(linear.in_features, linear.out_features)
        with torch.no_grad():
            w = linear.weight
            m.shift.copy_(torch.round(torch.log2(w.abs().clamp_min(2.0 ** -30))))
            m.sign.copy_(torch.sign(w))
            m.bias.copy_(linear.bias)
        return m

    def forward(self, x):
        return F.linear(quantize_q16(x), self.weight(), quantize_q16(self.bias))


class Router(nn.Module):
    """Holds the router as upstream names it: `gate.gate.{weight,bias}`, Linear(d_in, 2)."""

    def __init__(self, in_features):
        super().__init__()
        self.gate = nn.Linear(in_features, 2)


class MoELinear(nn.Module):
    """Mixture of a dense (expert 0, Mult) and a shift (expert 1) linear layer, top-1 routing
    per token with ties to expert 0, gate weight 1, and the fp32 log(exp(y) + eps) combine."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.gate = Router(in_features)
        self.experts = nn.ModuleList([nn.Linear(in_features, out_features),
                                      LinearShift(in_features, out_features)])

    def route(self, x):
        logits = self.gate.gate(x)
        return (logits[..., 1] > logits[..., 0]).long()  # ties (and NaN) -> expert 0

    def forward(self, x, experts=None):
        """`experts`, if given, overrides the router (to feed a reference's choices in)."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        e = self.route(x2) if experts is None else experts.reshape(-1)
        out = x2.new_empty(x2.shape[0], self.experts[0].out_features)
        for k in range(2):
            rows = (e == k).nonzero(as_tuple=True)[0]
            if rows.numel():
                out[rows] = self.experts[k](x2[rows])
        out = torch.log(torch.exp(out) + EPS_COMBINE)
        return out.reshape(*shape[:-1], out.shape[-1])


class KSH(nn.Module):
    """Kernelised supervised hashing of spec section 2 step 3, buffers `anchor` (1,H,m,d),
    `mvec` (1,H,1,m) and `A` (H,nbits,m). sigma is the mean squared distance of the current
    image and head. Returns {0,1} codes (B,H,N,nbits) and the pre-activations y."""

    def __init__(self, heads, head_dim, m=25, nbits=16):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1, heads, m, head_dim))
        self.register_buffer("mvec", torch.zeros(1, heads, 1, m))
        self.register_buffer("A", torch.zeros(heads, nbits, m))

    def forward(self, qk):  # qk: (B, H, N, d), rows L2-normalised
        D = ((qk.unsqueeze(3) - self.anchor.unsqueeze(2)) ** 2).sum(-1)  # (B,H,N,m)
        sigma = D.mean(dim=(2, 3), keepdim=True)
        kf = torch.exp(-D / (2.0 * sigma)) - self.mvec
        y = torch.einsum("bhnm,hkm->bhnk", kf, self.A)
        return (y > 0).to(qk.dtype), y


class LinAngularAttention(nn.Module):
    """Attention in Hamming space (spec section 2): shared q/k projection, KSH codes, additive
    attention Z = 0.5 V + (code (code^T V)) / pi, per-token L2 norm, plus a 9-tap depthwise
    conv of V along the token index; then `proj`. `moe` selects MoELinear projections; `lin`
    (a class taking (in, out)), if given, any other projection type such as LinearShift."""

    def __init__(self, dim, heads, moe=False, m=25, nbits=16, lin=None):
        super().__init__()
        lin = lin or (MoELinear if moe else nn.Linear)
        self.heads = heads
        self.to_qk = lin(dim, dim)
        self.to_v = lin(dim, dim)
        self.proj = lin(dim, dim)
        self.dconv = nn.Conv2d(heads, heads, kernel_size=(9, 1), padding=(4, 0), groups=heads, bias=False)
        self.qk_quant = nn.Module()
        self.qk_quant.ksh = KSH(heads, dim // heads, m, nbits)

    def forward(self, x, codes=None):
        B, N, C = x.shape
        H, d = self.heads, C // self.heads
        qk = self.to_qk(x).reshape(B, N, H, d).transpose(1, 2)
        v = self.to_v(x).reshape(B, N, H, d).transpose(1, 2)
        qk = qk / qk.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # upstream has no epsilon
        if codes is None:
            codes, _ = self.qk_quant.ksh(qk)
        kv = codes.transpose(-2, -1) @ v          # (B,H,nbits,d): sums of V rows per bit
        z = 0.5 * v + (codes @ kv) / math.pi
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        z = z + self.dconv(v)
        return self.proj(z.transpose(1, 2).reshape(B, N, C))
