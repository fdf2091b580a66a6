#include "loaders/model_source.h"

#include <algorithm>
#include <fstream>
#include <vector>

#include "loaders/onnx_vit.h"
#include "loaders/safetensors.h"
#include "shiftadd/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace shiftadd {

namespace {

std::optional<json> read_json(const fs::path& p) {
  if (!fs::exists(p)) return std::nullopt;
  std::ifstream in(p);
  if (!in) throw Error(p.string() + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(p.string() + ": invalid JSON: " + e.what());
  }
}

bool has_extension(const fs::path& p, const char* ext) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ext;
}

}  // namespace

ModelFiles resolve_model_files(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) throw Error("model '" + path + "': no such file or directory");
  ModelFiles m;
  if (fs::is_directory(p)) {
    for (const char* name : {"model.safetensors", "model.onnx"})
      if (fs::exists(p / name)) {
        m.weights = p / name;
        break;
      }
    if (m.weights.empty()) {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(p))
        if (has_extension(e.path(), ".safetensors") || has_extension(e.path(), ".onnx")) found.push_back(e.path());
      if (found.size() == 1) m.weights = found[0];
      else if (fs::exists(p / "pytorch_model.bin"))
        throw Error("model '" + path + "': only pytorch_model.bin found; PyTorch pickles are not "
                    "loaded (unsafe): save the weights as model.safetensors");
      else
        throw Error("model '" + path + "': directory has " + std::to_string(found.size()) +
                    " .safetensors/.onnx files; expected model.safetensors or model.onnx");
    }
  } else {
    m.weights = p;
  }
  m.onnx = has_extension(m.weights, ".onnx");
  if (!m.onnx && !has_extension(m.weights, ".safetensors"))
    throw Error("model '" + m.weights.string() + "': unknown format (expected a .safetensors or "
                ".onnx file, or a model directory)");
  m.config = m.weights.parent_path() / "config.json";
  m.preprocessor = m.weights.parent_path() / "preprocessor_config.json";
  return m;
}

ShiftaddMetadata read_shiftadd_metadata(const WeightStore& w) {
  ShiftaddMetadata f;
  const auto fmt = w.metadata.find("format");
  if (fmt == w.metadata.end() || fmt->second != "shiftadd") return f;
  f.is = true;
  auto get = [&](const char* key) -> const std::string& {
    const auto it = w.metadata.find(key);
    if (it == w.metadata.end())
      throw Error(w.source + ": shiftadd file without metadata '" + key + "' (docs/format.md)");
    return it->second;
  };
  const std::string& version = get("format_version");
  if (version != "1" && version != "2")
    throw Error(w.source + ": shiftadd format version '" + version + "' is not supported by this build "
                "(it reads versions 1 and 2); convert the model again or update shiftadd");
  f.architecture = get("architecture");
  auto parse = [&](const char* key) {
    try {
      json j = json::parse(get(key));
      if (!j.is_object()) throw Error(w.source + ": metadata '" + key + "' must hold a JSON object");
      return j;
    } catch (const json::exception& e) {
      throw Error(w.source + ": metadata '" + key + "' is not valid JSON: " + e.what());
    }
  };
  f.config = parse("config");
  const json layers = parse("layers");
  for (const auto& [name, l] : layers.items()) {
    if (!l.is_object() || !l.contains("kind") || !l["kind"].is_string())
      throw Error(w.source + ": metadata 'layers' entry '" + name + "' has no \"kind\"");
    LayerKind& k = f.layers[name];
    k.kind = l["kind"].get<std::string>();
    k.combine = l.value("combine", std::string("none"));
    // Version 2 stores shift codes at their real width (docs/format.md).
    if (version == "2" && (k.kind == "shift" || k.kind == "moe")) {
      if (!l.contains("bits") || !l["bits"].is_number_integer() || (l["bits"] != 4 && l["bits"] != 5))
        throw Error(w.source + ": metadata 'layers' entry '" + name + "' (" + k.kind +
                    ") needs \"bits\": 4 or 5, the stored width of its shift codes");
      k.code_bits = l["bits"].get<int>();
    }
  }
  return f;
}

ModelSource read_model_source(const std::string& path) {
  ModelSource src;
  src.files = resolve_model_files(path);
  src.config = read_json(src.files.config);
  src.preprocessor = read_json(src.files.preprocessor);
  if (src.files.onnx) {
    OnnxVitInfo oi;
    src.stored = load_onnx_vit(src.files.weights.string(), &oi);
    if (!src.config || !src.config->is_object()) src.config = json::object();
    // What the graph says wins over a config beside it.
    (*src.config)["num_heads"] = oi.heads;
    (*src.config)["layer_norm_eps"] = oi.eps;
  } else {
    src.stored = load_safetensors(src.files.weights.string());
    src.converted = read_shiftadd_metadata(src.stored);
    if (src.converted.is) src.config = src.converted.config;
  }
  return src;
}

}  // namespace shiftadd
