#include "loaders/npy.h"

#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>

#include "loaders/atomic_write.h"
#include "shiftadd/error.h"

namespace shiftadd {

static_assert(std::endian::native == std::endian::little,
              "'<' .npy data is read without byte swapping");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// NumPy itself refuses headers over 10000 bytes by default; anything near this is not a header.
constexpr uint32_t kMaxHeaderBytes = 1 << 20;

struct DescrRow {
  std::string_view descr;
  DType dtype;
};
constexpr DescrRow kDescrs[] = {{"<f4", DType::F32}, {"<f2", DType::F16}, {"<i4", DType::I32},
                                {"<i8", DType::I64}, {"|u1", DType::U8},  {"<u2", DType::U16}};

std::optional<DType> dtype_from_descr(std::string_view descr) {
  // A single byte has no byte order, so NumPy also accepts '<u1', '>u1' and '=u1'.
  if (descr.size() == 3 && descr.substr(1) == "u1" &&
      std::string_view("<>=|").find(descr[0]) != std::string_view::npos)
    return DType::U8;
  // '=' means native order, and this build is little-endian.
  std::string normalized(descr);
  if (!normalized.empty() && normalized[0] == '=') normalized[0] = '<';
  for (const DescrRow& row : kDescrs)
    if (row.descr == normalized) return row.dtype;
  return std::nullopt;
}

// The descrs of `accepted` (empty: every dtype this reader knows).
std::string supported_descrs(const std::vector<DType>& accepted = {}) {
  std::string list;
  for (const DescrRow& row : kDescrs)
    if (accepted.empty() || std::find(accepted.begin(), accepted.end(), row.dtype) != accepted.end())
      list += (list.empty() ? "'" : ", '") + std::string(row.descr) + "' (" + std::string(dtype_name(row.dtype)) + ")";
  return list;
}

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  Shape shape;
};

// Parses the Python dict literal NumPy writes, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// accepting exactly the keys descr, fortran_order and shape, as numpy.lib.format does.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  NpyHeader parse() {
    NpyHeader h;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    while (!consume('}')) {
      std::string key = parse_string("a quoted key");
      expect(':');
      if (key == "descr") {
        if (peek() == '[')
          fail("structured dtypes (a list 'descr') are not supported; expected one of " +
               supported_descrs());
        h.descr = parse_string("a quoted dtype string for 'descr'");
        mark_seen(seen_descr, key);
      } else if (key == "fortran_order") {
        h.fortran_order = parse_bool();
        mark_seen(seen_order, key);
      } else if (key == "shape") {
        h.shape = parse_shape();
        mark_seen(seen_shape, key);
      } else {
        fail("unexpected key '" + key + "' (expected descr, fortran_order and shape)");
      }
      if (!consume(',')) {
        expect('}');
        break;
      }
    }
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
    if (!seen_descr || !seen_order || !seen_shape)
      fail(std::string("missing key '") +
           (!seen_descr   ? "descr"
            : !seen_order ? "fortran_order"
                          : "shape") +
           "'");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw Error(path_ + ": malformed .npy header: " + problem + " (at offset " +
                std::to_string(pos_) + " of \"" + std::string(text_.substr(0, 120)) + "\")");
  }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\r' || text_[pos_] == '\n'))
      ++pos_;
  }
  char peek() {
    skip_space();
    return pos_ < text_.size() ? text_[pos_] : '\0';
  }
  bool consume(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c) {
    if (!consume(c)) fail(std::string("expected '") + c + "'");
  }
  void mark_seen(bool& seen, const std::string& key) {
    if (seen) fail("duplicate key '" + key + "'");
    seen = true;
  }
  std::string parse_string(const char* what) {
    char quote = peek();
    if (quote != '\'' && quote != '"') fail(std::string("expected ") + what);
    size_t close = text_.find(quote, ++pos_);
    if (close == std::string_view::npos) fail("unterminated string");
    std::string s(text_.substr(pos_, close - pos_));
    pos_ = close + 1;
    return s;
  }
  bool parse_bool() {
    skip_space();
    for (auto [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
      if (text_.substr(pos_, std::strlen(word)) == word) {
        pos_ += std::strlen(word);
        return value;
      }
    }
    fail("expected True or False for 'fortran_order'");
  }
  Shape parse_shape() {
    Shape shape;
    expect('(');
    while (!consume(')')) {
      shape.push_back(parse_dim());
      // A 1-tuple needs its comma, "(3,)"; longer tuples may end with one.
      if (!consume(',')) {
        expect(')');
        break;
      }
    }
    return shape;
  }
  int64_t parse_dim() {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == '-') fail("negative dimension in 'shape'");
    size_t start = pos_;
    int64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      if (__builtin_mul_overflow(value, 10, &value) ||
          __builtin_add_overflow(value, text_[pos_] - '0', &value))
        fail("dimension too large in 'shape'");
      ++pos_;
    }
    if (pos_ == start) fail("expected a non-negative integer in 'shape'");
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;  // Python 2 long suffix
    return value;
  }

  std::string_view text_;
  const std::string& path_;
  size_t pos_ = 0;
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

std::string descr_of(DType dtype) {
  for (const DescrRow& row : kDescrs)
    if (row.dtype == dtype) return std::string(row.descr);
  throw Error("NumPy has no " + std::string(dtype_name(dtype)) +
              " dtype; convert the tensor (e.g. with to_f32) before saving it as .npy");
}

