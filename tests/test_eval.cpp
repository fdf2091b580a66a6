// Datasets (IDX gzip or not, class folders, .npy), Model::preprocess_pixels and `shiftadd eval`.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>

#include "shiftadd/dataset.h"
#include "shiftadd/shiftadd.h"

namespace fs = std::filesystem;
using shiftadd::Dataset;
using shiftadd::DatasetOptions;

namespace {

const fs::path kRoot = SHIFTADD_SOURCE_DIR;
const fs::path kIdx = kRoot / "tests/fixtures/idx";  // first 64 Fashion-MNIST test images
const fs::path kModel = kRoot / "models/fashion_vit";
const fs::path kRgbModel = kRoot / "tests/fixtures/goldens/deit_distilled_p16_64";  // 3 x 64 x 64, 5 classes

struct Result {
  int code = -1;
  std::string out;  // stdout
  std::string all;  // stdout and stderr
};

Result cli(const std::string& args) {
  Result r;
  const fs::path err = fs::temp_directory_path() / ("shiftadd_eval_err_" + std::to_string(::getpid()));
  const std::string cmd = std::string(SHIFTADD_CLI) + " " + args + " 2>" + err.string();
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err);
  r.all = r.out + std::string(std::istreambuf_iterator<char>(e), {});
  fs::remove(err);
  return r;
}

