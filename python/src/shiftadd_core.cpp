// shiftadd._core: the nanobind binding of the public C++ API (include/shiftadd/). The Python
// package (python/shiftadd/__init__.py) wraps it; keep this layer thin: argument conversion,
// the GIL, and nothing the C++ API does not already do.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "loaders/safetensors.h"
#include "shiftadd/convert.h"
#include "shiftadd/dataset.h"
#include "shiftadd/profile.h"
#include "shiftadd/shiftadd.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using shiftadd::Error;

// Read-only float32 arrays in C order on the CPU: numpy passes them without a copy.
using F32In = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using U8In = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using F32Out = nb::ndarray<nb::numpy, float>;

// A new numpy float32 array that owns `data`.
F32Out numpy_array(std::unique_ptr<float[]> data, std::initializer_list<size_t> shape) {
  float* p = data.release();
  nb::capsule owner(p, [](void* q) noexcept { delete[] static_cast<float*>(q); });
  return F32Out(p, shape.size(), shape.begin(), owner);
}

shiftadd::SessionOptions session_options(int threads, const std::string& device, const std::string& mode) {
  shiftadd::SessionOptions o;
  o.threads = threads;
  if (mode != "exact" && mode != "fast") throw Error("mode='" + mode + "': expected 'exact' or 'fast'");
  o.mode = mode == "fast" ? shiftadd::ShiftMode::Fast : shiftadd::ShiftMode::Exact;
  if (device != "cpu" && device != "cuda") throw Error("device='" + device + "': expected 'cpu' or 'cuda'");
  o.device = device == "cuda" ? shiftadd::Device::CUDA : shiftadd::Device::CPU;
  return o;
}

std::string shape_text(const F32In& x) {
  std::string s = "(";
  for (size_t i = 0; i < x.ndim(); ++i) s += (i ? ", " : "") + std::to_string(x.shape(i));
  return s + (x.ndim() == 1 ? ",)" : ")");
}

// Number of images in x, or Error when x is not (B, C, H, W) for this model.
int64_t check_input(const shiftadd::ModelInfo& mi, const F32In& x, const char* who) {
  const bool ok = x.ndim() == 4 && x.shape(0) >= 1 && static_cast<int64_t>(x.shape(1)) == mi.in_chans &&
                  static_cast<int64_t>(x.shape(2)) == mi.image_size && static_cast<int64_t>(x.shape(3)) == mi.image_size;
  if (!ok)
    throw Error(std::string(who) + ": input shape " + shape_text(x) + " does not match the model " + mi.path +
                ": expected (B, " + std::to_string(mi.in_chans) + ", " + std::to_string(mi.image_size) + ", " +
                std::to_string(mi.image_size) + ") float32 with B >= 1");
  return static_cast<int64_t>(x.shape(0));
}

struct PyModel {
  std::shared_ptr<const shiftadd::Model> model;
};

