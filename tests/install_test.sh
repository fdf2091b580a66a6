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
# The installed CLI finds its bundled model by itself.
LD_LIBRARY_PATH="$tmp/prefix/lib:$tmp/prefix/lib64" "$tmp/prefix/bin/shiftadd" classify "$model"/samples/*.png --top 1 > /dev/null
echo "install test passed"
