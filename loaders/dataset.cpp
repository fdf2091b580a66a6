// Datasets for `shiftadd eval` and calibration: IDX files (gzip or not), class folders of
// images, and preprocessed .npy arrays. See include/shiftadd/dataset.h for the formats.
#include "shiftadd/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "loaders/image.h"
#include "loaders/npy.h"

namespace fs = std::filesystem;

namespace shiftadd {

struct Dataset::Impl {
  std::string format, description;
  std::string labels_source;  // file or folder the labels came from, for error messages
  bool labeled = false;
  std::vector<int> labels;    // one per sample when labeled
  std::vector<std::string> class_names;
  // idx: all images, each height x width x channels bytes
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
  // folder: one image file per sample
  std::vector<std::string> files;
  // npy: preprocessed samples, each `sample` floats of shape `sample_shape`
  std::vector<float> values;
  std::vector<int64_t> sample_shape;
  int64_t count = 0;
};

namespace {

// A file read through zlib, so gzip-compressed and plain files read alike. Reads stop where the
// caller says: a gzip bomb inflates no further than the IDX header promises.
class GzipFile {
 public:
  explicit GzipFile(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) throw Error(path + ": no such file");
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) throw Error(path + ": cannot open");
    gzbuffer(f_, 1 << 17);
  }
  ~GzipFile() { gzclose(f_); }
  GzipFile(const GzipFile&) = delete;
  GzipFile& operator=(const GzipFile&) = delete;

  // Appends up to n bytes to `out`; returns how many were read (fewer only at the end).
  size_t read(std::vector<uint8_t>& out, size_t n) {
    constexpr size_t kChunk = 1 << 20;  // grow with the data, not with what a header claims
    size_t total = 0;
    while (total < n) {
      const size_t want = std::min(kChunk, n - total);
      const size_t at = out.size();
      out.resize(at + want);
      const int got = gzread(f_, out.data() + at, static_cast<unsigned>(want));
      if (got < 0) throw Error(path_ + ": cannot read (corrupt gzip data?): " + message());
      out.resize(at + static_cast<size_t>(got));
      total += static_cast<size_t>(got);
      if (static_cast<size_t>(got) < want) break;
    }
    // A gzip stream cut short reads to its end without an error from gzread; gzerror says so.
    if (total < n && error() != Z_OK) throw Error(path_ + ": truncated or corrupt gzip data: " + message());
    return total;
  }

 private:
  int error() {
    int err = Z_OK;
    gzerror(f_, &err);
    return err;
  }
  std::string message() {
    int err = Z_OK;
    return gzerror(f_, &err);
  }
  std::string path_;
  gzFile f_ = nullptr;
};

uint32_t big_endian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// An IDX array of unsigned bytes: magic 00 00 08 <ndims>, ndims big-endian uint32 sizes, data.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;  // the file; data starts at `offset`
  size_t offset = 0;
};

IdxArray read_idx(const std::string& path, const std::vector<int>& allowed_ndims, const char* what) {
  IdxArray a;
  GzipFile file(path);
  std::vector<uint8_t>& b = a.bytes;
  file.read(b, 4);
  std::string expected_dims;
  for (int n : allowed_ndims) expected_dims += (expected_dims.empty() ? "" : " or ") + std::to_string(n);
  if (b.size() < 4 || b[0] != 0 || b[1] != 0)
    throw Error(path + ": not an IDX file (bad magic number; expected " + what + ", magic 0x0000080" +
                std::to_string(allowed_ndims.front()) + ")");
  if (b[2] != 0x08)
    throw Error(path + ": IDX data type 0x" + (b[2] < 16 ? "0" : "") +
                [&] { char t[8]; std::snprintf(t, sizeof t, "%x", b[2]); return std::string(t); }() +
                " is not supported (expected 0x08, unsigned bytes)");
  const int ndims = b[3];
  if (std::find(allowed_ndims.begin(), allowed_ndims.end(), ndims) == allowed_ndims.end())
    throw Error(path + ": IDX file has " + std::to_string(ndims) + " dimensions; expected " +
                expected_dims + " (" + what + ")");
  a.offset = 4 + 4 * static_cast<size_t>(ndims);
  file.read(b, a.offset - 4);
  if (b.size() < a.offset)
    throw Error(path + ": truncated IDX header (" + std::to_string(b.size()) + " bytes, expected " +
                std::to_string(a.offset) + ")");
  int64_t total = 1;
  for (int i = 0; i < ndims; ++i) {
    const int64_t d = big_endian32(&b[4 + 4 * i]);
    a.dims.push_back(d);
    if (i > 0 && d == 0) throw Error(path + ": IDX dimension " + std::to_string(i) + " is 0");
    if (d > (int64_t{1} << 40) / std::max<int64_t>(total, 1))
      throw Error(path + ": IDX dimensions are too large");
    total *= d;
  }
  const size_t have = file.read(b, static_cast<size_t>(total));
  if (have < static_cast<size_t>(total))
    throw Error(path + ": truncated: its header promises " + std::to_string(total) +
                " bytes of data, the file has " + std::to_string(have));
  std::vector<uint8_t> extra;
  if (file.read(extra, 1) != 0)
    throw Error(path + ": unexpected bytes after the " + std::to_string(total) +
                " bytes of data its header promises");
  return a;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Letters and digits only, lower case: "T-shirt/top" and "tshirt_top" both give "tshirttop".
std::string label_key(const std::string& s) {
  std::string k;
  for (unsigned char c : s)
    if (std::isalnum(c)) k += static_cast<char>(std::tolower(c));
  return k;
}

bool is_image_file(const fs::path& p) {
  const std::string e = lower(p.extension().string());
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp";
}

bool has_idx_files(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().find("idx3") != std::string::npos) return true;
  return false;
}

