#pragma once
// The one error type of shiftadd: every failure on user input (files, shapes, options) is
// reported by throwing shiftadd::Error with a message that names the file, tensor or node.
#include <stdexcept>
#include <string>

namespace shiftadd {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace shiftadd
