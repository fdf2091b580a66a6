#pragma once
// Labeled (or unlabeled) image datasets for evaluation and calibration.
//
//   auto data = shiftadd::Dataset::open("/usr/share/datasets/fashion-mnist", {.split = "test"});
//   data.check_labels(model->info().num_classes);
//   std::vector<float> x(model_input_size);
//   data.preprocess(0, *model, x.data());   // image 0 as the model's [C, H, W] input
//
// Formats (Dataset::open picks one from what PATH is):
//   idx     IDX files as Fashion-MNIST / MNIST ship them: an idx3 ubyte image file (N, H, W) —
//           or (N, H, W, C) with C 1 or 3 — and an idx1 ubyte label file (N), each gzip-compressed
//           or not. PATH is a directory holding `<split>-images-idx3-ubyte[.gz]` and
//           `<split>-labels-idx1-ubyte[.gz]` (split "train" -> `train-*`, "test" -> `t10k-*` or
//           `test-*`), or an image file itself (its labels file is the same name with
//           images/idx3 replaced by labels/idx1, or options.labels_path).
//   folder  a directory with one sub-directory per class holding JPEG / PNG / BMP files (other
//           files are ignored). Class index: when every folder name matches one of the model's
//           labels (options.labels; compared lower-case with everything but letters and digits
//           dropped, so `tshirt_top` matches "T-shirt/top") that label's index; else, when every
//           folder name is a non-negative integer, that number; else the position of the name in
//           sorted order (as torchvision's ImageFolder). A directory of image files with no
//           sub-directories is an unlabeled dataset (calibration).
//   npy     a float32 .npy array (N, C, H, W) of already preprocessed inputs; labels from
//           options.labels_path or `labels.npy` beside it (integer or float dtype, shape (N)),
//           else unlabeled.
//
// Every problem (missing files, bad magic numbers, dimensions, truncated data, label count
// mismatch, labels out of range) throws shiftadd::Error naming the file and what was expected.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shiftadd/shiftadd.h"

namespace shiftadd {

struct DatasetOptions {
  std::string split = "test";       // IDX directories: "train" or "test"
  int64_t limit = 0;                // > 0: only the first `limit` samples
  std::vector<std::string> labels;  // the model's class names, to match class folders by name
  std::string labels_path;          // IDX / .npy: labels file instead of the default one
};

class Dataset {
 public:
  static Dataset open(const std::string& path, const DatasetOptions& options = {});
  ~Dataset();
  Dataset(Dataset&&) noexcept;
  Dataset& operator=(Dataset&&) noexcept;

  const std::string& format() const;       // "idx" | "folder" | "npy"
  const std::string& description() const;  // the files read, e.g. ".../t10k-images-idx3-ubyte.gz"
  int64_t size() const;
  bool has_labels() const;
  // Class of sample i (-1 when the dataset has no labels).
  int label(int64_t i) const;
  // Folder datasets: the class folder name of each class index (empty names for indices no
  // folder maps to); empty for other formats.
  const std::vector<std::string>& class_names() const;
  // Throws Error, naming the labels file (or folder), when the dataset has no labels or a label
  // is not in [0, num_classes).
  void check_labels(int64_t num_classes) const;

  // Writes sample i as the model's input: model.info().in_chans x image_size x image_size
  // floats. Pixel datasets go through Model::preprocess_pixels (the model's resize, crop and
  // normalisation; gray images are replicated for 3-channel models); .npy samples are copied
  // and must already have the model's input shape. Thread-safe (const).
  void preprocess(int64_t i, const Model& model, float* out) const;

  struct Impl;

 private:
  explicit Dataset(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Top-1 / top-5 accuracy of a model over a labeled dataset (`shiftadd eval`, Python's
// shiftadd.eval): batches of `batch` samples through one Session.
struct EvalOptions {
  SessionOptions session;
  int64_t batch = 64;
  std::function<void(int64_t done, int64_t total)> progress;  // after each batch; may be empty
};

struct EvalResult {
  std::string model, data, format;  // model path, dataset description and format
  int64_t images = 0, correct1 = 0, correct5 = 0, batch = 0;
  double top1 = 0, top5 = 0, seconds = 0, images_per_s = 0;
  std::vector<std::string> class_names;          // per class: the model's label, else "class_<i>"
  std::vector<int64_t> class_hits1, class_seen;  // per class: top-1 hits and samples
  // One JSON object: model, data, format, images, top1, top5, correct1, correct5, seconds,
  // images_per_s, batch, per_class_top1 (classes with samples).
  std::string to_json() const;
};

// Throws Error when the dataset is empty or its labels do not fit the model.
EvalResult evaluate(std::shared_ptr<const Model> model, const Dataset& data, const EvalOptions& options = {});

}  // namespace shiftadd
