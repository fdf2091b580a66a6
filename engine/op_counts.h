#pragma once
// The profiler's operation-count rules: one function from a graph node, a batch size and the
// node's routing (MoE) to the operations it executes. The rules are documented in
// docs/profiling.md; adding an op means adding its rule here.
#include <array>
#include <cstdint>
#include <string>

#include "engine/graph.h"
#include "shiftadd/profile.h"

namespace shiftadd {

// Counts of node `n` of `g` for one run of `batch` images. `expert_tokens`: tokens routed to
// expert 0 / 1 (MoE nodes only). `note` (optional) receives how a data-dependent count was
// estimated, if one was.
OpCounts count_node_ops(const Graph& g, const Node& n, int64_t batch,
                        std::array<int64_t, 2> expert_tokens, std::string* note = nullptr);

// Nonzero weights in a tensor of packed 5-bit shift codes.
int64_t shift_code_nonzeros(const Tensor& codes);

}  // namespace shiftadd
