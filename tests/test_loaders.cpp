// Tests for the file loaders: safetensors, .npy, images and PIL-compatible preprocessing.
// Every malformed input must raise shiftadd::Error naming the file and the specific problem.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "loaders/image.h"
#include "loaders/npy.h"
#include "loaders/safetensors.h"
#include "loaders/weight_store.h"
#include "shiftadd/error.h"

// Writes the test images; static and silenced, since only its PNG/BMP/JPEG writers are used.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#pragma GCC diagnostic pop

namespace fs = std::filesystem;
using namespace shiftadd;

namespace {

// A fresh directory per test, removed afterwards.
class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "shiftadd_loaders_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Asserts that `fn` throws shiftadd::Error whose message names `file` and contains `problem`.
template <typename Fn>
void expect_error(Fn fn, const std::string& file, const std::string& problem) {
  try {
    fn();
    ADD_FAILURE() << "no Error thrown; expected one mentioning '" << problem << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file), std::string::npos) << "message does not name the file: " << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << "message lacks '" << problem << "': " << msg;
  }
}

template <typename T>
Tensor make_tensor(DType dtype, Shape shape, const std::vector<T>& values) {
  Tensor t = Tensor::empty(dtype, std::move(shape));
  EXPECT_EQ(t.nbytes(), values.size() * sizeof(T));
  std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// ---- safetensors ------------------------------------------------------------------------------

// A safetensors file from a header text and a data region, without any validation.
std::string safetensors_bytes(const std::string& header, const std::string& data = "") {
  uint64_t len = header.size();
  std::string out(reinterpret_cast<const char*>(&len), 8);
  return out + header + data;
}

TEST_F(LoaderTest, SafetensorsRoundTripKeepsDtypesValuesAndMetadata) {
  std::map<std::string, Tensor> tensors{
      {"w.f32", make_tensor<float>(DType::F32, {2, 3}, {1, -2, 3.5f, 0, 1e-8f, -1e30f})},
      // 1.0, -2.0, 65504 (max half), smallest subnormal
      {"w.f16", make_tensor<uint16_t>(DType::F16, {4}, {0x3C00, 0xC000, 0x7BFF, 0x0001})},
      // 1.0, -3.0, 0.5 (odd count, so the next tensor would be misaligned in name order)
      {"a.bf16", make_tensor<uint16_t>(DType::BF16, {3}, {0x3F80, 0xC040, 0x3F00})},
      {"b.i64", make_tensor<int64_t>(DType::I64, {2}, {-5, int64_t{1} << 40})},
      {"c.u8", make_tensor<uint8_t>(DType::U8, {3}, {0, 7, 255})},
      {"empty", Tensor::empty(DType::F32, {0, 4})},
  };
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"arch", "vit_tiny"}};
  const std::string file = path("model.safetensors");
  save_safetensors(file, tensors, metadata, false);

  const std::string raw = read_bytes(file);
  uint64_t header_len;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);

  WeightStore store = load_safetensors(file);
  EXPECT_EQ(store.source, file);
  EXPECT_EQ(store.metadata, metadata);
  ASSERT_EQ(store.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const Tensor& loaded = store.at(name);
    EXPECT_TRUE(same_bytes(loaded, t)) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(loaded.raw()) % dtype_size(loaded.dtype()), 0u) << name;
  }

  const Tensor f32 = store.at("w.f32");
  EXPECT_EQ(to_f32(f32).raw(), f32.raw());  // no copy for F32
  const Tensor h = to_f32(store.at("w.f16"));
  EXPECT_EQ(h.dtype(), DType::F32);
  EXPECT_EQ(h.data<float>()[0], 1.0f);
  EXPECT_EQ(h.data<float>()[1], -2.0f);
  EXPECT_EQ(h.data<float>()[2], 65504.0f);
  EXPECT_EQ(h.data<float>()[3], std::ldexp(1.0f, -24));
  const Tensor b = to_f32(store.at("a.bf16"));
  EXPECT_EQ(b.shape(), (Shape{3}));
  EXPECT_EQ(b.data<float>()[0], 1.0f);
  EXPECT_EQ(b.data<float>()[1], -3.0f);
  EXPECT_EQ(b.data<float>()[2], 0.5f);
  expect_error([&] { to_f32(store.at("b.i64")); }, "to_f32", "I64");
}

