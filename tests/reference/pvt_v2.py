"""Dense PVTv2 in PyTorch, written from ../shared/spec/shiftaddvit.md section 1 (upstream
`pvt/pvt_v2.py` parameter names), as an independent oracle for the engine's PVTv2 graph.

Per stage i: OverlapPatchEmbed (Conv2d k=7 s=4 p=3 for stage 1, k=3 s=2 p=1 later, then
LayerNorm eps 1e-5) -> blocks -> stage norm `norm{i}` (eps 1e-6) -> back to NCHW.
Block: x += attn(norm1(x)); x += mlp(norm2(x)) (eps 1e-6).
Attention (SRA): q = Linear(x); if sr > 1: kv source = LayerNorm(Conv2d(k=s=sr)(grid)) (eps 1e-5,
nn.LayerNorm's default as upstream); kv = Linear(C, 2C); softmax(q k^T d^-0.5) v; proj.
MLP: fc1 -> depthwise 3x3 (pad 1, bias) over the grid -> exact GELU -> fc2.
Head: mean over the last stage's tokens -> Linear.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "b0": dict(dims=[32, 64, 160, 256], heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4], depths=[2, 2, 2, 2]),
    "b1": dict(dims=[64, 128, 320, 512], heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4], depths=[2, 2, 2, 2]),
    "b2": dict(dims=[64, 128, 320, 512], heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4], depths=[3, 4, 6, 3]),
    "b3": dict(dims=[64, 128, 320, 512], heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4], depths=[3, 4, 18, 3]),
    "b4": dict(dims=[64, 128, 320, 512], heads=[1, 2, 5, 8], mlp_ratios=[8, 8, 4, 4], depths=[3, 8, 27, 3]),
    "b5": dict(dims=[64, 128, 320, 512], heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], depths=[3, 6, 40, 3]),
}


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch, stride, cin, dim):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride, patch // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class Attention(nn.Module):
    def __init__(self, dim, heads, sr):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x, H, W):
        B, N, C = x.shape
        h, d = self.heads, C // self.heads
        q = self.q(x).reshape(B, N, h, d).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            g = x.transpose(1, 2).reshape(B, C, H, W)
            src = self.norm(self.sr(g).flatten(2).transpose(1, 2))
        else:
            src = x
        kv = self.kv(src).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        a = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class DWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=True)

    def forward(self, x, H, W):
        B, N, C = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, H, W):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), H, W)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, sr):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, H, W):
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class PyramidVisionTransformerV2(nn.Module):
    def __init__(self, dims, heads, mlp_ratios, depths, sr_ratios=(8, 4, 2, 1), in_chans=3,
                 num_classes=1000):
        super().__init__()
        self.num_stages = len(dims)
        for i in range(self.num_stages):
            cin = in_chans if i == 0 else dims[i - 1]
            setattr(self, f"patch_embed{i + 1}",
                    OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2, cin, dims[i]))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                [Block(dims[i], heads[i], mlp_ratios[i], sr_ratios[i]) for _ in range(depths[i])]))
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
