// classify_app MODEL IMAGE... : the embedded C++ API in a few lines. One Model is loaded and
// shared; each worker thread gets its own Session.
#include <cstdio>
#include <exception>
#include <thread>
#include <vector>

#include <shiftadd/shiftadd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL IMAGE...\n", argv[0]);
    return 2;
  }
  try {
    const auto model = shiftadd::Model::load(argv[1]);
    std::vector<std::vector<shiftadd::Prediction>> results(argc - 2);
    std::vector<std::exception_ptr> errors(argc - 2);
    std::vector<std::thread> workers;
    for (int i = 2; i < argc; ++i)
      workers.emplace_back([&, i] {
        try {
          shiftadd::Session session(model, {.threads = 1});
          results[i - 2] = session.classify(argv[i], 1);
        } catch (...) {
          errors[i - 2] = std::current_exception();  // rethrown on the main thread
        }
      });
    for (auto& w : workers) w.join();
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
    for (int i = 2; i < argc; ++i)
      std::printf("%s: %s (%.3f)\n", argv[i], results[i - 2][0].label.c_str(), results[i - 2][0].probability);
  } catch (const shiftadd::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
