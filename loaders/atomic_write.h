#pragma once
// Crash-safe file writing shared by the savers: the destination either keeps its old content or
// holds the complete new content, never a torn mix.
#include <cstddef>
#include <string>
#include <vector>

namespace shiftadd {

struct ByteSpan {
  const void* data;
  size_t size;
};

// Writes the concatenation of `parts` to a temporary file in the directory of `path`, fsyncs it
// and renames it over `path`. Without `overwrite`, an existing `path` is an Error that suggests
// --force. Throws Error naming `path` on any I/O failure; the temporary file is removed then.
void write_file_atomic(const std::string& path, const std::vector<ByteSpan>& parts, bool overwrite);

}  // namespace shiftadd