nlohmann::json expected() {
  std::ifstream in(kIdx / "expected.json");
  return nlohmann::json::parse(in);
}

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("shiftadd_eval_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void put_be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

// An uncompressed IDX file: magic 00 00 08 ndims, big-endian dims, then `data`.
std::vector<uint8_t> idx(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b{0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) put_be32(b, d);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// A small uncompressed dataset: n images of h x w with pixel value (i * 7 + k) % 256.
fs::path make_idx_dir(const std::string& name, uint32_t n, uint32_t h, uint32_t w, std::vector<uint8_t> labels) {
  const fs::path d = temp_dir(name);
  std::vector<uint8_t> px(size_t(n) * h * w);
  for (size_t k = 0; k < px.size(); ++k) px[k] = static_cast<uint8_t>((k / (h * w) * 7 + k) % 256);
  write_bytes(d / "t10k-images-idx3-ubyte", idx({n, h, w}, px));
  write_bytes(d / "t10k-labels-idx1-ubyte", idx({static_cast<uint32_t>(labels.size())}, labels));
  return d;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const shiftadd::Error& e) {
    return e.what();
  }
  return "(no error)";
}

DatasetOptions split(const std::string& s) {
  DatasetOptions o;
  o.split = s;
  return o;
}
DatasetOptions limit(int64_t n) {
  DatasetOptions o;
  o.limit = n;
  return o;
}
DatasetOptions with_labels(const std::vector<std::string>& labels) {
  DatasetOptions o;
  o.labels = labels;
  return o;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(Dataset, IdxFixtureGzipDirectoryAndFile) {
  const nlohmann::json want = expected();
  const Dataset d = Dataset::open(kIdx.string(), split("test"));
  EXPECT_EQ(d.format(), "idx");
  ASSERT_EQ(d.size(), 64);
  ASSERT_TRUE(d.has_labels());
  for (int64_t i = 0; i < d.size(); ++i) EXPECT_EQ(d.label(i), want["labels"][i].get<int>()) << i;
  EXPECT_NO_THROW(d.check_labels(10));
  EXPECT_TRUE(contains(d.description(), "t10k-images-idx3-ubyte.gz"));

  // The images file named directly finds its labels beside it; --limit keeps the first N.
  const Dataset f = Dataset::open((kIdx / "t10k-images-idx3-ubyte.gz").string(), limit(5));
  ASSERT_EQ(f.size(), 5);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(f.label(i), d.label(i));

  // Test image 0 is the bundled sample 0000_ankle_boot.png: the IDX path and the PNG path give
  // the model the same input.
  auto model = shiftadd::Model::load(kModel.string());
  ASSERT_EQ(model->input_size(), 28 * 28);
  std::vector<float> x(static_cast<size_t>(model->input_size()));
  d.preprocess(0, *model, x.data());
  EXPECT_EQ(x, model->preprocess_image((kModel / "samples/0000_ankle_boot.png").string()));
}

TEST(Dataset, IdxSplitsAndNames) {
  // No train files in the fixture: the error names what was looked for.
  EXPECT_TRUE(contains(error_of([] { Dataset::open(kIdx.string(), split("train")); }), "train-images-idx3-ubyte"));
  EXPECT_TRUE(contains(error_of([] { Dataset::open(kIdx.string(), split("val")); }), "unknown split 'val'"));
  // test-* names are accepted for the test split, uncompressed files too.
  const fs::path d = temp_dir("testnames");
  std::vector<uint8_t> px(3 * 4 * 5, 200);
  write_bytes(d / "test-images-idx3-ubyte", idx({3, 4, 5}, px));
  write_bytes(d / "test-labels-idx1-ubyte", idx({3}, {2, 0, 1}));
  const Dataset ds = Dataset::open(d.string());
  ASSERT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.label(0), 2);
  EXPECT_EQ(ds.label(2), 1);

  // (N, H, W, 3) colour images with a labels file given explicitly.
  const fs::path c = temp_dir("colour");
  std::vector<uint8_t> rgb(2 * 8 * 8 * 3);
  for (size_t k = 0; k < rgb.size(); ++k) rgb[k] = static_cast<uint8_t>(k * 5);
  write_bytes(c / "colour-images.idx", idx({2, 8, 8, 3}, rgb));
  write_bytes(c / "y.idx", idx({2}, {4, 3}));
  DatasetOptions o;
  o.labels_path = (c / "y.idx").string();
  const Dataset cd = Dataset::open((c / "colour-images.idx").string(), o);
  ASSERT_EQ(cd.size(), 2);
  EXPECT_EQ(cd.label(1), 3);
  auto rgb_model = shiftadd::Model::load(kRgbModel.string());
  std::vector<float> x(static_cast<size_t>(rgb_model->input_size()));
  cd.preprocess(1, *rgb_model, x.data());
  EXPECT_EQ(x, rgb_model->preprocess_pixels(rgb.data() + 8 * 8 * 3, 8, 8, 3));
  write_bytes(c / "colour-images.idx", idx({2, 8, 4, 2}, std::vector<uint8_t>(2 * 8 * 4 * 2)));
  EXPECT_TRUE(contains(error_of([&] { Dataset::open((c / "colour-images.idx").string(), o); }), "2 channels"));
}

TEST(Dataset, IdxPixelsGoThroughTheModelPipeline) {
  auto model = shiftadd::Model::load(kModel.string());
  const std::vector<uint8_t> labels{3, 1};
  const fs::path d = make_idx_dir("pipeline", 2, 28, 28, labels);
  const Dataset ds = Dataset::open(d.string());
  const std::vector<uint8_t> all = read_bytes(d / "t10k-images-idx3-ubyte");
  std::vector<float> x(28 * 28);
  ds.preprocess(1, *model, x.data());
  // fashion_vit: crop_pct 1 at 28x28 is no resize, just (p / 255 - mean) / std.
  const uint8_t* px = all.data() + 16 + 28 * 28;
  for (int k = 0; k < 28 * 28; ++k)
    ASSERT_FLOAT_EQ(x[k], (px[k] / 255.0f - 0.28604060219395294f) / 0.3530242532703572f) << k;
  EXPECT_EQ(x, model->preprocess_pixels(px, 28, 28, 1));

  // Other sizes are resized by the model's pipeline: a 3-channel 64x64 model gets the 28x28 gray
  // image resized and replicated, the same as an RGB image with equal channels.
  auto rgb = shiftadd::Model::load(kRgbModel.string());
  ASSERT_EQ(rgb->info().in_chans, 3);
  ASSERT_EQ(rgb->input_size(), 3 * 64 * 64);
  std::vector<float> g(static_cast<size_t>(rgb->input_size()));
  ds.preprocess(1, *rgb, g.data());
  std::vector<uint8_t> rgb_px;
  for (int k = 0; k < 28 * 28; ++k) rgb_px.insert(rgb_px.end(), 3, px[k]);
  EXPECT_EQ(g, rgb->preprocess_pixels(rgb_px.data(), 28, 28, 3));
  EXPECT_TRUE(contains(error_of([&] { model->preprocess_pixels(px, 28, 28, 2); }), "1 or 3 channels"));
  EXPECT_TRUE(contains(error_of([&] { model->preprocess_pixels(px, 0, 28, 1); }), "preprocess_pixels"));
}

TEST(Dataset, IdxErrorsNameTheFile) {
  const fs::path d = temp_dir("errors");
  const fs::path img = d / "t10k-images-idx3-ubyte", lab = d / "t10k-labels-idx1-ubyte";
  const std::vector<uint8_t> px(2 * 3 * 3, 9);
  auto check = [&](const std::string& what, const std::string& file, const std::vector<std::string>& parts) {
    const std::string e = error_of([&] { Dataset::open(d.string()).check_labels(10); });
    EXPECT_TRUE(contains(e, file)) << what << ": " << e;
    for (const std::string& p : parts) EXPECT_TRUE(contains(e, p)) << what << ": " << e;
  };
  write_bytes(lab, idx({2}, {1, 2}));

  std::vector<uint8_t> bad = idx({2, 3, 3}, px);
  bad[0] = 0x1f;
  write_bytes(img, bad);
  check("bad magic", img.string(), {"bad magic"});

  write_bytes(img, idx({2, 9}, px));  // labels-like 2-D array
  check("dims", img.string(), {"2 dimensions", "expected 3 or 4"});

  bad = idx({2, 3, 3}, px);
  bad[2] = 0x0D;  // float data
  write_bytes(img, bad);
  check("dtype", img.string(), {"0x0d", "unsigned bytes"});

  bad = idx({2, 3, 3}, px);
  bad.resize(bad.size() - 4);
  write_bytes(img, bad);
  check("truncated data", img.string(), {"truncated", "18 bytes"});

  write_bytes(img, {0, 0, 8, 3, 0, 0});
  check("truncated header", img.string(), {"truncated IDX header"});

  bad = idx({2, 3, 3}, px);
  bad.push_back(1);
  write_bytes(img, bad);
  check("trailing", img.string(), {"unexpected bytes"});

  write_bytes(img, idx({2, 3, 3}, px));
  write_bytes(lab, idx({3}, {1, 2, 3}));
  check("count mismatch", lab.string(), {"3 labels for the 2 images"});

  write_bytes(lab, idx({2}, {1, 12}));
  check("label out of range", lab.string(), {"label 12", "10 classes"});

  write_bytes(lab, idx({2, 3, 3}, px));
  check("labels are images", lab.string(), {"3 dimensions", "expected 1"});

  fs::remove(lab);
  check("no labels", d.string(), {"t10k-labels-idx1-ubyte"});
  EXPECT_TRUE(contains(error_of([&] { Dataset::open(img.string()); }), "no labels file beside it"));
  EXPECT_TRUE(contains(error_of([&] { Dataset::open((d / "nothing").string()); }), "no such file"));

  // A gzip stream cut short.
  const fs::path gz = d / "cut";
  fs::create_directories(gz);
  std::vector<uint8_t> z = read_bytes(kIdx / "t10k-images-idx3-ubyte.gz");
  z.resize(z.size() / 2);
  write_bytes(gz / "t10k-images-idx3-ubyte.gz", z);
  fs::copy_file(kIdx / "t10k-labels-idx1-ubyte.gz", gz / "t10k-labels-idx1-ubyte.gz");
  const std::string e = error_of([&] { Dataset::open(gz.string()); });
  EXPECT_TRUE(contains(e, (gz / "t10k-images-idx3-ubyte.gz").string())) << e;
  EXPECT_TRUE(contains(e, "truncated") || contains(e, "corrupt")) << e;
}

TEST(Dataset, FolderPerClass) {
  const fs::path samples = kModel / "samples";
  auto model = shiftadd::Model::load(kModel.string());
  // Folder names matched to the model's labels by name ("ankle_boot" -> "Ankle boot" = 9).
  const fs::path named = temp_dir("named");
  for (const char* c : {"ankle_boot", "trouser", "tshirt_top"}) fs::create_directories(named / c);
  fs::copy_file(samples / "0000_ankle_boot.png", named / "ankle_boot/a.png");
  fs::copy_file(samples / "0002_trouser.png", named / "trouser/b.png");
  fs::copy_file(samples / "0019_tshirt_top.png", named / "tshirt_top/c.png");
  std::ofstream(named / "trouser/notes.txt") << "ignored";
  const Dataset d = Dataset::open(named.string(), with_labels(model->info().labels));
  EXPECT_EQ(d.format(), "folder");
  ASSERT_EQ(d.size(), 3);
  EXPECT_EQ(d.label(0), 9);
  EXPECT_EQ(d.label(1), 1);
  EXPECT_EQ(d.label(2), 0);
  EXPECT_EQ(d.class_names()[9], "ankle_boot");
  std::vector<float> x(28 * 28);
  d.preprocess(1, *model, x.data());
  EXPECT_EQ(x, model->preprocess_image((samples / "0002_trouser.png").string()));

  // Without the model's labels: sorted order.
  const Dataset s = Dataset::open(named.string());
  EXPECT_EQ(s.label(0), 0);
  EXPECT_EQ(s.label(1), 1);
  EXPECT_EQ(s.label(2), 2);

  // Integer folder names are the class numbers; one out of range for the model is an error.
  const fs::path numbered = temp_dir("numbered");
  for (const char* c : {"2", "10"}) fs::create_directories(numbered / c);
  fs::copy_file(samples / "0001_pullover.png", numbered / "2/x.png");
  fs::copy_file(samples / "0004_shirt.png", numbered / "10/y.png");
  const Dataset n = Dataset::open(numbered.string(), with_labels(model->info().labels));
  EXPECT_EQ(n.label(0), 10);  // "10" sorts first
  EXPECT_EQ(n.label(1), 2);
  const std::string e = error_of([&] { n.check_labels(10); });
  EXPECT_TRUE(contains(e, "label 10") && contains(e, "y.png") && contains(e, "10 classes")) << e;

  // A flat folder of images is unlabeled (calibration): eval refuses it.
  const fs::path flat = temp_dir("flat");
  fs::copy_file(samples / "0001_pullover.png", flat / "x.png");
  const Dataset u = Dataset::open(flat.string());
  EXPECT_EQ(u.size(), 1);
  EXPECT_FALSE(u.has_labels());
  EXPECT_EQ(u.label(0), -1);
  EXPECT_TRUE(contains(error_of([&] { u.check_labels(10); }), "has no labels"));
  EXPECT_TRUE(contains(error_of([] { Dataset::open(temp_dir("empty").string()); }), "no class folders"));
}

TEST(Dataset, NpyWithLabels) {
  auto model = shiftadd::Model::load(kModel.string());
  const fs::path d = temp_dir("npy");
  shiftadd::Array x{{2, 1, 28, 28}, std::vector<float>(2 * 28 * 28)};
  for (size_t k = 0; k < x.data.size(); ++k) x.data[k] = static_cast<float>(k % 13) * 0.1f;
  shiftadd::save_npy_f32((d / "x.npy").string(), x);
  shiftadd::save_npy_f32((d / "labels.npy").string(), {{2}, {4.0f, 7.0f}});
  const Dataset ds = Dataset::open((d / "x.npy").string());
  EXPECT_EQ(ds.format(), "npy");
  ASSERT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.label(1), 7);
  std::vector<float> out(28 * 28);
  ds.preprocess(1, *model, out.data());
  EXPECT_TRUE(std::equal(out.begin(), out.end(), x.data.begin() + 28 * 28));
  auto rgb = shiftadd::Model::load(kRgbModel.string());
  std::vector<float> big(static_cast<size_t>(rgb->input_size()));
  EXPECT_TRUE(contains(error_of([&] { ds.preprocess(0, *rgb, big.data()); }), "already be preprocessed"));
  shiftadd::save_npy_f32((d / "labels.npy").string(), {{3}, {4.0f, 7.0f, 1.0f}});
  EXPECT_TRUE(contains(error_of([&] { Dataset::open((d / "x.npy").string()); }), "expected labels of shape (2)"));
  shiftadd::save_npy_f32((d / "labels.npy").string(), {{2}, {4.5f, 7.0f}});
  EXPECT_TRUE(contains(error_of([&] { Dataset::open((d / "x.npy").string()); }), "not a non-negative integer"));
}

