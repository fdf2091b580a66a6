#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace shiftadd::cli {

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(std::max<int64_t>(total, 0)),
      enabled_(::isatty(STDERR_FILENO) == 1), start_(std::chrono::steady_clock::now()), last_draw_(start_) {
  if (enabled_) draw(0, false);
}

Progress::~Progress() {
  if (!finished_) finish();
}

void Progress::update(int64_t done) {
  done_ = done;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(done, false);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  draw(done_, true);
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

// "eval  [##########..........]  52%  5200/10000  1234 img/s  ETA 4s"
void Progress::draw(int64_t done, bool final) {
  constexpr int kWidth = 30;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double frac = total_ > 0 ? std::clamp(static_cast<double>(done) / total_, 0.0, 1.0) : 1.0;
  const int filled = static_cast<int>(frac * kWidth);
  char bar[kWidth + 1];
  for (int i = 0; i < kWidth; ++i) bar[i] = i < filled ? '#' : '.';
  bar[kWidth] = '\0';
  const double rate = secs > 0 ? done / secs : 0;
  char tail[64] = "";
  if (final) std::snprintf(tail, sizeof tail, "%.1fs", secs);
  else if (rate > 0) std::snprintf(tail, sizeof tail, "ETA %.0fs", (total_ - done) / rate);
  std::fprintf(stderr, "\r%s  [%s] %3d%%  %lld/%lld  %.0f %s/s  %s\033[K", label_.c_str(), bar,
               static_cast<int>(frac * 100), static_cast<long long>(done), static_cast<long long>(total_), rate,
               unit_.c_str(), tail);
  std::fflush(stderr);
}

}  // namespace shiftadd::cli
