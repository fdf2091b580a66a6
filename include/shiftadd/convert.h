#pragma once
// shiftadd converter API. The converter: a dense ViT / DeiT (timm, Hugging Face, ONNX) -> a ShiftAddViT model file
// (docs/format.md), calibrated on images, with a per-layer error report. docs/converter.md
// explains each step; `shiftadd convert` is its command line.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace shiftadd::convert {

struct Options {
  std::string input, output;
  bool force = false;  // replace an existing output
  // Linear layers: "dense" (keep), "shift" (power-of-two weights) or "moe" (router between the
  // dense and the shift expert). attn_proj covers each block's qkv and proj.
  std::string mlp = "shift", attn_proj = "dense";
  // Attention: "dense" (softmax, kept) or "ksh-linear" (Hamming-space LinAngular attention).
  std::string attn = "dense";
  std::vector<int64_t> ksh_blocks;  // blocks that get KSH attention; empty: all but the last
  int64_t bits = 16, anchors = 25;
  // Calibration images: a folder (of class folders or images), a .npy (N, C, H, W), or IDX.
  std::string calib, calib_split = "train";
  int64_t calib_count = 256;
  double shift_ratio = 0.5;    // MoE: share of tokens for the shift expert
  bool latency_aware = false;  // MoE: derive each layer's share from measured expert latencies
  bool shift_scale = false;    // per-output-channel scale on shift layers (extension)
  // Stored width of shift weights (docs/format.md): 4 (7 exponents per output row, exactly
  // what fast mode's int8 kernels compute with) or 5 (sign and any exponent in [-14, 0]).
  int shift_bits = 4;
  int threads = 0;
  uint32_t seed = 0;
  // Progress of long stages ("calibrate", "layers", "check"); may be empty.
  std::function<void(const std::string& stage, int64_t done, int64_t total)> progress;
};

struct LayerReport {
  std::string name;  // "blocks.0.mlp.fc1", "blocks.0.attn"
  std::string kind;  // dense | shift | moe | ksh
  // ||y - y_dense||_F / ||y_dense||_F of this layer alone, run by the engine on the dense
  // model's own inputs to the layer (calibration tokens).
  double rel_error = 0;
  double shift_share = -1;  // moe: share of calibration tokens routed to the shift expert
  double dense_us = 0, shift_us = 0;  // moe with latency_aware: measured time per 1000 tokens
  // shift / moe: the same error in fast mode (int8 activations, int8 weight window), and the
  // share of nonzero shift weights outside the int8 window (4 bits: moved into it by the
  // converter; 5 bits: dropped by fast mode's kernels).
  double rel_error_fast = -1;
  double outside_window = 0;
  std::string detail;       // e.g. "exponent [-12, 0], 58% nonzero"
};

// Top-1 agreement below this share of the calibration images is reported as a warning.
constexpr double kTop1AgreementWarning = 0.8;

struct Report {
  std::string input, output, source_architecture;
  int64_t calib_images = 0, calib_tokens_per_layer = 0;
  std::vector<LayerReport> layers;
  // End to end, the written file against the dense model on the calibration images:
  double logit_rel_error = 0;  // max |logits - dense| / max |dense|
  double top1_agreement = 0;   // share of images whose top-1 class is unchanged
  int64_t input_bytes = 0, output_bytes = 0;
  double seconds = 0;
  // What the user should act on, e.g. top-1 agreement below kTop1AgreementWarning (the converted
  // model then needs fine-tuning: tools/finetune_shiftadd.py).
  std::vector<std::string> warnings;
  nlohmann::json to_json() const;
  std::string to_table() const;
  // Writes to_json() atomically; an existing file is an Error unless `overwrite`.
  void save_json(const std::string& path, bool overwrite) const;
};

// Throws shiftadd::Error naming the file or option and what was expected.
Report convert_model(const Options& options);

}  // namespace shiftadd::convert