// A Session is not thread-safe: the lock turns concurrent use of one session from Python
// threads into queued runs instead of a crash (one session per thread runs in parallel).
struct PySession {
  std::shared_ptr<const shiftadd::Model> model;
  shiftadd::Session session;
  std::mutex mu;
  PySession(std::shared_ptr<const shiftadd::Model> m, const shiftadd::SessionOptions& o)
      : model(m), session(m, o) {}
};

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "shiftadd engine binding (use the `shiftadd` package)";
  nb::exception<Error>(m, "Error", PyExc_RuntimeError);

  m.def("version", &shiftadd::version);
  m.def("default_model_path", &shiftadd::default_model_path);
  m.def("set_verbosity", &shiftadd::set_verbosity, "level"_a);

  nb::class_<PyModel>(m, "Model")
      .def("__init__",
           [](PyModel* self, const std::string& path) {
             std::shared_ptr<const shiftadd::Model> loaded;
             {
               nb::gil_scoped_release release;
               loaded = shiftadd::Model::load(path);
             }
             new (self) PyModel{std::move(loaded)};
           },
           "path"_a)
      .def_prop_ro("path", [](const PyModel& s) { return s.model->info().path; })
      .def_prop_ro("input_shape",
                   [](const PyModel& s) {
                     const auto& mi = s.model->info();
                     return std::make_tuple(mi.in_chans, mi.image_size, mi.image_size);
                   })
      .def_prop_ro("num_classes", [](const PyModel& s) { return s.model->info().num_classes; })
      .def_prop_ro("labels", [](const PyModel& s) { return s.model->info().labels; })
      .def("info_json", [](const PyModel& s) { return shiftadd::model_info_json(s.model->info()); })
      .def("preprocess_pixels",
           [](const PyModel& s, U8In px) {
             if (px.ndim() != 2 && px.ndim() != 3)
               throw Error("preprocess: expected uint8 pixels (H, W) or (H, W, C), got " + std::to_string(px.ndim()) +
                           " dimensions");
             const int channels = px.ndim() == 2 ? 1 : static_cast<int>(px.shape(2));
             const auto& mi = s.model->info();
             std::unique_ptr<float[]> out(new float[static_cast<size_t>(s.model->input_size())]);
             {
               nb::gil_scoped_release release;
               s.model->preprocess_pixels(px.data(), static_cast<int>(px.shape(1)), static_cast<int>(px.shape(0)),
                                          channels, out.get());
             }
             return numpy_array(std::move(out), {size_t(mi.in_chans), size_t(mi.image_size), size_t(mi.image_size)});
           },
           "pixels"_a)
      .def("preprocess_file",
           [](const PyModel& s, const std::string& path) {
             const auto& mi = s.model->info();
             std::vector<float> v;
             {
               nb::gil_scoped_release release;
               v = s.model->preprocess_image(path);
             }
             std::unique_ptr<float[]> out(new float[v.size()]);
             std::copy(v.begin(), v.end(), out.get());
             return numpy_array(std::move(out), {size_t(mi.in_chans), size_t(mi.image_size), size_t(mi.image_size)});
           },
           "path"_a)
      .def(
          "session",
          [](const PyModel& s, int threads, const std::string& device, const std::string& mode) {
            const shiftadd::SessionOptions o = session_options(threads, device, mode);
            nb::gil_scoped_release release;
            return new PySession(s.model, o);
          },
          "threads"_a = 0, "device"_a = "cpu", "mode"_a = "exact", nb::rv_policy::take_ownership)
      .def(
          "profile",
          [](const PyModel& s, int64_t batch, int runs, int warmup, std::optional<F32In> input, bool measure_energy,
             int threads, const std::string& device, const std::string& mode) {
            shiftadd::ProfileOptions po;
            po.session = session_options(threads, device, mode);
            po.batch = batch;
            po.runs = runs;
            po.warmup = warmup;
            po.measure_energy = measure_energy;
            if (input) {
              po.batch = check_input(s.model->info(), *input, "profile");
              po.input.assign(input->data(), input->data() + input->size());
            }
            nb::gil_scoped_release release;
            return shiftadd::profile_json({shiftadd::profile(s.model, po)});
          },
          "batch"_a = 1, "runs"_a = 10, "warmup"_a = 1, "input"_a = nb::none(), "measure_energy"_a = true,
          "threads"_a = 0, "device"_a = "cpu", "mode"_a = "exact");

  nb::class_<PySession>(m, "Session")
      .def(
          "run",
          [](PySession& s, F32In x) {
            const auto& mi = s.model->info();
            const int64_t batch = check_input(mi, x, "Session.run");
            std::unique_ptr<float[]> logits(new float[static_cast<size_t>(batch * mi.num_classes)]);
            {
              nb::gil_scoped_release release;  // before the lock: another thread may hold it while running
              std::lock_guard<std::mutex> lock(s.mu);
              s.session.run(x.data(), batch, logits.get());
            }
            return numpy_array(std::move(logits), {size_t(batch), size_t(mi.num_classes)});
          },
          "x"_a)
      .def("prepare",
           [](PySession& s, int64_t batch) {
             if (batch < 1) throw Error("Session.prepare: batch must be >= 1, got " + std::to_string(batch));
             nb::gil_scoped_release release;
             std::lock_guard<std::mutex> lock(s.mu);
             s.session.prepare(batch);
           },
           "batch"_a)
      .def("expert_tokens", [](PySession& s) {
        std::lock_guard<std::mutex> lock(s.mu);
        std::vector<std::tuple<std::string, int64_t, int64_t>> out;
        for (const auto& e : s.session.expert_tokens()) out.emplace_back(e.layer, e.tokens[0], e.tokens[1]);
        return out;
      });

  m.def(
      "top_k",
      [](F32In logits, const std::vector<std::string>& labels, int k) {
        if (logits.ndim() != 1) throw Error("top_k: expected one row of logits (1 dimension), got " + shape_text(logits));
        std::vector<std::tuple<int, std::string, float>> out;
        for (const auto& p : shiftadd::top_k(logits.data(), static_cast<int64_t>(logits.shape(0)), labels, k))
          out.emplace_back(p.index, p.label, p.probability);
        return out;
      },
      "logits"_a, "labels"_a, "k"_a);

  m.def(
      "convert",
      [](const std::string& input, const std::string& output, const std::string& calib, const std::string& mlp,
         const std::string& attn_proj, const std::string& attn, std::vector<int64_t> ksh_blocks, int64_t bits,
         int64_t anchors, const std::string& calib_split, int64_t calib_count, double shift_ratio, bool latency_aware,
         bool shift_scale, int threads, uint32_t seed, bool force) {
        shiftadd::convert::Options o;
        o.input = input;
        o.output = output;
        o.calib = calib;
        o.mlp = mlp;
        o.attn_proj = attn_proj;
        o.attn = attn;
        o.ksh_blocks = std::move(ksh_blocks);
        o.bits = bits;
        o.anchors = anchors;
        o.calib_split = calib_split;
        o.calib_count = calib_count;
        o.shift_ratio = shift_ratio;
        o.latency_aware = latency_aware;
        o.shift_scale = shift_scale;
        o.threads = threads;
        o.seed = seed;
        o.force = force;
        nb::gil_scoped_release release;
        const shiftadd::convert::Report r = shiftadd::convert::convert_model(o);
        return r.to_json().dump();
      },
      "input"_a, "output"_a, "calib"_a, "mlp"_a, "attn_proj"_a, "attn"_a, "ksh_blocks"_a, "bits"_a, "anchors"_a,
      "calib_split"_a, "calib_count"_a, "shift_ratio"_a, "latency_aware"_a, "shift_scale"_a, "threads"_a, "seed"_a,
      "force"_a);

  m.def(
      "evaluate",
      [](const PyModel& model, const std::string& data, const std::string& split, int64_t limit,
         const std::string& labels_path, int64_t batch, int threads, const std::string& device,
         const std::string& mode) {
        shiftadd::EvalOptions eo;
        eo.session = session_options(threads, device, mode);
        eo.batch = batch;
        shiftadd::DatasetOptions dopt;
        dopt.split = split;
        dopt.limit = limit;
        dopt.labels = model.model->info().labels;
        dopt.labels_path = labels_path;
        nb::gil_scoped_release release;
        const shiftadd::Dataset ds = shiftadd::Dataset::open(data, dopt);
        return shiftadd::evaluate(model.model, ds, eo).to_json();
      },
      "model"_a, "data"_a, "split"_a, "limit"_a, "labels_path"_a, "batch"_a, "threads"_a, "device"_a, "mode"_a);

  // The engine's own safetensors writer (atomic; refuses an existing file unless overwrite), so
  // shiftadd.export needs no other package to write weights.
  m.def(
      "save_safetensors",
      [](const std::string& path, const std::map<std::string, F32In>& tensors,
         const std::map<std::string, std::string>& metadata, bool overwrite) {
        std::map<std::string, shiftadd::Tensor> t;
        for (const auto& [name, a] : tensors) {
          shiftadd::Shape shape;
          for (size_t i = 0; i < a.ndim(); ++i) shape.push_back(static_cast<int64_t>(a.shape(i)));
          t.emplace(name, shiftadd::Tensor::borrow(const_cast<float*>(a.data()), shiftadd::DType::F32, shape, nullptr));
        }
        nb::gil_scoped_release release;
        shiftadd::save_safetensors(path, t, metadata, overwrite);
      },
      "path"_a, "tensors"_a, "metadata"_a, "overwrite"_a);
}