TEST_F(LoaderTest, BorrowedTensorsOutliveTheStore) {
  const std::string file = path("m.safetensors");
  save_safetensors(file, {{"x", make_tensor<float>(DType::F32, {2}, {4, 5})}}, {}, false);
  Tensor x = load_safetensors(file).at("x");  // the store is gone; the mapping must not be
  EXPECT_EQ(x.data<float>()[1], 5.0f);
}

TEST_F(LoaderTest, SafetensorsRefusesToOverwriteWithoutForce) {
  const std::string file = path("m.safetensors");
  std::map<std::string, Tensor> one{{"x", make_tensor<float>(DType::F32, {1}, {1})}};
  std::map<std::string, Tensor> two{{"x", make_tensor<float>(DType::F32, {1}, {2})}};
  save_safetensors(file, one, {}, false);
  expect_error([&] { save_safetensors(file, two, {}, false); }, file, "--force");
  EXPECT_EQ(load_safetensors(file).at("x").data<float>()[0], 1.0f);
  save_safetensors(file, two, {}, true);
  EXPECT_EQ(load_safetensors(file).at("x").data<float>()[0], 2.0f);
  // Only the file itself remains: no temporary files are left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(LoaderTest, SafetensorsCopiesMisalignedTensors) {
  const std::string file = path("misaligned.safetensors");
  float value = 7.5f;
  std::string data(5, '\0');
  data[0] = 3;
  std::memcpy(&data[1], &value, 4);  // at offset 1 of the 8-aligned data region: misaligned
  write_bytes(file, safetensors_bytes(R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                      R"("x":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})",
                                      data));
  WeightStore store = load_safetensors(file);
  EXPECT_EQ(store.at("b").data<uint8_t>()[0], 3);
  EXPECT_EQ(store.at("x").data<float>()[0], 7.5f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(store.at("x").raw()) % 4, 0u);
}

TEST_F(LoaderTest, WeightStoreAtNamesSourceAndTensor) {
  WeightStore store;
  store.source = "vit.safetensors";
  expect_error([&] { store.at("head.weight"); }, "vit.safetensors", "missing tensor 'head.weight'");
}

