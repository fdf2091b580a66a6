#include "loaders/image.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "shiftadd/error.h"

// JPEG and PNG go to libjpeg-turbo and libpng (maintained, fuzzed by OSS-Fuzz); stb_image
// (whose JPEG and PNG decoders fuzzing broke) only decodes BMP.
#include <csetjmp>
#include <jpeglib.h>
#include <jerror.h>  // JWRN_JPEG_EOF
#include <png.h>
#define STBI_ONLY_BMP
#define STBI_NO_STDIO_WARNINGS
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

namespace shiftadd {
namespace {

// PIL's decompression-bomb limit: larger images are refused from their header, before any
// pixel is decoded or resampled.
constexpr int64_t kMaxPixels = 2 * 89'478'485;

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

// ---- PIL's separable resampling (libImaging/Resample.c), 8-bit path ---------------------------

// Fixed-point precision of PIL's 8-bit coefficients.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic_filter(double x) {  // Keys cubic with a = -0.5, as PIL
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double bilinear_filter(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Filter {
  double (*weight)(double);
  double support;
};

// For each output position: the first input index, the number of taps, and ksize weights.
struct Taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

// PIL's precompute_coeffs + normalize_coeffs_8bpc: when downscaling the filter is stretched by
// the scale factor (antialiasing), and weights are normalised and rounded to fixed point.
Taps compute_taps(int in_size, int out_size, const Filter& filter) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = filter.support * filter_scale;
  Taps taps;
  taps.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(static_cast<size_t>(out_size) * taps.ksize, 0);
  // PIL multiplies by the reciprocal; dividing could round differently in the last bit.
  const double inv_filter_scale = 1.0 / filter_scale;
  std::vector<double> w(taps.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = filter.weight((x + xmin - center + 0.5) * inv_filter_scale);
      total += w[x];
    }
    int32_t* k = &taps.weights[static_cast<size_t>(xx) * taps.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double normalized = total != 0.0 ? w[x] / total : w[x];
      const double fixed = normalized * (1 << kPrecisionBits);
      k[x] = static_cast<int32_t>(fixed < 0 ? fixed - 0.5 : fixed + 0.5);
    }
    taps.first[xx] = xmin;
    taps.count[xx] = xmax;
  }
  return taps;
}

uint8_t clip8(int64_t v) {
  if (v >= (int64_t{1} << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<uint8_t>(v >> kPrecisionBits);
}

// One separable pass over an HWC image. `step` is the distance in bytes between neighbouring
// taps: `channels` for the horizontal pass, a row for the vertical one.
void resample_axis(const uint8_t* in, uint8_t* out, int out_along, int across, int channels,
                   size_t in_along_step, size_t in_across_step, size_t out_along_step,
                   size_t out_across_step, const Taps& taps) {
  for (int o = 0; o < out_along; ++o) {
    const int32_t* k = &taps.weights[static_cast<size_t>(o) * taps.ksize];
    const uint8_t* src0 = in + taps.first[o] * in_along_step;
    for (int a = 0; a < across; ++a) {
      for (int c = 0; c < channels; ++c) {
        const uint8_t* src = src0 + a * in_across_step + c;
        int64_t sum = int64_t{1} << (kPrecisionBits - 1);  // rounds the final shift
        for (int t = 0; t < taps.count[o]; ++t) sum += int64_t{src[t * in_along_step]} * k[t];
        out[o * out_along_step + a * out_across_step + c] = clip8(sum);
      }
    }
  }
}

// PIL's nearest-neighbour resize (ImagingScaleAffine): source index = (int)((i + 0.5) * scale),
// accumulated in double exactly as PIL does.
std::vector<int> nearest_indices(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  std::vector<int> idx(out_size);
  double pos = scale * 0.5;
  for (int i = 0; i < out_size; ++i, pos += scale)
    idx[i] = std::min(static_cast<int>(pos), in_size - 1);
  return idx;
}

Image resize_nearest(const Image& img, int out_w, int out_h) {
  const std::vector<int> xs = nearest_indices(img.width, out_w),
                         ys = nearest_indices(img.height, out_h);
  Image out{out_w, out_h, img.channels, std::vector<uint8_t>(size_t(out_w) * out_h * img.channels)};
  uint8_t* dst = out.pixels.data();
  for (int y = 0; y < out_h; ++y)
    for (int x = 0; x < out_w; ++x)
      for (int c = 0; c < img.channels; ++c)
        *dst++ = img.pixels[(size_t(ys[y]) * img.width + xs[x]) * img.channels + c];
  return out;
}

// PIL's Image.resize: horizontal pass then vertical, each skipped when that size is unchanged,
// rounding to uint8 after each pass.
Image resize_like_pil(const Image& img, int out_w, int out_h, const std::string& interpolation) {
  if (interpolation == "nearest") return resize_nearest(img, out_w, out_h);
  const Filter filter =
      interpolation == "bicubic" ? Filter{bicubic_filter, 2.0} : Filter{bilinear_filter, 1.0};
  const size_t c = img.channels;
  Image cur = img;
  if (out_w != cur.width) {
    Image next{out_w, cur.height, cur.channels,
               std::vector<uint8_t>(size_t(out_w) * cur.height * c)};
    resample_axis(cur.pixels.data(), next.pixels.data(), out_w, cur.height, cur.channels, c,
                  size_t(cur.width) * c, c, size_t(out_w) * c,
                  compute_taps(cur.width, out_w, filter));
    cur = std::move(next);
  }
  if (out_h != cur.height) {
    Image next{cur.width, out_h, cur.channels, std::vector<uint8_t>(size_t(cur.width) * out_h * c)};
    resample_axis(cur.pixels.data(), next.pixels.data(), out_h, cur.width, cur.channels,
                  size_t(cur.width) * c, c, size_t(cur.width) * c, c,
                  compute_taps(cur.height, out_h, filter));
    cur = std::move(next);
  }
  return cur;
}

// PIL's RGB -> "L" (Convert.c rgb2l): ITU-R 601-2 luma in 16-bit fixed point, rounded.
Image to_luma(const Image& img) {
  Image out{img.width, img.height, 1, std::vector<uint8_t>(size_t(img.width) * img.height)};
  for (size_t i = 0; i < out.pixels.size(); ++i) {
    const uint8_t* p = &img.pixels[i * 3];
    out.pixels[i] =
        static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
  }
  return out;
}

// Python's round() on (extra / 2.0), which rounds halves to even, as torchvision's CenterCrop.
int center_crop_offset(int extra) {
  const int half = extra / 2;
  return (extra % 2 == 1 && half % 2 == 1) ? half + 1 : half;
}

// floor(size / crop_pct) as timm computes it in double. A float crop_pct such as 0.85f is not
// the double 0.85 that Python would use, so recover the short decimal it was written as.
int resize_target(int size, float crop_pct) {
  char text[32];
  std::snprintf(text, sizeof text, "%.7g", crop_pct);
  return static_cast<int>(std::floor(size / std::strtod(text, nullptr)));
}

void check_config(const Image& img, const PreprocessConfig& cfg) {
  if (img.width <= 0 || img.height <= 0 || (img.channels != 1 && img.channels != 3) ||
      img.pixels.size() != size_t(img.width) * img.height * img.channels)
    throw Error("preprocess_image: invalid image (" + std::to_string(img.width) + "x" +
                std::to_string(img.height) + ", " + std::to_string(img.channels) + " channels, " +
                std::to_string(img.pixels.size()) + " bytes)");
  if (cfg.channels != 1 && cfg.channels != 3)
    throw Error("preprocess_image: channels must be 1 or 3, got " + std::to_string(cfg.channels));
  if (cfg.size <= 0 || cfg.size > 16384)
    throw Error("preprocess_image: size must be in 1..16384, got " + std::to_string(cfg.size));
  if (cfg.resize_exact && cfg.resize_exact_size != 0 &&
      (cfg.resize_exact_size < cfg.size || cfg.resize_exact_size > 16384))
    throw Error("preprocess_image: resize size " + std::to_string(cfg.resize_exact_size) +
                " must be in " + std::to_string(cfg.size) + "..16384 to crop " + std::to_string(cfg.size));
  if (!cfg.resize_exact && !(cfg.crop_pct > 0.0f && cfg.crop_pct <= 1.0f))
    throw Error("preprocess_image: crop_pct must be in (0, 1], got " +
                std::to_string(cfg.crop_pct));
  if (cfg.interpolation != "bicubic" && cfg.interpolation != "bilinear" &&
      cfg.interpolation != "nearest")
    throw Error("preprocess_image: unknown interpolation '" + cfg.interpolation +
                "' (expected bicubic, bilinear or nearest)");
  if (cfg.mean.size() != size_t(cfg.channels) || cfg.std.size() != size_t(cfg.channels))
    throw Error("preprocess_image: mean and std need " + std::to_string(cfg.channels) +
                " values each, got " + std::to_string(cfg.mean.size()) + " and " +
                std::to_string(cfg.std.size()));
  for (float s : cfg.std)
    if (!(s != 0.0f && std::isfinite(s)))
      throw Error("preprocess_image: std values must be finite and non-zero");
}

uint32_t read_be32(const uint8_t* p) { return (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }

uint32_t read_le(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void check_pixel_count(int64_t width, int64_t height, const std::string& path) {
  if (width <= 0 || height <= 0)
    throw Error(path + ": image header says " + std::to_string(width) + "x" + std::to_string(height) + " pixels");
  if (width > kMaxPixels || height > kMaxPixels || width * height > kMaxPixels)  // 32-bit sides: no overflow
    throw Error(path + ": image is " + std::to_string(width) + "x" + std::to_string(height) +
                " pixels, over the limit of " + std::to_string(kMaxPixels));
}

// stb_image decodes a truncated BMP without complaint (missing pixels read as 0, slowly for a
// tall image) and reads unknown compression codes as uncompressed rows: check that the header is
// one stb reads exactly and that the file holds every row the header promises.
void check_bmp_complete(std::FILE* file, const std::string& path) {
  uint8_t h[34] = {};
  const size_t got = std::fread(h, 1, sizeof h, file);
  std::rewind(file);
  if (got < 26) throw Error(path + ": truncated BMP header (" + std::to_string(got) + " bytes)");
  const uint32_t dib_size = read_le(h + 14, 4);
  int64_t width = 0, height = 0, bits = 0;
  uint32_t compression = 0;
  if (dib_size == 12) {  // OS/2 BITMAPCOREHEADER: 16-bit sizes, never compressed
    width = read_le(h + 18, 2);
    height = read_le(h + 20, 2);
    bits = read_le(h + 24, 2);
  } else if (dib_size >= 40 && got == sizeof h) {
    width = static_cast<int32_t>(read_le(h + 18, 4));
    height = std::abs(int64_t{static_cast<int32_t>(read_le(h + 22, 4))});
    bits = read_le(h + 28, 2);
    compression = read_le(h + 30, 4);
  } else {
    throw Error(path + ": BMP header of " + std::to_string(dib_size) + " bytes is not supported");
  }
  // BI_RGB and BI_BITFIELDS rows only (RLE, embedded JPEG/PNG and unknown codes are refused).
  if (compression != 0 && compression != 3)
    throw Error(path + ": BMP compression " + std::to_string(compression) +
                " is not supported (uncompressed or bitfield BMPs are)");
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32)
    throw Error(path + ": BMP with " + std::to_string(bits) + " bits per pixel is not supported");
  check_pixel_count(width, height, path);
  const int64_t needed = read_le(h + 10, 4) + (width * bits + 31) / 32 * 4 * height;
  std::fseek(file, 0, SEEK_END);
  const int64_t file_size = std::ftell(file);
  std::rewind(file);
  if (file_size < needed)
    throw Error(path + ": truncated BMP: its header needs " + std::to_string(needed) +
                " bytes, the file has " + std::to_string(file_size));
}


// The decoders below are C libraries that report errors by longjmp: the functions that call
// setjmp hold no C++ object across it, and write into an Image allocated before it.

struct JpegErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = "";
  bool truncated = false;
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}

void jpeg_note(j_common_ptr cinfo, int level) {
  // Warnings (level -1) are kept quiet; a stream that ends early is an error, as in PIL.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegErrors*>(cinfo->err)->truncated = true;
}

// Decodes into img.pixels (sized from the header); returns "" or the reason it cannot.
const char* decode_jpeg_rows(jpeg_decompress_struct& cinfo, JpegErrors& err, Image& img) {
  if (setjmp(err.jump)) return err.message;
  jpeg_start_decompress(&cinfo);
  const size_t stride = static_cast<size_t>(img.width) * img.channels;
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = img.pixels.data() + cinfo.output_scanline * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
    if (err.truncated) return "the file ends before the image data does (truncated JPEG)";
  }
  jpeg_finish_decompress(&cinfo);
  return err.truncated ? "the file ends before the image data does (truncated JPEG)" : "";
}

const char* read_jpeg_header(jpeg_decompress_struct& cinfo, JpegErrors& err, std::FILE* file) {
  if (setjmp(err.jump)) return err.message;
  jpeg_stdio_src(&cinfo, file);
  jpeg_read_header(&cinfo, TRUE);
  // Gray stays gray; every other colour space becomes RGB (CMYK/YCCK are refused by libjpeg's
  // converter with an error).
  cinfo.out_color_space = cinfo.jpeg_color_space == JCS_GRAYSCALE ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_calc_output_dimensions(&cinfo);
  return "";
}

Image load_jpeg(std::FILE* file, const std::string& path) {
  jpeg_decompress_struct cinfo;
  JpegErrors err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_note;
  jpeg_create_decompress(&cinfo);
  struct Destroy {
    jpeg_decompress_struct* c;
    ~Destroy() { jpeg_destroy_decompress(c); }
  } destroy{&cinfo};
  if (const char* why = read_jpeg_header(cinfo, err, file); *why)
    throw Error(path + ": cannot decode JPEG: " + why);
  check_pixel_count(cinfo.output_width, cinfo.output_height, path);
  Image img;
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.channels = cinfo.output_components;
  if (img.channels != 1 && img.channels != 3)
    throw Error(path + ": JPEG with " + std::to_string(img.channels) + " components; expected gray or colour");
  img.pixels.resize(static_cast<size_t>(img.width) * img.height * img.channels);
  if (const char* why = decode_jpeg_rows(cinfo, err, img); *why) throw Error(path + ": cannot decode JPEG: " + why);
  return img;
}

struct PngErrors {
  std::jmp_buf jump;
  char message[200] = "";
};

void png_fail(png_structp png, png_const_charp message) {
  auto* e = static_cast<PngErrors*>(png_get_error_ptr(png));
  std::snprintf(e->message, sizeof e->message, "%s", message);
  std::longjmp(e->jump, 1);
}
void png_quiet(png_structp, png_const_charp) {}

// Reads the header and sets up PIL's convert("L"/"RGB"): palette to RGB, 1/2/4-bit gray to 8,
// 16-bit samples to 8 (high byte), alpha and transparency dropped, no gamma correction.
const char* read_png_header(png_structp png, png_infop info, PngErrors& err, std::FILE* file, Image& img) {
  if (setjmp(err.jump)) return err.message;
  png_init_io(png, file);
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_bit_depth(png, info) == 16) png_set_strip_16(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  img.width = static_cast<int>(std::min<png_uint_32>(png_get_image_width(png, info), INT32_MAX));
  img.height = static_cast<int>(std::min<png_uint_32>(png_get_image_height(png, info), INT32_MAX));
  img.channels = png_get_channels(png, info);
  return "";
}

const char* read_png_rows(png_structp png, PngErrors& err, png_bytep* rows) {
  if (setjmp(err.jump)) return err.message;
  png_read_image(png, rows);
  png_read_end(png, nullptr);
  return "";
}

Image load_png(std::FILE* file, const std::string& path) {
  PngErrors err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_quiet);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  struct Destroy {
    png_structp* p;
    png_infop* i;
    ~Destroy() { png_destroy_read_struct(p, i, nullptr); }
  } destroy{&png, &info};
  if (!png || !info) throw Error(path + ": out of memory decoding PNG");
  png_set_user_limits(png, 1 << 24, 1 << 24);
  png_set_chunk_malloc_max(png, 64 << 20);  // text and ICC chunks: no image needs more
  // libpng reads on past IHDR before it returns the size: check the size from IHDR first.
  uint8_t head[24];
  if (std::fread(head, 1, sizeof head, file) == sizeof head && std::memcmp(head + 12, "IHDR", 4) == 0)
    check_pixel_count(read_be32(head + 16), read_be32(head + 20), path);
  std::rewind(file);
  Image img;
  if (const char* why = read_png_header(png, info, err, file, img); *why)
    throw Error(path + ": cannot decode PNG: " + why);
  check_pixel_count(img.width, img.height, path);
  if (img.channels != 1 && img.channels != 3)
    throw Error(path + ": PNG decodes to " + std::to_string(img.channels) + " channels; expected gray or RGB");
  const size_t stride = static_cast<size_t>(img.width) * img.channels;
  if (png_get_rowbytes(png, info) != stride) throw Error(path + ": PNG rows have an unexpected layout");
  img.pixels.resize(stride * img.height);
  std::vector<png_bytep> rows(static_cast<size_t>(img.height));
  for (int y = 0; y < img.height; ++y) rows[y] = img.pixels.data() + y * stride;
  if (const char* why = read_png_rows(png, err, rows.data()); *why)
    throw Error(path + ": cannot decode PNG: " + why);
  return img;
}

Image load_bmp(std::FILE* file, const std::string& path) {
  int width = 0, height = 0, channels = 0;
  if (!stbi_info_from_file(file, &width, &height, &channels))
    throw Error(path + ": cannot decode BMP: " + stbi_failure_reason());
  check_bmp_complete(file, path);
  std::unique_ptr<stbi_uc, void (*)(void*)> decoded(stbi_load_from_file(file, &width, &height, &channels, 0),
                                                    stbi_image_free);
  if (!decoded) throw Error(path + ": cannot decode BMP: " + stbi_failure_reason());
  // stb gives 1 = gray, 2 = gray+alpha, 3 = RGB, 4 = RGBA; alpha is dropped.
  Image img;
  img.width = width;
  img.height = height;
  img.channels = channels <= 2 ? 1 : 3;
  const size_t n = size_t(width) * height;
  img.pixels.resize(n * img.channels);
  for (size_t i = 0; i < n; ++i)
    for (int c = 0; c < img.channels; ++c) img.pixels[i * img.channels + c] = decoded.get()[i * channels + c];
  return img;
}

}  // namespace