// The file in `dir` named `<prefix>-<kind>...<idx>...` (e.g. t10k-images-idx3-ubyte.gz); with
// several (gzip and not), the first in sorted order.
std::string find_idx(const fs::path& dir, const std::vector<std::string>& prefixes, const std::string& kind,
                     const std::string& idx) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    for (const std::string& p : prefixes)
      if (name.rfind(p + "-" + kind, 0) == 0 && name.find(idx) != std::string::npos) found.push_back(e.path().string());
  }
  std::sort(found.begin(), found.end());
  return found.empty() ? std::string() : found.front();
}

// Labels file of an images file: the same name with "images" -> "labels" and "idx3" -> "idx1".
std::string labels_beside(const std::string& images) {
  const fs::path p(images);
  std::string name = p.filename().string();
  bool changed = false;
  for (auto [from, to] : {std::pair<std::string, std::string>{"images", "labels"}, {"idx3", "idx1"}}) {
    const size_t at = name.find(from);
    if (at != std::string::npos) {
      name.replace(at, from.size(), to);
      changed = true;
    }
  }
  return changed ? (p.parent_path() / name).string() : std::string();
}

void open_idx(Dataset::Impl& d, const std::string& path, const DatasetOptions& o) {
  std::string images = path, labels = o.labels_path;
  if (fs::is_directory(path)) {
    std::vector<std::string> prefixes;
    if (o.split == "train") prefixes = {"train"};
    else if (o.split == "test") prefixes = {"t10k", "test"};
    else throw Error("dataset '" + path + "': unknown split '" + o.split + "' (expected train or test)");
    images = find_idx(path, prefixes, "images", "idx3");
    if (images.empty())
      throw Error("dataset '" + path + "': no " + prefixes.front() + "-images-idx3-ubyte[.gz] file for split '" +
                  o.split + "'");
    if (labels.empty()) {
      labels = find_idx(path, prefixes, "labels", "idx1");
      if (labels.empty())
        throw Error("dataset '" + path + "': no " + prefixes.front() + "-labels-idx1-ubyte[.gz] file beside " +
                    fs::path(images).filename().string());
    }
  } else if (labels.empty()) {
    labels = labels_beside(images);
    if (labels.empty() || !fs::exists(labels))
      throw Error(images + ": no labels file beside it (expected " +
                  (labels.empty() ? std::string("a name with images/idx3 in it") : labels) + ")");
  }
  IdxArray img = read_idx(images, {3, 4}, "idx3 images, (N, H, W) unsigned bytes");
  const int64_t n = img.dims[0];
  if (img.dims.size() == 4 && img.dims[3] != 1 && img.dims[3] != 3)
    throw Error(images + ": IDX images have " + std::to_string(img.dims[3]) + " channels; expected 1 or 3");
  if (img.dims[1] > 16384 || img.dims[2] > 16384)
    throw Error(images + ": images of " + std::to_string(img.dims[2]) + "x" + std::to_string(img.dims[1]) +
                " pixels are too large (at most 16384 a side)");
  IdxArray lab = read_idx(labels, {1}, "idx1 labels, (N) unsigned bytes");
  if (lab.dims[0] != n)
    throw Error(labels + ": " + std::to_string(lab.dims[0]) + " labels for the " + std::to_string(n) +
                " images of " + images + "; expected one label per image");
  d.count = o.limit > 0 ? std::min(n, o.limit) : n;
  d.height = static_cast<int>(img.dims[1]);
  d.width = static_cast<int>(img.dims[2]);
  d.channels = img.dims.size() == 4 ? static_cast<int>(img.dims[3]) : 1;
  const size_t per = size_t(d.width) * d.height * d.channels;
  d.pixels.assign(img.bytes.begin() + img.offset, img.bytes.begin() + img.offset + per * d.count);
  d.labels.assign(lab.bytes.begin() + lab.offset, lab.bytes.begin() + lab.offset + d.count);
  d.labeled = true;
  d.labels_source = labels;
  d.format = "idx";
  d.description = images;
}

