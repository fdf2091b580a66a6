#!/usr/bin/env bash
# Installs everything shiftadd needs to build and test, from Debian's packages and PyPI.
# Idempotent: packages already present are skipped by apt-get/pip themselves.
#   --build-only   only the C++ build dependencies (no PyTorch, no onnxruntime)
set -euo pipefail
build_only=0
[[ "${1:-}" == "--build-only" ]] && build_only=1

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

pkgs=(cmake g++ ninja-build pkg-config
      libprotobuf-dev protobuf-compiler libonnx-dev
      libspdlog-dev libcli11-dev libgtest-dev nlohmann-json3-dev libstb-dev zlib1g-dev
      libjpeg-dev libpng-dev
      clang libclang-rt-dev)  # libFuzzer for the fuzzing smoke run (tests/fuzz)
# Headless Chromium renders the profiler's HTML report in tests/test_profile.cpp (CI runs
# --build-only, so it is part of this set).
pkgs+=(chromium)
if [[ $build_only -eq 0 ]]; then
  # PyTorch (goldens, training), OpenBLAS so it is not 17x slower, the Fashion-MNIST data,
  # ONNX export support.
  pkgs+=(python3-torch libopenblas0-pthread python3-numpy python3-onnx dataset-fashion-mnist)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