Image load_image(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw Error(path + ": cannot open image: " + std::strerror(errno));
  uint8_t magic[8] = {};
  const size_t got = std::fread(magic, 1, sizeof magic, file.get());
  std::rewind(file.get());
  if (got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) return load_jpeg(file.get(), path);
  if (got == 8 && png_sig_cmp(magic, 0, 8) == 0) return load_png(file.get(), path);
  if (got >= 2 && magic[0] == 'B' && magic[1] == 'M') return load_bmp(file.get(), path);
  throw Error(path + ": cannot decode image: not a JPEG, PNG or BMP file");
}

void preprocess_image(const Image& img, const PreprocessConfig& cfg, float* out) {
  check_config(img, cfg);
  // PIL pipelines convert to "L" before resizing; gray -> RGB can wait until the end since the
  // three replicated channels would be resized identically.
  const Image source = cfg.channels == 1 && img.channels == 3 ? to_luma(img) : img;

  const int exact = cfg.resize_exact_size > 0 ? cfg.resize_exact_size : cfg.size;
  int resized_w = exact, resized_h = exact;
  if (!cfg.resize_exact) {
    // torchvision Resize(int): the shorter side becomes `target`, the longer keeps the aspect
    // ratio truncated, int(target * long / short).
    const int target = resize_target(cfg.size, cfg.crop_pct);
    const bool wide = source.width > source.height;
    const int shorter = wide ? source.height : source.width;
    const int longer = wide ? source.width : source.height;
    const int scaled_long =
        static_cast<int>(static_cast<double>(int64_t{target} * longer) / shorter);
    if (int64_t{target} * scaled_long > kMaxPixels)
      throw Error("preprocess_image: a " + std::to_string(source.width) + "x" +
                  std::to_string(source.height) + " image is too elongated to resize to a " +
                  std::to_string(target) + "-pixel shorter side");
    resized_w = wide ? scaled_long : target;
    resized_h = wide ? target : scaled_long;
  }
  const Image resized = resized_w == source.width && resized_h == source.height
                            ? source
                            : resize_like_pil(source, resized_w, resized_h, cfg.interpolation);
  const int left = cfg.resize_exact ? (resized.width - cfg.size) / 2 : center_crop_offset(resized.width - cfg.size);
  const int top = cfg.resize_exact ? (resized.height - cfg.size) / 2 : center_crop_offset(resized.height - cfg.size);

  const size_t plane = size_t(cfg.size) * cfg.size;
  for (int c = 0; c < cfg.channels; ++c) {
    const int src_c = resized.channels == 1 ? 0 : c;
    for (int y = 0; y < cfg.size; ++y) {
      const uint8_t* row =
          &resized.pixels[(size_t(top + y) * resized.width + left) * resized.channels];
      float* dst = out + c * plane + size_t(y) * cfg.size;
      for (int x = 0; x < cfg.size; ++x)
        dst[x] = (row[x * resized.channels + src_c] / 255.0f - cfg.mean[c]) / cfg.std[c];
    }
  }
}

}  // namespace shiftadd
