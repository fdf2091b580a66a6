#!/usr/bin/env bash
# Sets up and runs every test from scratch: installs the build dependencies, builds (Release),
# runs the CTest suite, then rebuilds with AddressSanitizer + UBSan, the CUDA backend on cudasim
# (tests/cudasim: its kernels run on the CPU), and runs the tests again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --build-only
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure

# Bad inputs must give named errors, never memory errors or UB: the whole suite again under
# ASan + UBSan. This build runs the CUDA backend on cudasim, so the CUDA tests (skipped above
# without a GPU) run here, kernels included, under the sanitizers too.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHIFTADD_SANITIZE=ON -DSHIFTADD_CUDA=OFF \
  -DSHIFTADD_CUDA_SIM=ON
cmake --build build-asan -j "$jobs" --target shiftadd_tests shiftadd_cli
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -E '^install\.'
