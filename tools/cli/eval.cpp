// shiftadd eval (placeholder until its issue lands).
#include "cli.h"

namespace shiftadd::cli {

void register_eval(CLI::App& app) { (void)app; }

}  // namespace shiftadd::cli
