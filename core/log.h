#pragma once
// The library's logger: "shiftadd", on stderr, quiet (warnings only) unless the application
// asks for more with shiftadd::set_verbosity(). The library never touches spdlog's default
// logger, so applications keep theirs.
#include <spdlog/spdlog.h>

namespace shiftadd {
spdlog::logger& logger();
}  // namespace shiftadd