std::string shape_repr(const Shape& shape) {  // Python tuple syntax: (), (3,), (2, 3)
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

Tensor load_npy(const std::string& path, const std::vector<DType>& accepted) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(::fileno(file.get()), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(path + ": not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  uint8_t preamble[12];
  if (std::fread(preamble, 1, 8, file.get()) != 8 || std::memcmp(preamble, kMagic, kMagicLen) != 0)
    throw Error(path + ": not a .npy file (it does not start with the magic \"\\x93NUMPY\")");
  const int major = preamble[6], minor = preamble[7];
  // Version 1.0 stores a 2-byte header length; 2.0 and 3.0 (UTF-8 header) a 4-byte one.
  size_t len_bytes = major == 1 ? 2 : (major == 2 || major == 3) ? 4 : 0;
  if (len_bytes == 0 || minor != 0)
    throw Error(path + ": unsupported .npy format version " + std::to_string(major) + "." +
                std::to_string(minor) + " (expected 1.0, 2.0 or 3.0)");
  if (std::fread(preamble + 8, 1, len_bytes, file.get()) != len_bytes)
    throw Error(path + ": truncated .npy file: it ends inside the header length");
  uint32_t header_len = preamble[8] | (preamble[9] << 8);
  if (len_bytes == 4) header_len |= (uint32_t{preamble[10]} << 16) | (uint32_t{preamble[11]} << 24);
  if (header_len > kMaxHeaderBytes)
    throw Error(path + ": .npy header length " + std::to_string(header_len) + " is absurd (limit " +
                std::to_string(kMaxHeaderBytes) + ")");

  std::string header_text(header_len, '\0');
  if (std::fread(header_text.data(), 1, header_len, file.get()) != header_len)
    throw Error(path + ": truncated .npy file: the header should be " + std::to_string(header_len) +
                " bytes but the file ends first");
  NpyHeader header = HeaderParser(header_text, path).parse();

  std::optional<DType> dtype = dtype_from_descr(header.descr);
  if (!accepted.empty() && (!dtype || std::find(accepted.begin(), accepted.end(), *dtype) == accepted.end()))
    throw Error(path + ": dtype '" + header.descr + "' is not accepted here; expected " + supported_descrs(accepted));
  if (!dtype) {
    std::string why = header.descr.starts_with(">") ? " (big-endian data is not supported)"
                      : header.descr.find('O') != std::string::npos
                          ? " (object arrays are not supported)"
                          : "";
    throw Error(path + ": unsupported dtype '" + header.descr + "'" + why + "; expected one of " +
                supported_descrs());
  }
  // With at most one dimension Fortran and C order are the same layout.
  if (header.fortran_order && header.shape.size() > 1)
    throw Error(path +
                ": fortran_order=True arrays are not supported; save a C-ordered array "
                "(np.ascontiguousarray) instead");

  if (!shape_is_addressable(header.shape))
    throw Error(path + ": shape " + shape_str(header.shape) + " is too large (its strides overflow int64)");
  uint64_t data_bytes = dtype_size(*dtype);
  for (int64_t d : header.shape)
    if (__builtin_mul_overflow(data_bytes, static_cast<uint64_t>(d), &data_bytes))
      throw Error(path + ": shape " + shape_str(header.shape) + " is too large");
  const uint64_t data_offset = 8 + len_bytes + header_len;
  const uint64_t available = file_size - data_offset;
  if (available != data_bytes)
    throw Error(path + ": " +
                (available < data_bytes ? "truncated data" : "unexpected trailing data") + ": " +
                header.descr + " shape " + shape_str(header.shape) + " needs " +
                std::to_string(data_bytes) + " bytes after the header, the file has " +
                std::to_string(available));

  Tensor t = Tensor::empty(*dtype, header.shape);
  if (std::fread(t.raw(), 1, data_bytes, file.get()) != data_bytes)
    throw Error(path + ": read error: " + std::strerror(errno));
  return t;
}

void save_npy(const std::string& path, const Tensor& t) {
  if (t.device() != Device::CPU || !t.is_contiguous() || (t.raw() == nullptr && t.nbytes() > 0))
    throw Error(path + ": save_npy needs a contiguous CPU tensor with data");
  std::string descr;
  try {
    descr = descr_of(t.dtype());
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  std::string dict = "{'descr': '" + descr +
                     "', 'fortran_order': False, 'shape': " + shape_repr(t.shape()) + ", }";

  // magic + version + length field + dict + '\n' must be a multiple of 64 (NumPy's alignment);
  // version 2.0 only widens the length field, for headers over 65535 bytes.
  auto padding = [&](size_t preamble_len) {
    return (64 - (preamble_len + dict.size() + 1) % 64) % 64;
  };
  const bool v1 = dict.size() + padding(10) + 1 <= 65535;
  const size_t preamble_len = v1 ? 10 : 12;
  dict.append(padding(preamble_len), ' ');
  dict += '\n';

  std::string preamble(kMagic, kMagicLen);
  preamble += static_cast<char>(v1 ? 1 : 2);
  preamble += '\0';
  const uint32_t header_len = static_cast<uint32_t>(dict.size());
  for (size_t i = 0; i < preamble_len - 8; ++i)
    preamble += static_cast<char>(header_len >> (8 * i));
  const std::string header = preamble + dict;
  write_file_atomic(path, {{header.data(), header.size()}, {t.raw(), t.nbytes()}},
                    /*overwrite=*/true);
}

}  // namespace shiftadd
