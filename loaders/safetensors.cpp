#include "loaders/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "loaders/atomic_write.h"
#include "shiftadd/error.h"

namespace shiftadd {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is borrowed without byte swapping");

namespace {

using nlohmann::json;

// The reference implementation's limit; a larger length means the file is not safetensors.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string supported_dtypes() {
  std::string list;
  for (size_t i = 0; i < static_cast<size_t>(DType::Count); ++i)
    list += (i ? ", " : "") + std::string(dtype_name(static_cast<DType>(i)));
  return list;
}

// A JSON value for an error message, shortened so a huge header cannot flood the terminal.
std::string brief(const json& value) {
  std::string text = value.dump();
  return text.size() <= 80 ? text : text.substr(0, 77) + "...";
}

// Maps the whole file; the returned owner unmaps it when the last borrowed tensor is gone.
std::shared_ptr<const void> map_file(const std::string& path, size_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  *size = static_cast<size_t>(st.st_size);
  if (*size < 8) {
    ::close(fd);
    throw Error(path + ": file is " + std::to_string(*size) +
                " bytes; a safetensors file starts with an 8-byte header length");
  }
  void* base = ::mmap(nullptr, *size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping does not need the descriptor
  if (base == MAP_FAILED) throw Error(path + ": mmap failed: " + std::strerror(map_errno));
  size_t length = *size;
  return std::shared_ptr<const void>(
      base, [length](const void* p) { ::munmap(const_cast<void*>(p), length); });
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// A non-negative JSON integer, or an Error built from `context` and `field`.
uint64_t json_uint(const json& v, const std::string& context, const char* field) {
  if (!v.is_number_unsigned())  // negative integers and floats are not unsigned
    throw Error(context + ": '" + field + "' must hold non-negative integers, got " + brief(v));
  return v.get<uint64_t>();
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // byte range relative to the start of the data region
};

Entry parse_entry(const std::string& name, const json& info, const std::string& path,
                  uint64_t data_size) {
  const std::string context = path + ": tensor '" + name + "'";
  if (!info.is_object())
    throw Error(context + ": expected an object with dtype, shape and data_offsets, got " +
                brief(info));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!info.contains(field)) throw Error(context + ": missing '" + field + "'");

  Entry e;
  e.name = name;
  const json& dtype = info["dtype"];
  if (!dtype.is_string()) throw Error(context + ": 'dtype' must be a string, got " + brief(dtype));
  const std::string& dtype_text = dtype.get_ref<const std::string&>();
  if (!dtype_from_name(dtype_text, &e.dtype))
    throw Error(context + ": unsupported dtype '" + dtype_text +
                "' (supported: " + supported_dtypes() + ")");

  const json& shape = info["shape"];
  if (!shape.is_array()) throw Error(context + ": 'shape' must be an array, got " + brief(shape));
  uint64_t numel = 1;
  for (const json& d : shape) {
    if (d.is_number_integer() && !d.is_number_unsigned())
      throw Error(context + ": negative dimension " + brief(d) + " in shape " + brief(shape));
    uint64_t dim = json_uint(d, context, "shape");
    if (dim > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, dim, &numel))
      throw Error(context + ": shape " + brief(shape) + " has too many elements");
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  if (!shape_is_addressable(e.shape))
    throw Error(context + ": shape " + brief(shape) + " is too large (its strides overflow int64)");

  const json& offsets = info["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    throw Error(context + ": 'data_offsets' must be [begin, end], got " + brief(offsets));
  e.begin = json_uint(offsets[0], context, "data_offsets");
  e.end = json_uint(offsets[1], context, "data_offsets");
  if (e.end < e.begin)
    throw Error(context + ": data_offsets " + brief(offsets) + " end before they begin");
  if (e.end > data_size)
    throw Error(context + ": data_offsets " + brief(offsets) + " run past the data region (" +
                std::to_string(data_size) + " bytes)");

  uint64_t expected_bytes;
  if (__builtin_mul_overflow(numel, dtype_size(e.dtype), &expected_bytes) ||
      expected_bytes != e.end - e.begin)
    throw Error(context + ": data_offsets " + brief(offsets) + " span " +
                std::to_string(e.end - e.begin) + " bytes but " + dtype_text + " shape " +
                brief(shape) + " needs " + std::to_string(numel) + " x " +
                std::to_string(dtype_size(e.dtype)) + " bytes");
  return e;
}

std::map<std::string, std::string> parse_metadata(const json& meta, const std::string& path) {
  if (!meta.is_object())
    throw Error(path + ": '__metadata__' must be an object of strings, got " + brief(meta));
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : meta.items()) {
    if (!value.is_string())
      throw Error(path + ": '__metadata__' entry '" + key + "' must be a string, got " +
                  brief(value));
    out[key] = value.get<std::string>();
  }
  return out;
}

// The format's own rules (as the reference implementation validates them): sorted by offset,
// the tensors tile the data region from byte 0 to its end, without gaps or overlaps.
void check_layout(std::vector<Entry>& entries, uint64_t data_size, const std::string& path) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin != expected) {
      const std::string where = previous ? "'" + previous->name + "' ends at " + std::to_string(expected)
                                         : "the data region starts at 0";
      throw Error(path + ": tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) + " but " + where +
                  (e.begin < expected ? " (overlapping tensors)" : " (a gap in the data)"));
    }
    expected = e.end;
    previous = &e;
  }
  if (expected != data_size)
    throw Error(path + ": the tensors cover " + std::to_string(expected) + " bytes but the data region has " +
                std::to_string(data_size) + " (trailing bytes after the last tensor)");
}

}  // namespace

