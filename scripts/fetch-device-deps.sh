#!/usr/bin/env bash
# Downloads, here where apt works, the Debian packages the C++ build needs into .deps/ (git
# ignores it), for a machine that cannot fetch them: the lent GPU machines have CUDA, CMake,
# ninja and PyTorch but none of these libraries, and no network. Carry `.deps` with the device
# call; scripts/device-check.sh unpacks it into a private prefix when the system lacks the
# libraries (docs/cuda.md).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(libprotobuf-dev libprotobuf32 libprotobuf-lite32 protobuf-compiler libprotoc32
      libonnx-dev libonnx1 libonnxifi libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
      libcli11-dev libgtest-dev googletest nlohmann-json3-dev libstb-dev libstb0 zlib1g-dev zlib1g)
rm -rf .deps
mkdir -p .deps
(cd .deps && apt-get download "${pkgs[@]}")
du -sh .deps
