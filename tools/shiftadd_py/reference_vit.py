"""Reference PyTorch (fp32) Vision Transformers, written from scratch (no timm/transformers import).

They mirror the forward code and parameter names of
  (a) timm `VisionTransformer` (global_pool='token'), optionally the distilled DeiT variant
      `VisionTransformerDistilled` (dist_token + head_dist), and
  (b) Hugging Face `ViTForImageClassification`,
so their state dicts load into the shiftadd engine's timm / HF paths and their ONNX exports have
the op patterns of real exports. Used by tests/fixtures/gen_goldens.py,
tests/fixtures/gen_onnx_fixtures.py, tools/train_fashion_vit.py and tools/export_vit_onnx.py.

Parameters are created as in the libraries' constructors (cls/dist token and position embedding
zero-filled by default; the scripts initialise the weights themselves), so the sequence of random
numbers a constructor draws depends only on its Linear/Conv2d layers.
"""
import math

import torch
import torch.nn as nn


# =============================================================================================
# (a) timm VisionTransformer / VisionTransformerDistilled (naming and forward as in timm)
# =============================================================================================
class TimmPatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2)  # NCHW -> NLC


class TimmAttention(nn.Module):
    """timm Attention as in older timm: (q @ k^T) * scale, explicit softmax (no fused SDPA)."""

    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        return x


class TimmMlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()  # approximate='none' (erf)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, eps, qkv_bias=True, attn_layer=TimmAttention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn_layer(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = TimmMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class TimmViT(nn.Module):
    """timm.models.vision_transformer.VisionTransformer (global_pool='token'), optionally the
    distilled DeiT variant (dist_token + head_dist, eval output = mean of both heads).

    attn_layer: attention module class, called as attn_layer(dim, num_heads, qkv_bias=...).
    token_init: factory for the cls/dist token and pos_embed tensors (torch.zeros as in timm's
    constructor; torch.randn draws them from the global generator, in that order).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, mlp_ratio=4.0, distilled=False, eps=1e-6, qkv_bias=True,
                 attn_layer=TimmAttention, token_init=torch.zeros):
        super().__init__()
        self.distilled = distilled
        self.num_prefix_tokens = 2 if distilled else 1
        self.patch_embed = TimmPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(token_init(1, 1, embed_dim))
        if distilled:
            self.dist_token = nn.Parameter(token_init(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(token_init(1, n + self.num_prefix_tokens, embed_dim))
        self.blocks = nn.Sequential(*[TimmBlock(embed_dim, num_heads, mlp_ratio, eps, qkv_bias, attn_layer)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.head = nn.Linear(embed_dim, num_classes)
        if distilled:
            self.head_dist = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        B = x.shape[0]
        if self.distilled:
            x = torch.cat((self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x), dim=1)
        else:
            x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        if self.distilled:
            x, x_dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
            return (x + x_dist) / 2  # eval / inference mode
        return self.head(x[:, 0])


# =============================================================================================
# (b) Hugging Face ViTForImageClassification (naming and forward as in transformers)
# =============================================================================================
class HFViTPatchEmbeddings(nn.Module):
    def __init__(self, image_size, patch_size, num_channels, hidden_size):
        super().__init__()
        self.num_channels = num_channels
        self.num_patches = (image_size // patch_size) * (image_size // patch_size)
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values):
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class HFViTEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg["hidden_size"]))
        self.patch_embeddings = HFViTPatchEmbeddings(cfg["image_size"], cfg["patch_size"],
                                                     cfg["num_channels"], cfg["hidden_size"])
        n = self.patch_embeddings.num_patches
        self.position_embeddings = nn.Parameter(torch.zeros(1, n + 1, cfg["hidden_size"]))

    def forward(self, pixel_values):
        batch_size = pixel_values.shape[0]
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        embeddings = embeddings + self.position_embeddings
        return embeddings  # dropout omitted (eval)


class HFViTSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_attention_heads = cfg["num_attention_heads"]
        self.attention_head_size = cfg["hidden_size"] // cfg["num_attention_heads"]
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(cfg["hidden_size"], self.all_head_size, bias=cfg["qkv_bias"])
        self.key = nn.Linear(cfg["hidden_size"], self.all_head_size, bias=cfg["qkv_bias"])
        self.value = nn.Linear(cfg["hidden_size"], self.all_head_size, bias=cfg["qkv_bias"])

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states):
        mixed_query_layer = self.query(hidden_states)
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        query_layer = self.transpose_for_scores(mixed_query_layer)
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        context_layer = context_layer.view(new_context_layer_shape)
        return context_layer


class HFViTSelfOutput(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["hidden_size"])

    def forward(self, hidden_states, input_tensor):
        return self.dense(hidden_states)  # residual is added in ViTLayer


class HFViTAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = HFViTSelfAttention(cfg)
        self.output = HFViTSelfOutput(cfg)

    def forward(self, hidden_states):
        self_outputs = self.attention(hidden_states)
        return self.output(self_outputs, hidden_states)


class HFViTIntermediate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        assert cfg["hidden_act"] == "gelu"
        self.intermediate_act_fn = nn.GELU()  # ACT2FN["gelu"] = exact erf GELU

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class HFViTOutput(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        return hidden_states + input_tensor


class HFViTLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = HFViTAttention(cfg)
        self.intermediate = HFViTIntermediate(cfg)
        self.output = HFViTOutput(cfg)
        self.layernorm_before = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])
        self.layernorm_after = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, hidden_states):
        attention_output = self.attention(self.layernorm_before(hidden_states))
        hidden_states = attention_output + hidden_states  # first residual connection
        layer_output = self.layernorm_after(hidden_states)
        layer_output = self.intermediate(layer_output)
        layer_output = self.output(layer_output, hidden_states)  # second residual connection
        return layer_output


class HFViTEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer = nn.ModuleList([HFViTLayer(cfg) for _ in range(cfg["num_hidden_layers"])])

    def forward(self, hidden_states):
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states)
        return hidden_states


class HFViTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = HFViTEmbeddings(cfg)
        self.encoder = HFViTEncoder(cfg)
        self.layernorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])
        # ViTForImageClassification builds ViTModel(add_pooling_layer=False): no pooler

    def forward(self, pixel_values):
        embedding_output = self.embeddings(pixel_values)
        sequence_output = self.encoder(embedding_output)
        return self.layernorm(sequence_output)


class HFViTForImageClassification(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_labels = len(cfg["id2label"])
        self.vit = HFViTModel(cfg)
        self.classifier = nn.Linear(cfg["hidden_size"], self.num_labels)

    def forward(self, pixel_values):
        sequence_output = self.vit(pixel_values)
        return self.classifier(sequence_output[:, 0, :])


def hf_config(dim, heads, depth, intermediate, image_size, patch_size, channels, classes, eps=1e-12):
    id2label = {str(i): "label_%d" % i for i in range(classes)}
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": dim,
        "num_attention_heads": heads,
        "num_hidden_layers": depth,
        "intermediate_size": intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "image_size": image_size,
        "patch_size": patch_size,
        "num_channels": channels,
        "layer_norm_eps": eps,
        "qkv_bias": True,
        "encoder_stride": patch_size,
        "id2label": id2label,
        "label2id": {v: int(k) for k, v in id2label.items()},
        "torch_dtype": "float32",
    }


