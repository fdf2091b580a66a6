#pragma once
// A one-line progress bar on stderr for long CLI jobs (eval, calibration):
//
//   Progress bar("eval", total);
//   for (...) bar.update(done);
//   bar.finish();
//
// Quiet when stderr is not a terminal (logs and pipes stay clean); redraws at most ~10 times a
// second, so updating after every item costs one clock read.
#include <chrono>
#include <cstdint>
#include <string>

namespace shiftadd::cli {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "img");
  ~Progress();  // finishes the line if finish() was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(int64_t done);
  // Draws the final state and ends the line.
  void finish();
  bool enabled() const { return enabled_; }

 private:
  void draw(int64_t done, bool final);
  std::string label_, unit_;
  int64_t total_;
  bool enabled_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t done_ = 0;
};

}  // namespace shiftadd::cli
