#!/usr/bin/env bash
# Runs the libFuzzer harnesses built in BUILD_DIR (cmake -DSHIFTADD_FUZZ=ON, clang) for SECONDS
# each, one after the other, from the seeds in tests/fuzz/seeds, the matching test fixtures and
# every earlier finding; prints executions per target and fails if any target found something.
#   tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]   (targets: safetensors onnx npy image idx meta)
# The corpus grown by a run stays in BUILD_DIR/fuzz/corpus/TARGET for the next one; a finding
# is written to BUILD_DIR/fuzz/findings/ (make it a test: copy it to
# tests/fixtures/fuzz_findings/TARGET/).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "$1" && pwd)"
seconds="$2"
shift 2
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(safetensors onnx npy image idx meta)
fx="$root/tests/fixtures"

# Seed files of a target: its own seeds, its findings, and fixture files up to max_len bytes.
seeds() {
  local target=$1 max=$2
  local -a files=("$root/tests/fuzz/seeds/$target"/* "$fx/fuzz_findings/$target"/*)
  case $target in
    safetensors) files+=("$fx"/onnx/*.ref.safetensors "$fx"/goldens*/*/model.safetensors) ;;
    meta) files+=("$fx"/goldens*/*/model.safetensors) ;;
    onnx) files+=("$fx"/onnx/*.onnx "$fx"/goldens*/*/model.onnx) ;;
    npy) files+=("$fx"/images/*.npy) ;;
    image) files+=("$fx"/images/*.png "$root"/models/fashion_vit/samples/*.png) ;;
    idx) files+=("$fx"/idx/*.gz) ;;
  esac
  for f in "${files[@]}"; do
    [[ -f $f && $(stat -c %s "$f") -le $max ]] && echo "$f"
  done
}

failed=0
for target in "${targets[@]}"; do
  case $target in
    safetensors | onnx | meta) max_len=262144 ;;
    *) max_len=65536 ;;
  esac
  corpus="$build/fuzz/corpus/$target"
  mkdir -p "$corpus" "$build/fuzz/findings"
  seeds "$target" "$max_len" | while read -r f; do cp -n "$f" "$corpus/seed_$(basename "$f")"; done
  log="$build/fuzz/$target.log"
  # -timeout: one input may take 10 s (a 178-Mpixel image at the decode limit does not);
  # -rss_limit_mb: memory is part of the contract; -close_fd_mask=3: the loaders' own logging.
  status=0
  "$build/fuzz_$target" "$corpus" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -close_fd_mask=3 \
    -artifact_prefix="$build/fuzz/findings/$target-" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  echo "fuzz $target: ${execs:-?} executions in ${seconds}s, coverage ${cov:-?} edges, corpus $(ls "$corpus" | wc -l) files, exit $status"
  if [[ $status -ne 0 ]]; then
    failed=1
    grep -E "ERROR|SUMMARY|Test unit written" "$log" | head -5 || true
  fi
done
exit $failed