TEST_F(LoaderTest, SafetensorsRejectsEveryMalformedInput) {
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  const std::string data8(8, '\0');
  struct Case {
    std::string name, bytes, problem;
  };
  std::string absurd(8, '\0');
  const uint64_t huge = uint64_t{1} << 40;
  std::memcpy(absurd.data(), &huge, 8);
  std::string past_end(8, '\0');
  past_end[0] = 100;
  const std::vector<Case> cases = {
      {"short", "abc", "8-byte header length"},
      {"absurd", absurd + "{}", "absurd"},
      {"past_end", past_end + "{}", "runs past the end of the file"},
      {"not_json", safetensors_bytes("{nope"), "not valid JSON"},
      {"array", safetensors_bytes("[1,2]"), "must be a JSON object, got array"},
      {"entry_not_object", safetensors_bytes(R"({"x":3})"), "expected an object"},
      {"no_dtype", safetensors_bytes(R"({"x":{"shape":[2],"data_offsets":[0,8]}})", data8),
       "missing 'dtype'"},
      {"no_shape", safetensors_bytes(R"({"x":{"dtype":"F32","data_offsets":[0,8]}})", data8),
       "missing 'shape'"},
      {"no_offsets", safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2]}})", data8),
       "missing 'data_offsets'"},
      {"dtype_type",
       safetensors_bytes(R"({"x":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", data8),
       "'dtype' must be a string"},
      {"dtype_unknown",
       safetensors_bytes(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", data8),
       "unsupported dtype 'F64'"},
      {"shape_type",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", data8),
       "'shape' must be an array"},
      {"shape_negative",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8),
       "negative dimension"},
      {"shape_float",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data8),
       "non-negative integers"},
      {"offsets_type",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data8),
       "'data_offsets' must be [begin, end]"},
      {"offsets_reversed",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data8),
       "end before they begin"},
      {"offsets_past_data",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data8),
       "run past the data region"},
      {"size_mismatch",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8),
       "needs 3 x 4 bytes"},
      {"overlap",
       safetensors_bytes(
           R"({"x":{)" + ok_entry + R"(},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           data8),
       "overlapping tensors"},
      // The format's layout rules: tensors tile the data region from 0 to its end, each name once.
      {"gap_at_start",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8),
       "a gap in the data"},
      {"gap_between",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("y":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                         data8),
       "a gap in the data"},
      {"trailing_bytes", safetensors_bytes(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data8),
       "trailing bytes"},
      {"duplicate_name",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                         data8),
       "lists 'x' twice"},
      // numel 0, but the strides of [0, 2^31, 2^31, 2^31] overflow (a fuzzing finding).
      {"stride_overflow",
       safetensors_bytes(R"({"x":{"dtype":"F32","shape":[0,2147483648,2147483648,2147483648],"data_offsets":[0,0]}})"),
       "strides overflow"},
      {"metadata_type", safetensors_bytes(R"({"__metadata__":[1]})"),
       "'__metadata__' must be an object"},
      {"metadata_value", safetensors_bytes(R"({"__metadata__":{"epochs":3}})"),
       "'__metadata__' entry 'epochs' must be a string"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string file = path(c.name + ".safetensors");
    write_bytes(file, c.bytes);
    expect_error([&] { load_safetensors(file); }, file, c.problem);
  }
  expect_error([&] { load_safetensors(path("absent.safetensors")); }, "absent.safetensors",
               "cannot open");
}

// ---- npy --------------------------------------------------------------------------------------

// A .npy file with the given header dict, padded as NumPy pads it.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
  std::string header = dict;
  const size_t preamble = major == 1 ? 10 : 12;
  header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const uint32_t len = header.size();
  out.append(reinterpret_cast<const char*>(&len), major == 1 ? 2 : 4);
  return out + header + data;
}

TEST_F(LoaderTest, NpyRoundTripForEverySupportedDtype) {
  const std::vector<Tensor> tensors = {
      make_tensor<float>(DType::F32, {2, 3}, {1, 2, 3, 4, 5, -6.25f}),
      make_tensor<int64_t>(DType::I64, {3}, {-1, 0, int64_t{1} << 50}),
      make_tensor<int32_t>(DType::I32, {1, 2}, {-7, 9}),
      make_tensor<uint8_t>(DType::U8, {2, 2, 1}, {0, 1, 128, 255}),
      make_tensor<float>(DType::F32, {}, {3.0f}),  // 0-d scalar
      Tensor::empty(DType::F32, {0, 5}),
  };
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string file = path("a" + std::to_string(i) + ".npy");
    save_npy(file, tensors[i]);
    const std::string raw = read_bytes(file);
    EXPECT_EQ((raw.size() - tensors[i].nbytes()) % 64, 0u) << "header not padded to 64 bytes";
    EXPECT_EQ(raw[raw.size() - tensors[i].nbytes() - 1], '\n');
    EXPECT_TRUE(same_bytes(load_npy(file), tensors[i])) << file;
  }
  const std::string file = path("a0.npy");
  save_npy(file, tensors[1]);  // replaces an existing file
  EXPECT_TRUE(same_bytes(load_npy(file), tensors[1]));
}

