#include "loaders/onnx_tensor.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "shiftadd/error.h"

namespace shiftadd {

std::vector<int64_t> OnnxConst::ints() const {
  if (!is_float) return i;
  std::vector<int64_t> out;
  out.reserve(f.size());
  for (float v : f) {
    // 2^63 is exactly representable; anything at or past it (and NaN) has no int64 value.
    if (!(v >= -9.2233720368547758e18f && v < 9.2233720368547758e18f) || v != std::trunc(v)) {
      std::ostringstream os;
      os << "tensor '" << name << "' holds " << v << " where an integer is expected";
      throw Error(os.str());
    }
    out.push_back(static_cast<int64_t>(v));
  }
  return out;
}

namespace {

template <typename T>
std::vector<T> read_raw(const std::string& raw) {
  std::vector<T> v(raw.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), raw.data(), v.size() * sizeof(T));
  return v;
}

// The bytes of a tensor stored outside the model (data_location EXTERNAL): external_data holds
// location (relative to the model's directory, which it may not leave), offset and length.
std::string read_external_data(const onnx::TensorProto& t, const std::string& file, const std::string& what) {
  namespace fs = std::filesystem;
  std::string location;
  int64_t offset = 0, length = -1;
  auto parse = [&](const std::string& key, const std::string& value) {
    int64_t v = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc() || end != value.data() + value.size() || v < 0)
      throw Error(what + ": external data " + key + " '" + value + "' is not a non-negative integer");
    return v;
  };
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location")
      location = kv.value();
    else if (kv.key() == "offset")
      offset = parse(kv.key(), kv.value());
    else if (kv.key() == "length")
      length = parse(kv.key(), kv.value());
  }
  if (location.empty()) throw Error(what + ": external data without a location");
  const fs::path rel(location);
  const fs::path dir = fs::path(file).parent_path();
  std::error_code ec;
  const fs::path base = fs::weakly_canonical(dir.empty() ? fs::path(".") : dir, ec);
  const fs::path target = fs::weakly_canonical(base / rel, ec);
  auto inside = [&]() {
    auto b = base.begin(), tgt = target.begin();
    for (; b != base.end(); ++b, ++tgt)
      if (tgt == target.end() || *b != *tgt) return false;
    return tgt != target.end();
  };
  if (ec || rel.is_absolute() || rel.has_root_name() || !inside())
    throw Error(what + ": external data location '" + location +
                "' is not a file inside the model's directory " + base.string());
  const std::string data_file = (dir / rel).string();
  std::ifstream f(target, std::ios::binary);
  if (!f || !fs::is_regular_file(target, ec)) throw Error(what + ": cannot open external data file " + data_file);
  const auto size = static_cast<int64_t>(fs::file_size(target, ec));
  if (ec) throw Error(what + ": cannot read the size of external data file " + data_file);
  if (offset > size || (length >= 0 && length > size - offset))
    throw Error(what + ": external data [" + std::to_string(offset) + ", " +
                std::to_string(offset + std::max<int64_t>(length, 0)) + ") lies outside " + data_file + " (" +
                std::to_string(size) + " bytes)");
  if (length < 0) length = size - offset;
  std::string bytes(static_cast<size_t>(length), '\0');
  f.seekg(offset);
  if (!f.read(bytes.data(), length)) throw Error(what + ": read error in external data file " + data_file);
  return bytes;
}

}  // namespace

OnnxConst decode_onnx_tensor(const onnx::TensorProto& t, const std::string& file) {
  const std::string what = file + ": tensor '" + t.name() + "'";
  std::string external;
  const bool is_external = t.data_location() == onnx::TensorProto::EXTERNAL;
  if (is_external) external = read_external_data(t, file, what);
  const std::string& raw_bytes = is_external ? external : t.raw_data();
  OnnxConst c;
  c.name = t.name();
  c.dims.assign(t.dims().begin(), t.dims().end());
  int64_t n = 1;
  for (int64_t d : c.dims) {
    if (d < 0 || (d > 0 && n > (int64_t{1} << 40) / d))
      throw Error(what + " has an invalid shape " + shape_str(c.dims));
    n *= d;
  }
  const bool raw = is_external || t.has_raw_data();
  auto check_count = [&](size_t count, const char* field) {
    if (static_cast<int64_t>(count) != n)
      throw Error(what + " of shape " + shape_str(c.dims) + " holds " + std::to_string(count) +
                  " values in " + field + ", expected " + std::to_string(n));
  };
  auto check_raw = [&](size_t elem_size) {
    if (raw_bytes.size() != static_cast<size_t>(n) * elem_size)
      throw Error(what + " of shape " + shape_str(c.dims) + " has " + std::to_string(raw_bytes.size()) +
                  (is_external ? " bytes of external data, expected " : " bytes of raw_data, expected ") +
                  std::to_string(n * elem_size));
  };
  auto widen16 = [&](float (*convert)(uint16_t)) {
    std::vector<uint16_t> bits;
    if (raw) {
      check_raw(2);
      bits = read_raw<uint16_t>(raw_bytes);
    } else {  // 16-bit values travel in int32_data
      check_count(t.int32_data_size(), "int32_data");
      for (int32_t v : t.int32_data()) bits.push_back(static_cast<uint16_t>(v));
    }
    c.is_float = true;
    for (uint16_t b : bits) c.f.push_back(convert(b));
  };
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT:
      c.is_float = true;
      if (raw) {
        check_raw(4);
        c.f = read_raw<float>(raw_bytes);
      } else {
        check_count(t.float_data_size(), "float_data");
        c.f.assign(t.float_data().begin(), t.float_data().end());
      }
      break;
    case onnx::TensorProto::FLOAT16:
      widen16(f16_to_f32);
      break;
    case onnx::TensorProto::BFLOAT16:
      widen16(bf16_to_f32);
      break;
    case onnx::TensorProto::DOUBLE: {
      c.is_float = true;
      std::vector<double> d;
      if (raw) {
        check_raw(8);
        d = read_raw<double>(raw_bytes);
      } else {
        check_count(t.double_data_size(), "double_data");
        d.assign(t.double_data().begin(), t.double_data().end());
      }
      for (double v : d) c.f.push_back(static_cast<float>(v));
      break;
    }
    case onnx::TensorProto::INT64:
      if (raw) {
        check_raw(8);
        c.i = read_raw<int64_t>(raw_bytes);
      } else {
        check_count(t.int64_data_size(), "int64_data");
        c.i.assign(t.int64_data().begin(), t.int64_data().end());
      }
      break;
    case onnx::TensorProto::INT32: {
      std::vector<int32_t> v;
      if (raw) {
        check_raw(4);
        v = read_raw<int32_t>(raw_bytes);
      } else {
        check_count(t.int32_data_size(), "int32_data");
        v.assign(t.int32_data().begin(), t.int32_data().end());
      }
      c.i.assign(v.begin(), v.end());
      break;
    }
    case onnx::TensorProto::BOOL:  // attention masks
      if (raw) {
        check_raw(1);
        for (char b : raw_bytes) c.i.push_back(b != 0);
      } else {
        check_count(t.int32_data_size(), "int32_data");
        for (int32_t v : t.int32_data()) c.i.push_back(v != 0);
      }
      break;
    default:
      throw Error(what + " has data type " +
                  onnx::TensorProto::DataType_Name(static_cast<onnx::TensorProto::DataType>(t.data_type())) +
                  ", which the ViT loader does not read");
  }
  return c;
}

}  // namespace shiftadd
