#include "loaders/weight_store.h"

#include "shiftadd/error.h"

namespace shiftadd {

const Tensor& WeightStore::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw Error(source + ": missing tensor '" + name + "'");
  return it->second;
}

}  // namespace shiftadd
