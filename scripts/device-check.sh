#!/usr/bin/env bash
# The GPU check, in one command on a machine with an NVIDIA GPU (and PyTorch with CUDA for the
# peer timings):
#   1. configures and builds the CUDA backend for this GPU's architecture (nvidia-smi compute_cap),
#   2. runs every CUDA test (tests/test_cuda_backend.cpp and the cuda rows of
#      tests/test_backend_ops.cpp; none may be skipped here),
#   3. prints a latency table: DeiT-Tiny/Small/Base-shaped ViTs and PVTv2-b0/b1 (dense) plus
#      their ShiftAddViT (MoE) counterparts, random weights, 224x224, batch 1, 8 and 64:
#      engine dense fp32 / fp16 (SHIFTADD_CUDA_MATH), engine ShiftAdd exact / fast, and PyTorch
#      eager fp32 / fp16 timed in the same script. Median ms per batch.
# Budget: under 5 minutes on a 16-core machine (one architecture, -j nproc, short timing runs).
#
# Environment: BUILD_DIR (default build-device), BATCHES (default "1 8 64"), SKIP_BENCH=1 to stop
# after the tests, PYTHON (default python3), RUNS / WARMUP (timed and warm-up runs per bench;
# default 20 / 5, 10 / 3 at batch >= 64). Results: $BUILD_DIR/device-check.md (also copied to
# $OUT when that is set), for docs/benchmarks.md. MODELS: which of deit_tiny deit_small deit_base
# pvt_v2_b0 pvt_v2_b1 to time (PVT ones with their ShiftAddViT counterparts; default all).
#
# CUDASIM=1: a dry run of this script without a GPU: builds on cudasim (cudasim/), runs the
# CUDA tests there and a one-run benchmark of deit_tiny and pvt_v2_b0 at batch 1 (numbers
# meaningless; PyTorch columns empty without CUDA), to check the script end to end before
# spending GPU time on it.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
B=${BUILD_DIR:-build-device}
PY=${PYTHON:-python3}
jobs=$(nproc)
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

SIM=${CUDASIM:-0}
if [ "$SIM" = 1 ]; then
  B=${BUILD_DIR:-build-device-sim}
  BATCHES=${BATCHES:-1}
  MODELS=${MODELS:-"deit_tiny pvt_v2_b0"}
  RUNS=${RUNS:-1}
  WARMUP=${WARMUP:-1}
  gpu="cudasim (no GPU: a dry run, timings meaningless)"
  cuda_flags=(-DSHIFTADD_CUDA=OFF -DSHIFTADD_CUDA_SIM=ON)
  echo "== device-check dry run on cudasim"
else
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    echo "device-check: no NVIDIA GPU or driver here (nvidia-smi failed); nothing to check" >&2
    echo "  (CUDASIM=1 runs this script on cudasim instead, as a dry run)" >&2
    exit 2
  fi
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
  cuda_flags=(-DSHIFTADD_CUDA=ON -DSHIFTADD_CUDA_ARCHS="$cc" -DCMAKE_CUDA_ARCHITECTURES="$cc")
  BATCHES=${BATCHES:-"1 8 64"}
  MODELS=${MODELS:-"deit_tiny deit_small deit_base pvt_v2_b0 pvt_v2_b1"}
  echo "== device-check on $gpu (sm_$cc, driver $driver)"
fi

# The lent GPU machines have CUDA, CMake and PyTorch but not the Debian -dev packages the build
# needs, and no network: scripts/fetch-device-deps.sh downloads them into .deps/ beforehand
# (carry it with the call); unpack them into a private prefix when the system lacks them.
if [ ! -f /usr/include/spdlog/spdlog.h ] && compgen -G ".deps/*.deb" >/dev/null; then
  deps=/tmp/shiftadd-deps
  mkdir -p "$deps"
  for f in .deps/*.deb; do dpkg -x "$f" "$deps"; done
  # Absolute symlinks (e.g. libz.so -> /lib/.../libz.so.1.2.13) point into the prefix instead.
  find "$deps" -type l | while read -r l; do
    t=$(readlink "$l")
    case "$t" in /*) if [ -e "$deps$t" ]; then ln -sf "$deps$t" "$l"; fi ;; esac
  done
  arch_lib="$deps/usr/lib/x86_64-linux-gnu:$deps/lib/x86_64-linux-gnu"
  export CMAKE_PREFIX_PATH="$deps/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export CPATH="$deps/usr/include${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$arch_lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$arch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PATH="$deps/usr/bin:$PATH"
  echo "== build dependencies from .deps/ unpacked into $deps"
elif [ ! -f /usr/include/spdlog/spdlog.h ]; then
  echo "device-check: the build dependencies are missing (no spdlog headers) and .deps/ is empty:" >&2
  echo "  run scripts/fetch-device-deps.sh where apt works and carry .deps with this call" >&2
  exit 1
fi

gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
mkdir -p "$B"
cmake -S . -B "$B" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "${cuda_flags[@]}" >"$B/configure.log" 2>&1 ||
  { cat "$B/configure.log"; exit 1; }
cmake --build "$B" -j "$jobs" --target shiftadd_tests shiftadd_cli
echo "== built ($(elapsed))"

# Every CUDA test; with a GPU present none may skip.
log="$B/cuda-tests.log"
set +e
"$B/tests/shiftadd_tests" --gtest_filter='Cuda*:*BackendOps.*/cuda*' 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then echo "device-check: CUDA tests FAILED" >&2; exit 1; fi
if grep -q '^\[  SKIPPED \] \(Cuda\(Backend\|Models\)\|.*BackendOps.*/cuda\)' "$log"; then
  echo "device-check: CUDA tests were skipped on a machine with a GPU" >&2
  exit 1