WeightStore load_safetensors(const std::string& path) {
  size_t file_size = 0;
  std::shared_ptr<const void> mapping = map_file(path, &file_size);
  const auto* bytes = static_cast<const uint8_t*>(mapping.get());

  const uint64_t header_len = read_u64_le(bytes);
  if (header_len > kMaxHeaderBytes)
    throw Error(path + ": header length " + std::to_string(header_len) + " is absurd (limit " +
                std::to_string(kMaxHeaderBytes) + "); is this a safetensors file?");
  if (header_len > file_size - 8)
    throw Error(path + ": header length " + std::to_string(header_len) +
                " runs past the end of the file (" + std::to_string(file_size) + " bytes)");

  json header;
  // nlohmann keeps the last of duplicate keys; the format allows one entry per name.
  std::set<std::string> top_level_keys;
  std::string duplicate;
  const json::parser_callback_t note_keys = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !top_level_keys.insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len, note_keys);
  } catch (const json::exception& e) {
    throw Error(path + ": header is not valid JSON: " + e.what());
  }
  if (!duplicate.empty()) throw Error(path + ": header lists '" + duplicate + "' twice");
  if (!header.is_object())
    throw Error(path + ": header must be a JSON object, got " + header.type_name());

  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;
  WeightStore store;
  store.source = path;
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__")
      store.metadata = parse_metadata(info, path);
    else
      entries.push_back(parse_entry(name, info, path, data_size));
  }
  check_layout(entries, data_size, path);

  for (const Entry& e : entries) {
    const uint8_t* p = data + e.begin;
    if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) {
      // PROT_READ keeps the borrowed view read-only despite the non-const pointer.
      store.tensors[e.name] = Tensor::borrow(const_cast<uint8_t*>(p), e.dtype, e.shape, mapping);
    } else {
      // Kernels load whole elements; a misaligned view would be undefined behaviour.
      Tensor copy = Tensor::empty(e.dtype, e.shape);
      std::memcpy(copy.raw(), p, copy.nbytes());
      store.tensors[e.name] = copy;
    }
  }
  return store;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata, bool overwrite) {
  std::vector<const std::pair<const std::string, Tensor>*> layout;
  for (const auto& item : tensors) {
    const auto& [name, t] = item;
    if (name == "__metadata__") throw Error(path + ": '__metadata__' is not a valid tensor name");
    if (t.device() != Device::CPU || !t.is_contiguous() || (t.raw() == nullptr && t.nbytes() > 0))
      throw Error(path + ": tensor '" + name + "' must be a contiguous CPU tensor with data");
    layout.push_back(&item);
  }
  // Largest elements first (names break ties): with the 8-aligned data region every tensor then
  // starts at a multiple of its element size, and no padding gaps are needed.
  std::stable_sort(layout.begin(), layout.end(), [](const auto* a, const auto* b) {
    return dtype_size(a->second.dtype()) > dtype_size(b->second.dtype());
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<ByteSpan> parts(2);  // header length and header text come first
  uint64_t offset = 0;
  for (const auto* item : layout) {
    const Tensor& t = item->second;
    header[item->first] = {{"dtype", std::string(dtype_name(t.dtype()))},
                           {"shape", t.shape()},
                           {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
    parts.push_back({t.raw(), t.nbytes()});
  }

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const json::exception& e) {
    throw Error(
        path + ": cannot encode the header (tensor names and metadata must be UTF-8): " + e.what());
  }
  // Pad with spaces (valid JSON whitespace) so the data region starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_len = header_text.size();
  uint8_t len_bytes[8];
  std::memcpy(len_bytes, &header_len, 8);
  parts[0] = {len_bytes, 8};
  parts[1] = {header_text.data(), header_text.size()};
  write_file_atomic(path, parts, overwrite);
}

Tensor to_f32(const Tensor& t) {
  if (t.dtype() == DType::F32) return t;
  if (t.dtype() != DType::F16 && t.dtype() != DType::BF16)
    throw Error("to_f32: cannot convert a " + std::string(dtype_name(t.dtype())) +
                " tensor of shape " + shape_str(t.shape()) + "; expected F32, F16 or BF16");
  if (t.device() != Device::CPU || !t.is_contiguous())
    throw Error("to_f32: expected a contiguous CPU tensor");
  Tensor out = Tensor::empty(DType::F32, t.shape());
  const uint16_t* in = t.data<const uint16_t>();
  float* dst = out.data<float>();
  const int64_t n = t.numel();
  if (t.dtype() == DType::F16)
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(in[i]);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(in[i]);
  return out;
}

}  // namespace shiftadd