// The engine's eval on the fixture equals PyTorch's (tests/fixtures/idx/expected.json, from
// make_idx_fixture.py), and per-image predictions agree too.
TEST(EvalCli, FixtureTop1MatchesPyTorch) {
  const nlohmann::json want = expected();
  for (const char* batch : {"64", "7"}) {
    const Result r = cli("eval " + kModel.string() + " " + kIdx.string() + " --split test --json -t 2 --batch " + batch);
    ASSERT_EQ(r.code, 0) << r.all;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["images"], 64);
    EXPECT_EQ(j["correct1"], want["correct1"]);
    EXPECT_EQ(j["correct5"], want["correct5"]);
    EXPECT_DOUBLE_EQ(j["top1"].get<double>(), want["top1"].get<double>());
    EXPECT_DOUBLE_EQ(j["top5"].get<double>(), want["top5"].get<double>());
    EXPECT_GT(j["images_per_s"].get<double>(), 0);
    EXPECT_TRUE(contains(j["model"].get<std::string>(), "model.safetensors"));
    EXPECT_TRUE(contains(j["data"].get<std::string>(), "t10k-images-idx3-ubyte.gz"));
  }
  auto model = shiftadd::Model::load(kModel.string());
  shiftadd::SessionOptions so;
  so.threads = 1;
  shiftadd::Session session(model, so);
  const Dataset d = Dataset::open(kIdx.string());
  std::vector<float> x(28 * 28), logits(10);
  for (int64_t i = 0; i < d.size(); ++i) {
    d.preprocess(i, *model, x.data());
    session.run(x.data(), 1, logits.data());
    EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), want["predictions"][i].get<int>()) << i;
  }
}

