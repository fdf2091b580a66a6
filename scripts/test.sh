#!/usr/bin/env bash
# Sets up and runs every test from scratch: installs the build dependencies and the Python test
# environment (.venv), builds (Release), runs the CTest suite, installs the Python package into
# .venv (pip install .) and runs pytest (its API, parity with PyTorch, and the Triton serving
# example), fuzzes each parser briefly (SHIFTADD_FUZZ_SECONDS per target, default 30), then
# rebuilds with AddressSanitizer + UBSan, the CUDA backend on cudasim (cudasim/: its kernels
# run on the CPU), and runs the C++ tests again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure

# The Python package as users install it (build-py keeps its build between runs).
.venv/bin/python -m pip install --quiet --disable-pip-version-check . --config-settings=build-dir=build-py
.venv/bin/python -m pytest -p no:cacheprovider python/tests examples/serving

# Fuzzing smoke run: each parser's libFuzzer harness (tests/fuzz, built with clang, ASan + UBSan)
# for a bounded time from its seeds and every earlier finding; a new finding fails the run.
# docs/reliability.md has the longer campaigns and their numbers.
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHIFTADD_FUZZ=ON \
  -DSHIFTADD_BUILD_TESTS=OFF -DSHIFTADD_CUDA=OFF
cmake --build build-fuzz -j "$jobs" --target fuzz_safetensors fuzz_onnx fuzz_npy fuzz_image fuzz_idx fuzz_meta
bash tests/fuzz/run.sh build-fuzz "${SHIFTADD_FUZZ_SECONDS:-30}"

# Bad inputs must give named errors, never memory errors or UB: the whole suite again under
# ASan + UBSan. This build runs the CUDA backend on cudasim, so the CUDA tests (skipped above
# without a GPU) run here, kernels included, under the sanitizers too.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHIFTADD_SANITIZE=ON -DSHIFTADD_CUDA=OFF \
  -DSHIFTADD_CUDA_SIM=ON
cmake --build build-asan -j "$jobs" --target shiftadd_tests shiftadd_cli
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -E '^install\.'
