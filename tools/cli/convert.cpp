// shiftadd convert INPUT OUTPUT : dense ViT / DeiT / PVTv2 -> ShiftAddViT model file (docs/converter.md).
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "shiftadd/convert.h"
#include "progress.h"

namespace shiftadd::cli {

void register_convert(CLI::App& app) {
  struct Opts {
    convert::Options c;
    std::string report;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "convert",
      "Convert a dense ViT/DeiT (timm, Hugging Face, ONNX) or PVTv2 to a ShiftAddViT model file: shift or MoE "
      "linear layers, Hamming-space (KSH) attention, calibrated on images; prints a per-layer error report");
  sub->add_option("input", o->c.input, "Dense model (file or directory)")->required();
  sub->add_option("output", o->c.output, "Converted model (.safetensors; refused if it exists, unless --force)")
      ->required();
  sub->add_flag("-f,--force", o->c.force, "Replace OUTPUT if it exists");
  sub->add_option("--mlp", o->c.mlp, "MLP fc1/fc2: dense, shift (power-of-two weights) or moe (routed)")
      ->check(CLI::IsMember({"dense", "shift", "moe"}))
      ->capture_default_str();
  sub->add_option("--attn-proj", o->c.attn_proj, "Attention qkv/proj: dense, shift or moe")
      ->check(CLI::IsMember({"dense", "shift", "moe"}))
      ->capture_default_str();
  sub->add_option("--attn", o->c.attn,
                  "Attention: dense (softmax, kept) or ksh-linear (q/k hashed to binary codes, additions only)")
      ->check(CLI::IsMember({"dense", "ksh-linear"}))
      ->capture_default_str();
  sub->add_option("--ksh-blocks", o->c.ksh_blocks,
                  "Blocks that get KSH attention (default: all but the last, as upstream keeps its last stage "
                  "softmax)")
      ->delimiter(',');
  sub->add_option("--bits", o->c.bits, "KSH hash bits (<= anchors)")->check(CLI::Range(1, 64))->capture_default_str();
  sub->add_option("--anchors", o->c.anchors, "KSH anchors m")->check(kPositive)->capture_default_str();
  sub->add_option("--calib", o->c.calib,
                  "Calibration images: a folder (of class folders or images), a .npy (N,C,H,W) of preprocessed "
                  "inputs, or IDX files (a directory with train-*/t10k-* files, or an images file)")
      ->required();
  sub->add_option("--calib-split", o->c.calib_split, "IDX directories: which split calibrates (train | test)")
      ->check(CLI::IsMember({"train", "test"}))
      ->capture_default_str();
  sub->add_option("--calib-count", o->c.calib_count, "Calibration images used (the first N)")
      ->check(kPositive)
      ->capture_default_str();
  auto* ratio = sub->add_option("--shift-ratio", o->c.shift_ratio, "MoE: share of tokens routed to the shift expert")
                    ->check(CLI::Range(0.0, 1.0))
                    ->capture_default_str();
  sub->add_flag("--latency-aware", o->c.latency_aware,
                "MoE: give each layer's faster expert more tokens, share = t_dense / (t_dense + t_shift) "
                "measured on this machine")
      ->excludes(ratio);
  sub->add_flag("--shift-scale", o->c.shift_scale,
                "Per-output-channel scale on shift layers (an extension of upstream's pure powers of two)");
  sub->add_option("--bits-shift", o->c.shift_bits,
                  "Stored bits per shift weight: 4 (sign + the 7 exponents below each output row's largest, "
                  "exactly what --mode fast computes with; smallest file) or 5 (sign + any exponent in [-14, 0])")
      ->check(CLI::IsMember({4, 5}))
      ->capture_default_str();
  sub->add_option("--seed", o->c.seed, "Random seed (token sampling, k-means)")->capture_default_str();
  sub->add_option("-t,--threads", o->c.threads, "Worker threads (0 = all cores)")->check(kNonNegative);
  sub->add_option("--report", o->report, "Also write the report as JSON to this file (refused if it exists, unless --force)");
  sub->add_flag("--json", o->json, "Print the report as JSON instead of a table");
  sub->callback([o] {
    refuse_existing(o->report, "--report", o->c.force);  // before anything is written
    std::unique_ptr<Progress> bar;
    std::string stage;
    o->c.progress = [&](const std::string& s, int64_t done, int64_t total) {
      if (s != stage) {
        if (bar) bar->finish();
        stage = s;
        bar = std::make_unique<Progress>(s, total, s == "layers" ? "layer" : "img");
      }
      bar->update(done);
    };
    const convert::Report rep = convert::convert_model(o->c);
    if (bar) bar->finish();
    if (!o->report.empty()) rep.save_json(o->report, o->c.force);
    if (o->json) {
      std::cout << rep.to_json().dump() << "\n";
      for (const std::string& w : rep.warnings) std::cerr << "warning: " << w << "\n";
    } else {
      std::cout << rep.to_table();
    }
  });
}

}  // namespace shiftadd::cli
