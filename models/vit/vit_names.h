#pragma once
// Name maps for ViT/DeiT checkpoints. The ViT family's canonical names are timm's
// (`blocks.{i}.attn.qkv.weight`, `cls_token`, ...); Hugging Face ViT/DeiT names are mapped onto
// them by the table in vit_names.cpp.
#include <string>

#include "loaders/weight_store.h"

namespace shiftadd {

enum class VitNaming { Timm, HuggingFace, Unknown };

VitNaming detect_vit_naming(const WeightStore& w);
const char* vit_naming_name(VitNaming n);

// Returns the same tensors under canonical timm names. Hugging Face's separate query/key/value
// are concatenated into one q|k|v weight (a one-time copy at load). Tensors not used by a ViT
// classifier (e.g. HF's pooler) are dropped; unknown tensors are an error naming them.
WeightStore canonicalize_vit_names(const WeightStore& w);

}  // namespace shiftadd
