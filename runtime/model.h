#pragma once
// What a loaded Model holds, for the engine's own tools (converter, profiler) and tests: the
// public header keeps it opaque.
#include "engine/graph.h"
#include "loaders/image.h"
#include "loaders/weight_store.h"
#include "models/family.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd {

struct Model::Impl {
  WeightStore weights;  // canonical names; keeps mmaps alive, the graph borrows from it
  ModelConfig config;   // the family's (VitConfig or PvtConfig)
  PreprocessConfig preprocess;
  Graph graph;
  ModelInfo info;
};

}  // namespace shiftadd
