#pragma once
// ShiftAddViT PVTv2 (spec sections 2-5): upstream `--moe_attn --moe_mlp` checkpoints and their
// plain variants, recognised by tensor names. Stages with `attn.to_qk` use LinAngular + KSH
// attention (shared qk projection, KSH codes, additive attention, dconv), stages with a fused
// `attn.qkv` softmax MSA (stage 4), stages with `attn.q`/`attn.kv` dense spatial-reduction
// attention. Every projection (`attn.to_qk|to_v|proj`, `mlp.fc1|fc2`, `attn.qkv`) is a plain
// Linear (`.weight/.bias`), a MoE layer (`.gate.gate.*`, `.experts.0.*`,
// `.experts.1.{shift,sign,bias}`) or a shift layer (`.shift/.sign/.bias`). Configuration comes
// from infer_pvt_v2_config (heads from config.json or [1, 2, 5, 8]).
#include "models/pvt/pvt_v2.h"

namespace shiftadd {

// True for a checkpoint holding any ShiftAddViT PVTv2 tensor (LinAngular attention, MoE or
// shift layers), under upstream or timm names.
bool has_shiftadd_pvt_tensors(const WeightStore& w);
// ... and upstream PVTv2 names.
bool looks_like_shiftadd_pvt(const WeightStore& w);

// Builds input [C, S, S] -> logits [1, classes]. Every tensor of `w` must be used (the unused
// upstream buffer `attn.qk_quant.projection_matrix` is accepted and ignored).
Graph build_shiftadd_pvt(const PvtConfig& cfg, const WeightStore& w);

}  // namespace shiftadd