TEST_F(LoaderTest, NpyReadsVersion2And3AndNumpyHeaderVariants) {
  const std::string data(8, '\x01');
  for (int major : {2, 3}) {
    const std::string file = path("v" + std::to_string(major) + ".npy");
    write_bytes(
        file, npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", data, major));
    EXPECT_EQ(load_npy(file).shape(), (Shape{2}));
  }
  // Key order, double quotes, no trailing comma, Python 2 longs, 1-d Fortran order.
  const std::string file = path("variant.npy");
  write_bytes(file,
              npy_bytes(R"({"shape": (2L, 1L), "fortran_order": True, "descr": "<f4"})", data));
  expect_error([&] { load_npy(file); }, file, "fortran_order");
  write_bytes(file, npy_bytes(R"({"shape": (2L,), "fortran_order": True, "descr": "<f4"})", data));
  EXPECT_EQ(load_npy(file).shape(), (Shape{2}));
}

TEST_F(LoaderTest, NpyRejectsUnsupportedAndMalformedFiles) {
  const std::string f4x2(8, '\0');
  auto dict = [](const std::string& descr, const std::string& order, const std::string& shape) {
    return "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }";
  };
  struct Case {
    std::string name, bytes, problem;
  };
  const std::vector<Case> cases = {
      {"f8", npy_bytes(dict("<f8", "False", "(1,)"), f4x2), "unsupported dtype '<f8'"},
      {"big_endian", npy_bytes(dict(">f4", "False", "(2,)"), f4x2), "big-endian"},
      {"object", npy_bytes(dict("|O", "False", "(1,)"), f4x2), "object arrays"},
      {"structured",
       npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", f4x2),
       "structured dtypes"},
      {"fortran", npy_bytes(dict("<f4", "True", "(1, 2)"), f4x2), "fortran_order=True"},
      {"truncated", npy_bytes(dict("<f4", "False", "(3,)"), f4x2), "truncated data"},
      {"trailing", npy_bytes(dict("<f4", "False", "(1,)"), f4x2), "trailing data"},
      {"bad_magic", "\x93NUMPZ\x01\x00", "magic"},
      {"empty", "", "magic"},
      {"version", npy_bytes(dict("<f4", "False", "(2,)"), f4x2).replace(6, 1, "\x04"),
       "unsupported .npy format version 4.0"},
      {"header_truncated", npy_bytes(dict("<f4", "False", "(2,)"), "").substr(0, 30),
       "the file ends first"},
      {"missing_key", npy_bytes("{'descr': '<f4', 'shape': (2,), }", f4x2),
       "missing key 'fortran_order'"},
      {"extra_key", npy_bytes("{'x': 1, " + dict("<f4", "False", "(2,)").substr(1), f4x2),
       "unexpected key 'x'"},
      {"negative_dim", npy_bytes(dict("<f4", "False", "(-2,)"), f4x2), "negative dimension"},
      {"garbage", npy_bytes("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", f4x2),
       "expected True or False"},
      {"not_dict", npy_bytes("hello", f4x2), "malformed .npy header"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string file = path(c.name + ".npy");
    write_bytes(file, c.bytes);
    expect_error([&] { load_npy(file); }, file, c.problem);
  }
  const std::string bf16 = path("bf16.npy");
  expect_error([&] { save_npy(bf16, Tensor::empty(DType::BF16, {2})); }, bf16, "BF16");
}

// ---- images -----------------------------------------------------------------------------------

// A w x h image with `channels` channels whose pixels are a deterministic pattern.
std::vector<uint8_t> pattern(int w, int h, int channels) {
  std::vector<uint8_t> p(size_t(w) * h * channels);
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<uint8_t>(i * 37 + i / 7);
  return p;
}

// The first `channels` channels of every pixel of an image stored with `stored` channels.
std::vector<uint8_t> keep_channels(const std::vector<uint8_t>& p, int stored, int channels) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i < p.size(); i += stored) out.insert(out.end(), &p[i], &p[i] + channels);
  return out;
}

