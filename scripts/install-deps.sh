#!/usr/bin/env bash
# Installs everything shiftadd needs to build and test, from Debian's packages and PyPI.
# Idempotent: packages already present are skipped by apt-get/pip themselves.
#   --build-only   only the C++ build dependencies (no PyTorch, no onnxruntime)
#   --test         the build dependencies and the Python test environment .venv (what
#                  scripts/test.sh, and so CI, uses)
#   (nothing)      all of it, plus the Fashion-MNIST data and ONNX export support
set -euo pipefail
build_only=0 python_env=1
case "${1:-}" in
  --build-only) build_only=1 python_env=0 ;;
  --test) build_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--build-only | --test]" >&2; exit 2 ;;
esac

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
if [[ $python_env -eq 1 ]]; then
  # The Python package and its tests: Debian's Python 3 with headers and venv, and its PyTorch
  # (CPU; OpenBLAS so it is not 17x slower) so pytest checks shiftadd.export against PyTorch.
  pkgs+=(python3-dev python3-venv python3-torch python3-torchvision libopenblas0-pthread)
fi
if [[ $build_only -eq 0 ]]; then
  # PyTorch (goldens, training), OpenBLAS so it is not 17x slower, the Fashion-MNIST data,
  # ONNX export support.
  pkgs+=(python3-numpy python3-onnx dataset-fashion-mnist)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# .venv: the Python environment of the tests (git-ignored). It sees Debian's torch
# (--system-site-packages); pip adds the test tools, timm and Hugging Face transformers (for
# shiftadd.export; transformers before 4.40 still supports Debian's torch 1.13), and PyTriton,
# which ships the Triton Inference Server used by examples/serving.
[[ $python_env -eq 1 ]] || exit 0
venv=.venv
cd "$(dirname "$0")/.."
if [[ ! -x $venv/bin/python ]]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "pytest>=7" pillow "nvidia-pytriton>=0.5" "tritonclient[http]>=2.40" "timm>=0.9" "transformers>=4.30,<4.40"
