#!/usr/bin/env bash
# Installs shiftadd from BUILD_DIR into a temporary prefix, builds examples/classify_app against
# it with find_package(shiftadd), and classifies the bundled samples with it.
set -euo pipefail
src=$1 build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log"
cmake -S "$src/examples/classify_app" -B "$tmp/app" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
      -DCMAKE_BUILD_TYPE=Release > "$tmp/configure.log"
cmake --build "$tmp/app" > "$tmp/build.log"
model="$tmp/prefix/share/shiftadd/models/fashion_vit"
test -f "$model/model.safetensors" || { echo "bundled model not installed"; exit 1; }
out=$(LD_LIBRARY_PATH="$tmp/prefix/lib:$tmp/prefix/lib64" "$tmp/app/classify_app" "$model" "$model"/samples/*.png)
echo "$out"
# Every sample's file name ends with its true class; the app must print one line per image.
test "$(echo "$out" | wc -l)" -eq "$(ls "$model"/samples/*.png | wc -l)"
# Every public header compiles in a consumer that only calls find_package(shiftadd): the package
# config finds every dependency the headers use.
mkdir -p "$tmp/headers"
{
  for h in "$tmp/prefix/include/shiftadd/"*.h; do echo "#include <shiftadd/$(basename "$h")>"; done
  echo 'int main() { return shiftadd::version().empty(); }'
} > "$tmp/headers/main.cpp"
cat > "$tmp/headers/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(all_headers CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(shiftadd REQUIRED)
add_executable(all_headers main.cpp)
target_link_libraries(all_headers PRIVATE shiftadd::shiftadd)
CMAKE
cmake -S "$tmp/headers" -B "$tmp/headers/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" > "$tmp/headers.log"
cmake --build "$tmp/headers/build" >> "$tmp/headers.log"
LD_LIBRARY_PATH="$tmp/prefix/lib:$tmp/prefix/lib64" "$tmp/headers/build/all_headers"
# The installed CLI finds its bundled model by itself.
LD_LIBRARY_PATH="$tmp/prefix/lib:$tmp/prefix/lib64" "$tmp/prefix/bin/shiftadd" classify "$model"/samples/*.png --top 1 > /dev/null
echo "install test passed"