TEST_F(LoaderTest, DecodesPngBmpAndJpegWithPilChannelRules) {
  const int w = 7, h = 5;
  // stored channels -> channels after loading (gray+alpha -> gray, RGBA -> RGB)
  for (auto [stored, loaded] : {std::pair{1, 1}, {2, 1}, {3, 3}, {4, 3}}) {
    SCOPED_TRACE(stored);
    const std::vector<uint8_t> pixels = pattern(w, h, stored);
    const std::string png = path("p" + std::to_string(stored) + ".png");
    ASSERT_TRUE(stbi_write_png(png.c_str(), w, h, stored, pixels.data(), w * stored));
    Image img = load_image(png);
    EXPECT_EQ(img.width, w);
    EXPECT_EQ(img.height, h);
    ASSERT_EQ(img.channels, loaded);
    EXPECT_EQ(img.pixels, keep_channels(pixels, stored, loaded));
  }
  const std::vector<uint8_t> rgb = pattern(w, h, 3);
  const std::string bmp = path("p.bmp");
  ASSERT_TRUE(stbi_write_bmp(bmp.c_str(), w, h, 3, rgb.data()));
  EXPECT_EQ(load_image(bmp).pixels, rgb);

  // JPEG is lossy: a flat colour must come back within a few levels.
  const std::vector<uint8_t> flat = {200, 40, 90};
  std::vector<uint8_t> block;
  for (int i = 0; i < 16 * 16; ++i) block.insert(block.end(), flat.begin(), flat.end());
  const std::string jpg = path("p.jpg");
  ASSERT_TRUE(stbi_write_jpg(jpg.c_str(), 16, 16, 3, block.data(), 95));
  Image img = load_image(jpg);
  ASSERT_EQ(img.channels, 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) EXPECT_NEAR(img.pixels[i], flat[i % 3], 4) << i;
}

TEST_F(LoaderTest, UnreadableImagesRaiseErrorsNamingTheFile) {
  const int w = 40, h = 30;
  const std::vector<uint8_t> rgb = pattern(w, h, 3);
  const std::string png = path("full.png"), bmp = path("full.bmp"), jpg = path("full.jpg");
  ASSERT_TRUE(stbi_write_png(png.c_str(), w, h, 3, rgb.data(), w * 3));
  ASSERT_TRUE(stbi_write_bmp(bmp.c_str(), w, h, 3, rgb.data()));
  ASSERT_TRUE(stbi_write_jpg(jpg.c_str(), w, h, 3, rgb.data(), 90));
  for (auto [full, problem] : {std::pair{png, "cannot decode PNG"},
                               {jpg, "truncated JPEG"},
                               {bmp, "truncated BMP"}}) {
    const std::string bytes = read_bytes(full);
    const std::string cut = path("cut_" + fs::path(full).filename().string());
    write_bytes(cut, bytes.substr(0, bytes.size() / 2));
    expect_error([&] { load_image(cut); }, cut, problem);
  }
  const std::string text = path("notes.png");
  write_bytes(text, "this is not an image");
  expect_error([&] { load_image(text); }, text, "not a JPEG, PNG or BMP");
  expect_error([&] { load_image(path("absent.jpg")); }, "absent.jpg", "cannot open image");
}

// preprocess_image with mean 0 and std 1, converted back to HWC uint8.
std::vector<uint8_t> preprocess_to_u8(const Image& img, PreprocessConfig cfg) {
  cfg.mean.assign(cfg.channels, 0.0f);
  cfg.std.assign(cfg.channels, 1.0f);
  const size_t plane = size_t(cfg.size) * cfg.size;
  std::vector<float> chw(plane * cfg.channels);
  preprocess_image(img, cfg, chw.data());
  std::vector<uint8_t> hwc(chw.size());
  for (int c = 0; c < cfg.channels; ++c)
    for (size_t i = 0; i < plane; ++i)
      hwc[i * cfg.channels + c] = static_cast<uint8_t>(std::lround(chw[c * plane + i] * 255.0f));
  return hwc;
}

