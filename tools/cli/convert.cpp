// shiftadd convert (placeholder until its issue lands).
#include "cli.h"

namespace shiftadd::cli {

void register_convert(CLI::App& app) { (void)app; }

}  // namespace shiftadd::cli