TEST(EvalCli, TextLimitAndErrors) {
  const Result r = cli("eval " + kModel.string() + " " + (kIdx / "t10k-images-idx3-ubyte.gz").string() + " --limit 10");
  ASSERT_EQ(r.code, 0) << r.all;
  EXPECT_TRUE(contains(r.out, "10 images")) << r.out;
  EXPECT_TRUE(contains(r.out, "top-1")) << r.out;
  EXPECT_TRUE(contains(r.out, "Ankle boot")) << r.out;
  EXPECT_FALSE(contains(r.all, "\r")) << "no progress bar when stderr is not a terminal";

  const Result help = cli("eval --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_TRUE(contains(help.out, "--split")) << help.out;

  const Result missing = cli("eval " + kModel.string() + " /nonexistent/data");
  EXPECT_EQ(missing.code, 1);
  EXPECT_TRUE(contains(missing.all, "/nonexistent/data")) << missing.all;

  // Fashion-MNIST labels 0..9 on a 5-class model.
  const Result range = cli("eval " + kRgbModel.string() + " " + kIdx.string());
  EXPECT_EQ(range.code, 1);
  EXPECT_TRUE(contains(range.all, "out of range for a model with 5 classes")) << range.all;

  const Result split = cli("eval " + kModel.string() + " " + kIdx.string() + " --split valid");
  EXPECT_NE(split.code, 0);
}