fi
echo "== CUDA tests passed ($(elapsed))"
[ "${SKIP_BENCH:-0}" = 1 ] && exit 0

models="$B/bench_models"
if [ ! -f "$models/shiftadd_pvt_v2_b1/model.safetensors" ]; then
  "$PY" scripts/gen_bench_models.py write "$models"
fi
echo "== models ready ($(elapsed))"

res="$B/device-check.jsonl"
: >"$res"
bench() {  # tag model batch math [extra bench args...]
  local tag=$1 model=$2 batch=$3 math=$4
  shift 4
  local runs=20 warm=5
  [ "$batch" -ge 64 ] && runs=10 && warm=3
  runs=${RUNS:-$runs}
  warm=${WARMUP:-$warm}
  local line
  if line=$(SHIFTADD_CUDA_MATH=$math "$B/shiftadd" bench "$models/$model" --device cuda -b "$batch" -r "$runs" -w "$warm" --json "$@" 2>/dev/null | tail -1) && [ -n "$line" ]; then
    echo "{\"engine\":\"$tag\",\"name\":\"$model\",\"result\":$line}" >>"$res"
  else
    echo "{\"engine\":\"$tag\",\"name\":\"$model\",\"batch\":$batch,\"error\":true}" >>"$res"
  fi
}
for batch in $BATCHES; do
  for m in $MODELS; do
    bench dense_fp32 "$m" "$batch" fp32
    bench dense_fp16 "$m" "$batch" fp16
    case "$m" in
      pvt_v2_*)
        bench shiftadd_exact "shiftadd_$m" "$batch" fp32 --mode exact
        bench shiftadd_fast "shiftadd_$m" "$batch" fp32 --mode fast
        ;;
    esac
  done
  echo "== engine batch $batch timed ($(elapsed))"
done
"$PY" scripts/gen_bench_models.py torch "$models" $BATCHES >"$B/torch.jsonl" || echo "device-check: PyTorch timing failed" >&2
echo "== PyTorch timed ($(elapsed))"

"$PY" - "$res" "$B/torch.jsonl" "$gpu" "$B/device-check.md" <<'EOF'
import json, sys
res, torch_res, gpu, out = sys.argv[1:5]
eng = {}
for line in open(res):
    r = json.loads(line)
    name = r["name"]
    if r.get("error"):
        eng[(r["engine"], name, r["batch"])] = None
        continue
    eng[(r["engine"], name, r["result"]["batch"])] = r["result"]["median_ms"]
tor = {}
try:
    for line in open(torch_res):
        r = json.loads(line)
        tor[(r["dtype"], r["model"], r["batch"])] = r["median_ms"]
except FileNotFoundError:
    pass
batches = sorted({k[2] for k in eng})
def f(v):
    return "—" if v is None else ("%.3f" % v)
rows = ["| model | batch | engine dense fp32 | engine dense fp16 | engine ShiftAdd exact | engine ShiftAdd fast | PyTorch eager fp32 | PyTorch eager fp16 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for m in ["deit_tiny", "deit_small", "deit_base", "pvt_v2_b0", "pvt_v2_b1"]:
    if not any(k[1] == m for k in eng):
        continue  # not in MODELS
    sa = "shiftadd_" + m if m.startswith("pvt") else None
    for b in batches:
        rows.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
            m + (" / ShiftAdd" if sa else ""), b, f(eng.get(("dense_fp32", m, b))), f(eng.get(("dense_fp16", m, b))),
            f(eng.get(("shiftadd_exact", sa, b))) if sa else "—", f(eng.get(("shiftadd_fast", sa, b))) if sa else "—",
            f(tor.get(("fp32", m, b))), f(tor.get(("fp16", m, b)))))
text = ("Latency on %s, median ms per batch (224x224, random weights; host input to host logits for both: "
        "engine `shiftadd bench --device cuda` with CUDA graphs, PyTorch eager in the same script; "
        "PVT rows: dense PVTv2 for the dense and PyTorch columns, ShiftAddViT MoE model for the ShiftAdd "
        "columns).\n\n" % gpu) + "\n".join(rows) + "\n"
open(out, "w").write(text)
print(text)
EOF
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$B/device-check.md" "$res" "$B/torch.jsonl" "$log" "$OUT/" 2>/dev/null || true
fi
echo "== device-check done in $(elapsed)"
