#pragma once
// ONNX loader for ViT / DeiT exports. The engine does not interpret ONNX graphs: it recognizes the
// ViT structure that torch.onnx.export writes (timm VisionTransformer / DeiT-distilled, Hugging Face
// ViTForImageClassification / DeiT; opset 13..20, TorchScript exporter of torch 1.13 and 2.x, dynamo exporter
// of torch 2.x with weights in external data; onnxsim-simplified, float16) by data flow, after
// folding everything computed from constants and shapes (onnx_graph.h), and maps the graph's
// constants onto the canonical timm tensor names that the ViT builder consumes. Anything the
// recognizer does not understand is an Error, never a guess.
#include <cstdint>
#include <string>

#include "loaders/weight_store.h"

namespace shiftadd {

struct OnnxVitInfo {
  int64_t heads = 0;
  float eps = 1e-6f;       // LayerNorm epsilon (all LayerNorms of the graph agree)
  int64_t image_size = 0;  // square input side in pixels
  int64_t in_chans = 0;
  int opset = 0;         // default-domain opset of the model
  std::string producer;  // "pytorch 1.13.0"
};

// Returns F32 tensors under canonical timm names:
//   patch_embed.proj.weight [C,Cin,p,p], patch_embed.proj.bias [C], cls_token [1,1,C],
//   dist_token [1,1,C] (distilled only), pos_embed [1,T,C],
//   blocks.{i}.norm1.weight/.bias [C], blocks.{i}.attn.qkv.weight [3C,C] (q|k|v, heads-major
//   within each), blocks.{i}.attn.qkv.bias [3C] (zeros when the export has none),
//   blocks.{i}.attn.proj.weight [C,C]/.bias, blocks.{i}.norm2.*, blocks.{i}.mlp.fc1.weight [F,C]/.bias,
//   blocks.{i}.mlp.fc2.weight [C,F]/.bias, norm.weight/.bias, head.weight [classes,C]/.bias,
//   head_dist.weight/.bias (distilled only).
// Linear weights are in PyTorch [out,in] layout; F16/BF16/F64 constants are converted to F32.
// Throws Error naming the file (and node or tensor) for unreadable files, ops outside the
// recognized set, bad external data (location outside the model's directory, ranges outside the
// data file, wrong sizes), and graphs that do not have the ViT structure.
WeightStore load_onnx_vit(const std::string& path, OnnxVitInfo* info);

}  // namespace shiftadd
