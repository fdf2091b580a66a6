// shiftadd profile (placeholder until its issue lands).
#include "cli.h"

namespace shiftadd::cli {

void register_profile(CLI::App& app) { (void)app; }

}  // namespace shiftadd::cli