// Fixtures from tests/fixtures/gen_image_fixtures.py (PIL 9.4). Measured max difference: 0.
TEST(ImagePreprocess, MatchesPilWithinOneLevel) {
  const fs::path dir = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures/images";
  std::ifstream manifest_file(dir / "cases.json");
  ASSERT_TRUE(manifest_file) << "missing " << (dir / "cases.json");
  const nlohmann::json manifest = nlohmann::json::parse(manifest_file);
  ASSERT_FALSE(manifest["cases"].empty());
  for (const auto& c : manifest["cases"]) {
    const std::string expected_file = c["expected"];
    SCOPED_TRACE(expected_file);
    PreprocessConfig cfg;
    cfg.channels = c["channels"];
    cfg.size = c["size"];
    cfg.crop_pct = c["crop_pct"].get<float>();
    cfg.resize_exact = c["resize_exact"];
    cfg.interpolation = c["interpolation"];
    const Image img = load_image((dir / c["source"].get<std::string>()).string());
    const std::vector<uint8_t> ours = preprocess_to_u8(img, cfg);
    const Tensor expected = load_npy((dir / expected_file).string());
    ASSERT_EQ(expected.shape(), (Shape{cfg.size, cfg.size, cfg.channels}));
    int max_diff = 0;
    for (size_t i = 0; i < ours.size(); ++i)
      max_diff = std::max(max_diff, std::abs(int{ours[i]} - int{expected.data<uint8_t>()[i]}));
    EXPECT_LE(max_diff, 1);
  }
}

TEST(ImagePreprocess, NormalizesPerChannelIntoChw) {
  Image img{2, 1, 3, {10, 20, 30, 40, 50, 60}};
  PreprocessConfig cfg;
  cfg.size = 2;
  cfg.crop_pct = 1.0f;
  cfg.resize_exact = true;  // 2x1 -> 2x2 upscale; checked only through the normalisation
  std::vector<float> unit(12), normalized(12);
  PreprocessConfig identity = cfg;
  identity.mean = {0, 0, 0};
  identity.std = {1, 1, 1};
  preprocess_image(img, identity, unit.data());
  preprocess_image(img, cfg, normalized.data());
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 4; ++i)
      EXPECT_FLOAT_EQ(normalized[c * 4 + i], (unit[c * 4 + i] - cfg.mean[c]) / cfg.std[c]);
  // The width is unchanged, so only the vertical pass runs and the pixels survive exactly.
  EXPECT_FLOAT_EQ(unit[0], 10 / 255.0f);
  EXPECT_FLOAT_EQ(unit[4 + 1], 50 / 255.0f);
}

TEST(ImagePreprocess, RejectsInvalidConfigs) {
  const Image img{4, 4, 3, std::vector<uint8_t>(48, 100)};
  std::vector<float> out(3 * 4 * 4);
  PreprocessConfig cfg;
  cfg.size = 4;
  cfg.interpolation = "lanczos";
  expect_error([&] { preprocess_image(img, cfg, out.data()); }, "preprocess", "'lanczos'");
  cfg.interpolation = "bilinear";
  cfg.mean = {0.5f};
  expect_error([&] { preprocess_image(img, cfg, out.data()); }, "preprocess", "mean and std");
  cfg = PreprocessConfig{};
  cfg.size = 4;
  cfg.crop_pct = 1.5f;
  expect_error([&] { preprocess_image(img, cfg, out.data()); }, "preprocess", "crop_pct");
  cfg.crop_pct = 1.0f;
  cfg.channels = 2;
  expect_error([&] { preprocess_image(img, cfg, out.data()); }, "preprocess", "channels");
}

}  // namespace
