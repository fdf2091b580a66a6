#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "shiftadd/shiftadd.h"

namespace shiftadd {

spdlog::logger& logger() {
  static const std::shared_ptr<spdlog::logger> instance = [] {
    auto l = spdlog::get("shiftadd");
    if (!l) l = spdlog::stderr_color_mt("shiftadd");
    l->set_level(spdlog::level::warn);
    return l;
  }();
  return *instance;
}

void set_verbosity(int level) {
  logger().set_level(level >= 2 ? spdlog::level::debug
                  : level == 1 ? spdlog::level::info
                               : spdlog::level::warn);
}

}  // namespace shiftadd
