"""PVTv2 ShiftAddViT in PyTorch (spec sections 1, 2, 4, 5), built from shiftadd_modules.py and
the dense PVTv2 reference pvt_v2.py, with upstream tensor names:

- stages 1..3: LinAngular + KSH attention (`attn.to_qk`, `attn.to_v`, `attn.proj`,
  `attn.qk_quant.ksh.{anchor,mvec,A}`, `attn.dconv`); stage 4: softmax MSA with a fused
  `attn.qkv` Linear(C, 3C) and `attn.proj`, scale d^-0.5, dense;
- MLP: fc1 -> DWConv 3x3 -> exact GELU -> fc2 (`mlp.fc1`, `mlp.dwconv.dwconv`, `mlp.fc2`);
- `kind` picks the projections of the LinAngular attention and of every MLP: "dense"
  (nn.Linear), "moe" (MoELinear) or "shift" (LinearShift); `attn_kind` / `mlp_kind` override it
  per part; `stage4_proj` the stage-4 softmax attention's `proj` ("dense" or "shift", as
  upstream's --shift_training makes it).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pvt_v2 import DWConv, OverlapPatchEmbed
from shiftadd_modules import LinAngularAttention, LinearShift, MoELinear

LINEAR = {"dense": nn.Linear, "moe": MoELinear, "shift": LinearShift}


class SoftmaxAttention(nn.Module):
    """Stage-4 attention: fused q|k|v, softmax(q k^T d^-0.5) v, proj."""

    def __init__(self, dim, heads, proj_kind="dense"):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        # Upstream's --shift_training converts every Linear named `proj` (stage 4's too).
        self.proj = LINEAR[proj_kind](dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        h, d = self.heads, C // self.heads
        q, k, v = self.qkv(x).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)
        a = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, kind):
        super().__init__()
        self.fc1 = LINEAR[kind](dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = LINEAR[kind](hidden, dim)

    def forward(self, x, H, W):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), H, W)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, linangular, attn_kind, mlp_kind, stage4_proj="dense"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if linangular:
            self.attn = LinAngularAttention(dim, heads, lin=LINEAR[attn_kind])
            # Upstream stores this buffer (its EcoFormer-style projection, shape
            # [int(d ln d), d]); it is unused at inference.
            d = dim // heads
            self.attn.qk_quant.register_buffer("projection_matrix", torch.zeros(int(d * math.log(d)), d))
        else:
            self.attn = SoftmaxAttention(dim, heads, stage4_proj)
        self.linangular = linangular
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), mlp_kind)

    def forward(self, x, H, W):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x), H, W)


class ShiftAddPVTv2(nn.Module):
    def __init__(self, dims, heads, mlp_ratios, depths, kind="moe", attn_kind=None, mlp_kind=None,
                 in_chans=3, num_classes=1000, stage4_proj="dense"):
        super().__init__()
        self.num_stages = len(dims)
        for i in range(self.num_stages):
            cin = in_chans if i == 0 else dims[i - 1]
            setattr(self, f"patch_embed{i + 1}",
                    OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2, cin, dims[i]))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                [Block(dims[i], heads[i], mlp_ratios[i], i < self.num_stages - 1,
                       attn_kind or kind, mlp_kind or kind, stage4_proj) for _ in range(depths[i])]))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dims[i], eps=1e-6))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        B = x.shape[0]
        for i in range(self.num_stages):
            x, H, W = getattr(self, f"patch_embed{i + 1}")(x)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, H, W)
            x = getattr(self, f"norm{i + 1}")(x)
            if i != self.num_stages - 1:
                x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
        return self.head(x.mean(dim=1))