void open_folder(Dataset::Impl& d, const std::string& path, const DatasetOptions& o) {
  std::vector<fs::path> dirs, loose;
  for (const auto& e : fs::directory_iterator(path)) {
    if (e.is_directory()) dirs.push_back(e.path());
    else if (e.is_regular_file() && is_image_file(e.path())) loose.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  std::sort(loose.begin(), loose.end());
  d.format = "folder";
  d.description = path;
  d.labels_source = path;
  if (dirs.empty()) {  // a flat folder of images: unlabeled
    if (loose.empty())
      throw Error("dataset '" + path + "': no class folders and no JPEG/PNG/BMP images in it");
    for (const fs::path& f : loose) d.files.push_back(f.string());
    d.count = static_cast<int64_t>(d.files.size());
    if (o.limit > 0 && d.count > o.limit) d.files.resize(static_cast<size_t>(d.count = o.limit));
    return;
  }
  if (!loose.empty())
    throw Error("dataset '" + path + "': has both class folders and loose images (" +
                loose.front().filename().string() + "); expected one folder per class");
  // Class indices: by the model's label names, else by integer folder names, else sorted order.
  std::vector<int> index(dirs.size());
  std::map<std::string, int> by_key;
  for (size_t i = 0; i < o.labels.size(); ++i) by_key.emplace(label_key(o.labels[i]), static_cast<int>(i));
  bool all_named = !by_key.empty(), all_numbers = true;
  std::set<int> used;
  for (size_t i = 0; i < dirs.size(); ++i) {
    const std::string name = dirs[i].filename().string();
    auto it = by_key.find(label_key(name));
    if (it == by_key.end() || label_key(name).empty() || !used.insert(it->second).second) all_named = false;
    else index[i] = it->second;
    all_numbers = all_numbers && !name.empty() && name.size() < 9 &&
                  std::all_of(name.begin(), name.end(), [](unsigned char c) { return std::isdigit(c); });
  }
  std::set<int> numbers;
  if (!all_named && all_numbers)
    for (size_t i = 0; i < dirs.size(); ++i)
      if (!numbers.insert(index[i] = std::stoi(dirs[i].filename().string())).second) all_numbers = false;
  if (!all_named && !all_numbers)
    for (size_t i = 0; i < dirs.size(); ++i) index[i] = static_cast<int>(i);
  const int classes = *std::max_element(index.begin(), index.end()) + 1;
  d.class_names.assign(classes, "");
  for (size_t i = 0; i < dirs.size(); ++i) {
    d.class_names[index[i]] = dirs[i].filename().string();
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dirs[i]))
      if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      d.files.push_back(f.string());
      d.labels.push_back(index[i]);
    }
  }
  if (d.files.empty()) throw Error("dataset '" + path + "': its class folders hold no JPEG/PNG/BMP images");
  d.labeled = true;
  d.count = static_cast<int64_t>(d.files.size());
  if (o.limit > 0 && d.count > o.limit) {
    d.count = o.limit;
    d.files.resize(static_cast<size_t>(d.count));
    d.labels.resize(static_cast<size_t>(d.count));
  }
}

