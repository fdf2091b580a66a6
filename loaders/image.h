#pragma once
// Image decoding (JPEG with libjpeg-turbo, PNG with libpng, BMP with stb_image) and the eval-time preprocessing of timm and
// Hugging Face, reproducing PIL's resampling so inputs match the PyTorch reference.
#include <cstdint>
#include <string>
#include <vector>

namespace shiftadd {

struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;  // HWC interleaved, 1 or 3 channels
};

// Decodes `path`. Gray and gray+alpha give 1 channel; RGB and RGBA give 3 (alpha is dropped, as
// PIL's convert("RGB") does). Throws Error naming the file and the decoder's reason on failure,
// and for images over PIL's decompression-bomb limit (2 x 89478485 pixels), read from the header.
Image load_image(const std::string& path);

struct PreprocessConfig {
  int channels = 3;         // model input channels (1 or 3)
  int size = 224;           // output is size x size
  float crop_pct = 0.875f;  // resize shorter side to floor(size / crop_pct), then center-crop size
  // Hugging Face image processors: resize straight to resize_exact_size squared (0 = size),
  // ignoring the aspect ratio, then center-crop size (HF's floor offsets).
  bool resize_exact = false;
  int resize_exact_size = 0;
  std::string interpolation = "bicubic";  // "bicubic" | "bilinear" | "nearest"
  std::vector<float> mean{0.485f, 0.456f, 0.406f}, std{0.229f, 0.224f, 0.225f};  // per channel
};

// Converts channels (gray -> replicated RGB, RGB -> PIL "L"), resizes like PIL's Image.resize,
// center-crops like torchvision, then writes (pixel / 255 - mean) / std to `out`, which holds
// cfg.channels * cfg.size * cfg.size floats in CHW order. Throws Error on an invalid config.
void preprocess_image(const Image& img, const PreprocessConfig& cfg, float* out);

}  // namespace shiftadd