void open_npy(Dataset::Impl& d, const std::string& path, const DatasetOptions& o) {
  const Tensor x = load_npy(path);
  if (x.dtype() != DType::F32 || x.shape().size() != 4)
    throw Error(path + ": expected a float32 array (N, C, H, W) of preprocessed images, found " +
                std::string(dtype_name(x.dtype())) + " " + shape_str(x.shape()));
  const int64_t n = x.shape()[0];
  d.count = o.limit > 0 ? std::min(n, o.limit) : n;
  d.sample_shape.assign(x.shape().begin() + 1, x.shape().end());
  const int64_t per = shape_numel(d.sample_shape);
  d.values.assign(x.data<float>(), x.data<float>() + per * d.count);
  d.format = "npy";
  d.description = path;
  std::string labels = o.labels_path;
  if (labels.empty() && fs::exists(fs::path(path).parent_path() / "labels.npy") &&
      fs::path(path).filename() != "labels.npy")
    labels = (fs::path(path).parent_path() / "labels.npy").string();
  if (labels.empty()) return;
  const Tensor l = load_npy(labels);
  if (l.shape().size() != 1 || l.shape()[0] != n)
    throw Error(labels + ": expected labels of shape (" + std::to_string(n) + ") for the images of " + path +
                ", found " + shape_str(l.shape()));
  d.labels.resize(static_cast<size_t>(d.count));
  for (int64_t i = 0; i < d.count; ++i) {
    double v = 0;
    switch (l.dtype()) {
      case DType::U8: v = l.data<uint8_t>()[i]; break;
      case DType::I32: v = l.data<int32_t>()[i]; break;
      case DType::I64: v = static_cast<double>(l.data<int64_t>()[i]); break;
      case DType::F32: v = l.data<float>()[i]; break;
      default:
        throw Error(labels + ": labels must be integers (uint8, int32, int64) or float32, found " +
                    std::string(dtype_name(l.dtype())));
    }
    if (!(v >= 0 && v < 1e9 && v == static_cast<double>(static_cast<int>(v))))
      throw Error(labels + ": label " + std::to_string(v) + " at index " + std::to_string(i) +
                  " is not a non-negative integer");
    d.labels[i] = static_cast<int>(v);
  }
  d.labeled = true;
  d.labels_source = labels;
}

}  // namespace

Dataset::Dataset(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Dataset::~Dataset() = default;
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;

Dataset Dataset::open(const std::string& path, const DatasetOptions& options) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("dataset '" + path + "': no such file or directory");
  if (options.limit < 0) throw Error("dataset '" + path + "': limit must be >= 0");
  auto d = std::make_unique<Impl>();
  try {
    const std::string ext = lower(fs::path(path).extension().string());
    if (fs::is_directory(path)) {
      if (has_idx_files(path)) open_idx(*d, path, options);
      else open_folder(*d, path, options);
    } else if (ext == ".npy") {
      open_npy(*d, path, options);
    } else {
      open_idx(*d, path, options);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Error("dataset '" + path + "': out of memory");
  } catch (const std::exception& e) {  // filesystem errors: unreadable directories
    throw Error("dataset '" + path + "': " + e.what());
  }
  return Dataset(std::move(d));
}

const std::string& Dataset::format() const { return impl_->format; }
const std::string& Dataset::description() const { return impl_->description; }
int64_t Dataset::size() const { return impl_->count; }
bool Dataset::has_labels() const { return impl_->labeled; }
int Dataset::label(int64_t i) const {
  return impl_->labeled && i >= 0 && i < impl_->count ? impl_->labels[static_cast<size_t>(i)] : -1;
}
const std::vector<std::string>& Dataset::class_names() const { return impl_->class_names; }

void Dataset::check_labels(int64_t num_classes) const {
  const Impl& d = *impl_;
  if (!d.labeled)
    throw Error("dataset '" + d.description + "': has no labels (expected " +
                (d.format == "npy" ? "labels.npy beside it" : std::string("one folder per class")) + ")");
  for (int64_t i = 0; i < d.count; ++i) {
    const int l = d.labels[static_cast<size_t>(i)];
    if (l < 0 || l >= num_classes) {
      std::string where = d.labels_source + ": label " + std::to_string(l) + " of sample " + std::to_string(i);
      if (d.format == "folder") where += " (" + d.files[static_cast<size_t>(i)] + ")";
      throw Error(where + " is out of range for a model with " + std::to_string(num_classes) +
                  " classes (expected 0.." + std::to_string(num_classes - 1) + ")");
    }
  }
}

void Dataset::preprocess(int64_t i, const Model& model, float* out) const {
  const Impl& d = *impl_;
  if (i < 0 || i >= d.count)
    throw Error("dataset '" + d.description + "': sample " + std::to_string(i) + " out of range (size " +
                std::to_string(d.count) + ")");
  if (d.format == "idx") {
    const size_t per = size_t(d.width) * d.height * d.channels;
    model.preprocess_pixels(&d.pixels[per * i], d.width, d.height, d.channels, out);
  } else if (d.format == "folder") {
    const Image img = load_image(d.files[static_cast<size_t>(i)]);
    model.preprocess_pixels(img.pixels.data(), img.width, img.height, img.channels, out);
  } else {
    const ModelInfo& mi = model.info();
    const std::vector<int64_t> want{mi.in_chans, mi.image_size, mi.image_size};
    if (d.sample_shape != want)
      throw Error(d.description + ": samples of shape " + shape_str(d.sample_shape) + " do not match the model's input " +
                  shape_str(want) + " (a .npy dataset must already be preprocessed)");
    const size_t per = static_cast<size_t>(shape_numel(d.sample_shape));
    std::copy_n(&d.values[per * i], per, out);
  }
}

}  // namespace shiftadd
