// The converter (docs/converter.md): dense ViT / DeiT -> ShiftAddViT file.
//
// 1. Calibration: the dense model runs on the calibration images with every activation kept;
//    each converted linear layer's input rows are sampled (up to kMaxRows tokens per layer),
//    and each KSH block's q|k|v and attention output are kept per image.
// 2. Per layer, on those inputs: shift codes from the dense weight; MoE routers fitted so the
//    tokens whose shift output is closest to the dense one go to the shift expert; KSH hashes
//    fitted to the block's q and k. Each converted layer is run by the engine itself (a
//    one-layer graph) to measure its error against the dense layer.
// 3. The file is written atomically and loaded back; the end-to-end error is measured on the
//    calibration images by the engine.
#include "shiftadd/convert.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "convert/fit.h"
#include "engine/backend.h"
#include "engine/executor.h"
#include "core/log.h"
#include "runtime/model.h"
#include "core/shift_codes.h"
#include "loaders/atomic_write.h"
#include "loaders/safetensors.h"
#include "shiftadd/dataset.h"
#include "shiftadd/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace shiftadd::convert {

namespace {

constexpr int64_t kMaxRows = 4096;       // calibration tokens per layer
constexpr int64_t kMaxKshImages = 64;    // images whose whole q|k|v a KSH fit sees
constexpr double kCaptureBudget = 1.5e9; // bytes of captured activations

const std::set<std::string> kLinearKinds{"dense", "shift", "moe"};
const std::set<std::string> kAttnKinds{"dense", "ksh-linear"};

// ----- running graphs ------------------------------------------------------------------------

std::vector<float> run_graph(const Graph& g, Backend& be, int64_t batch, const float* x) {
  Executor ex(g, be);
  std::vector<float> y(static_cast<size_t>(batch * shape_numel(g.sample_shape(g.output_value()))));
  ex.run(batch, x, y.data());
  return y;
}

// Every value of `g` for one batch, kept (calibration only: allocates freely).
std::vector<std::vector<float>> run_all_values(const Graph& g, Backend& be, int64_t batch, const float* x) {
  std::vector<std::vector<float>> vals(g.values().size());
  for (size_t v = 0; v < vals.size(); ++v)
    vals[v].resize(static_cast<size_t>(batch * shape_numel(g.sample_shape(static_cast<int>(v)))));
  std::copy_n(x, vals[g.input_value()].size(), vals[g.input_value()].data());
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::Input) continue;
    be.reserve(g, n, batch);
    NodeBuffers b;
    b.batch = batch;
    for (size_t k = 0; k < n.inputs.size() && k < 2; ++k) b.in[k] = vals[n.inputs[k]].data();
    b.out = vals[n.output].data();
    be.run(g, n, b);
  }
  return vals;
}

double rel_fro(const std::vector<float>& y, const std::vector<float>& ref) {
  double d = 0, r = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    d += (static_cast<double>(y[i]) - ref[i]) * (static_cast<double>(y[i]) - ref[i]);
    r += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(d / std::max(r, 1e-30));
}

std::string code_detail(const std::vector<uint8_t>& codes) {
  int lo = 1, hi = -15;
  int64_t nz = 0;
  for (uint8_t c : codes) {
    if (shift_code_is_zero(c)) continue;
    ++nz;
    lo = std::min(lo, shift_code_exponent(c));
    hi = std::max(hi, shift_code_exponent(c));
  }
  std::ostringstream s;
  if (nz) s << "exponent [" << lo << ", " << hi << "], ";
  s << (codes.empty() ? 0 : (100 * nz + static_cast<int64_t>(codes.size()) / 2) / static_cast<int64_t>(codes.size()))
    << "% nonzero";
  return s.str();
}

Tensor f32_tensor(const std::vector<float>& v, Shape shape) {
  Tensor t = Tensor::empty(DType::F32, std::move(shape));
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}
Tensor u8_tensor(const std::vector<uint8_t>& v, Shape shape) {
  Tensor t = Tensor::empty(DType::U8, std::move(shape));
  std::copy(v.begin(), v.end(), t.data<uint8_t>());
  return t;
}

// ----- one linear layer ---------------------------------------------------------------------

struct LinearJob {
  std::string name;  // timm name, e.g. blocks.0.mlp.fc1
  std::string kind;  // shift | moe (dense layers are not jobs)
  int node = -1;     // its node in the dense graph
  int64_t K = 0, N = 0;
  bool gelu = false;
  std::vector<float> x;  // sampled input rows [R, K]
  int64_t R = 0;
};

// Output of the dense layer on the job's rows (the engine's own GEMM, GELU fused as in the model).
std::vector<float> dense_rows(const LinearJob& j, const Tensor& w, const Tensor& b, Backend& be) {
  Graph g;
  const int x = g.input({j.K});
  g.set_output(g.linear(x, w, b, j.name, j.gelu));
  return run_graph(g, be, j.R, j.x.data());
}

std::vector<float> shift_rows(const LinearJob& j, const ShiftWeights& sw, Backend& be) {
  Graph g;
  const int x = g.input({j.K});
  g.set_output(g.shift_linear(x, sw, j.name, j.gelu));
  return run_graph(g, be, j.R, j.x.data());
}

double time_us(const std::function<void()>& fn) {
  fn();  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  int reps = 0;
  do {
    fn();
    ++reps;
  } while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(50) && reps < 50);
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// The stored form of [N, K] codes at `bits` (docs/format.md): packed rows, and for 4 bits the
// row exponents (written to *exponents).
Tensor packed_codes(const std::vector<uint8_t>& codes, int64_t N, int64_t K, int bits, Tensor* exponents) {
  const int64_t row = packed_code_bytes(K, bits);
  Tensor t = Tensor::empty(DType::U8, {N, row});
  if (bits == 4) *exponents = Tensor::empty(DType::I8, {N});
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* c = codes.data() + n * K;
    const int e = bits == 4 ? shift_row_exponent(c, K) : 0;
    if (bits == 4) {
      exponents->data<int8_t>()[n] = static_cast<int8_t>(e);
      if (!codes_fit_4bit(c, K, e)) throw Error("convert: internal error: row " + std::to_string(n) + " exceeds 4 bits");
    }
    pack_code_row(c, K, bits, e, t.data<uint8_t>() + n * row);
  }
  return t;
}

// Converts one linear layer; adds its tensors to `out` and returns its report row. `be` runs in
// exact mode, `fast` in fast mode (the per-layer errors of both).
LayerReport convert_linear(LinearJob& j, const Tensor& w, const Tensor& b, const Options& o, Backend& be,
                           Backend& fast, std::map<std::string, Tensor>& out, json& layers) {
  LayerReport r;
  r.name = j.name;
  r.kind = j.kind;
  ShiftFit fit = fit_shift(w.data<float>(), j.N, j.K, o.shift_scale, o.shift_bits);
  std::vector<float> bias(static_cast<size_t>(j.N), 0.0f);
  if (b.defined())
    for (int64_t n = 0; n < j.N; ++n) bias[n] = b.data<float>()[n] / fit.scale[n];
  ShiftWeights sw;
  sw.codes = u8_tensor(fit.codes, {j.N, j.K});
  sw.bias = f32_tensor(bias, {j.N});
  if (o.shift_scale) sw.scale = f32_tensor(fit.scale, {j.N});
  r.detail = code_detail(fit.codes) + (o.shift_scale ? ", per-channel scale" : "");
  {
    // 4 bits: nonzero weights the converter moved into the int8 window (rounded to its lowest
    // exponent or to 0); 5 bits: nonzero weights fast mode drops.
    int64_t nonzero = 0, outside = fit.windowed;
    for (int64_t n = 0; n < j.N; ++n) {
      const uint8_t* c = fit.codes.data() + n * j.K;
      const int lowest = shift_row_exponent(c, j.K) - (kShiftInt8Levels - 1);
      for (int64_t k = 0; k < j.K; ++k) {
        if (shift_code_is_zero(c[k])) continue;
        ++nonzero;
        outside += shift_code_exponent(c[k]) < lowest;
      }
    }
    r.outside_window = static_cast<double>(outside) / static_cast<double>(std::max<int64_t>(1, nonzero + fit.windowed));
  }
  json entry{{"kind", j.kind}, {"bits", o.shift_bits}, {"scale", o.shift_scale}};
  {
    int lo = 1, hi = -15;
    for (uint8_t c : fit.codes)
      if (!shift_code_is_zero(c)) lo = std::min(lo, shift_code_exponent(c)), hi = std::max(hi, shift_code_exponent(c));
    if (hi >= lo) entry["exponent"] = {lo, hi};
  }

  const std::vector<float> yd = dense_rows(j, w, b, be);
  std::vector<float> ys = shift_rows(j, sw, be);
  const std::string p = j.kind == "moe" ? j.name + ".experts.1" : j.name;
  Tensor exponents;
  out[p + ".codes"] = packed_codes(fit.codes, j.N, j.K, o.shift_bits, &exponents);
  if (o.shift_bits == 4) out[p + ".exponent"] = exponents;
  out[p + ".bias"] = sw.bias;
  if (o.shift_scale) out[p + ".scale"] = sw.scale;
  if (j.kind == "shift") {
    r.rel_error = rel_fro(ys, yd);
    r.rel_error_fast = rel_fro(shift_rows(j, sw, fast), yd);
    layers[j.name] = entry;
    return r;
  }

  // MoE: the share for the shift expert, then a router that sends it the tokens on which the
  // shift expert is closest to the dense one.
  double share = o.shift_ratio;
  if (o.latency_aware) {
    Graph gd, gs;
    const int xd = gd.input({j.K}), xs = gs.input({j.K});
    gd.set_output(gd.linear(xd, w, b, j.name, j.gelu));
    gs.set_output(gs.shift_linear(xs, sw, j.name, j.gelu));
    Executor ed(gd, be), es(gs, be);
    std::vector<float> y(static_cast<size_t>(j.R * j.N));
    r.dense_us = time_us([&] { ed.run(j.R, j.x.data(), y.data()); }) * 1000.0 / static_cast<double>(j.R);
    r.shift_us = time_us([&] { es.run(j.R, j.x.data(), y.data()); }) * 1000.0 / static_cast<double>(j.R);
    // Load balance weighted by latency (spec section 4): tokens_e ~ 1 / latency_e.
    share = r.dense_us / (r.dense_us + r.shift_us);
  }
  std::vector<double> score(static_cast<size_t>(j.R));
  for (int64_t t = 0; t < j.R; ++t) {
    double d = 0, n = 0;
    for (int64_t c = 0; c < j.N; ++c) {
      const double a = ys[t * j.N + c], ref = yd[t * j.N + c];
      d += (a - ref) * (a - ref);
      n += ref * ref;
    }
    score[t] = -std::log(d / std::max(n, 1e-30) + 1e-12);  // higher: shift expert closer
  }
  std::vector<double> v;
  double c0 = 0;
  ridge(j.x.data(), j.R, j.K, score.data(), 1e-2, v, c0);
  std::vector<double> gap(static_cast<size_t>(j.R));
  for (int64_t t = 0; t < j.R; ++t) {
    double s = c0;
    for (int64_t k = 0; k < j.K; ++k) s += v[k] * j.x[t * j.K + k];
    gap[t] = s;
  }
  // Bias so that `share` of the calibration tokens have a positive gap (go to expert 1).
  std::vector<double> sorted(gap);
  std::sort(sorted.begin(), sorted.end());
  double thr;
  if (share <= 0) thr = sorted.back() + 1;
  else if (share >= 1) thr = sorted.front() - 1;
  else {
    const size_t cut = static_cast<size_t>(std::llround((1.0 - share) * static_cast<double>(j.R)));
    thr = cut == 0 ? sorted.front() - 1e-3
                   : cut >= sorted.size() ? sorted.back() + 1e-3 : 0.5 * (sorted[cut - 1] + sorted[cut]);
  }
  std::vector<float> wg(static_cast<size_t>(2 * j.K), 0.0f), bg{0.0f, static_cast<float>(c0 - thr)};
  for (int64_t k = 0; k < j.K; ++k) wg[j.K + k] = static_cast<float>(v[k]);
  out[j.name + ".router.weight"] = f32_tensor(wg, {2, j.K});
  out[j.name + ".router.bias"] = f32_tensor(bg, {2});
  out[j.name + ".experts.0.weight"] = w;
  if (b.defined()) out[j.name + ".experts.0.bias"] = b;
  else out[j.name + ".experts.0.bias"] = f32_tensor(std::vector<float>(static_cast<size_t>(j.N), 0.0f), {j.N});
  // Error of the whole MoE layer as the engine runs it (both modes).
  Graph g;
  const int x = g.input({j.K});
  g.set_output(g.moe_linear(x, out[j.name + ".router.weight"], out[j.name + ".router.bias"], w,
                            out[j.name + ".experts.0.bias"], sw, j.name, /*log_exp_combine=*/false, j.gelu));
  const std::vector<float> ym = run_graph(g, be, j.R, j.x.data());
  const auto tokens = be.expert_tokens(1);
  r.shift_share = static_cast<double>(tokens[1]) / static_cast<double>(std::max<int64_t>(1, tokens[0] + tokens[1]));
  r.rel_error = rel_fro(ym, yd);
  r.rel_error_fast = rel_fro(run_graph(g, fast, j.R, j.x.data()), yd);
  r.detail += ", router: " + std::to_string(static_cast<int>(std::lround(100 * r.shift_share))) + "% to shift";
  entry["shift_ratio"] = r.shift_share;
  entry["combine"] = "none";
  layers[j.name] = entry;
  return r;
}

// ----- KSH attention of one block -----------------------------------------------------------

struct KshJob {
  int64_t block = 0;
  int qkv_value = -1, attn_value = -1;
  std::vector<float> qkv, attn;  // per kept image: [T, 3C] and [T, C]
  int64_t images = 0;
  std::vector<float> alpha;      // per head: output scale, folded into the block's proj
};

// Fits anchors (k-means of the normalised q and k rows), mvec (mean kernel feature) and A (top
// principal directions of the centred kernel features: kernelised PCA hashing) per head.
LayerReport convert_ksh(KshJob& j, const VitConfig& c, const Options& o, Backend& be, std::mt19937& rng,
                        std::map<std::string, Tensor>& out, json& layers) {
  const int64_t T = c.tokens(), C = c.dim, H = c.heads, d = C / H, m = o.anchors, nb = o.bits;
  const std::string b = "blocks." + std::to_string(j.block) + ".attn";
  std::vector<float> anchor(static_cast<size_t>(H * m * d)), mvec(static_cast<size_t>(H * m)),
      A(static_cast<size_t>(H * nb * m)), taps(static_cast<size_t>(H * 9), 0.0f);
  for (int64_t h = 0; h < H; ++h) {
    // Normalised q and k rows of this head over all kept images (q rows, then k rows).
    std::vector<float> rows;
    rows.reserve(static_cast<size_t>(2 * j.images * T * d));
    for (int s = 0; s < 2; ++s)
      for (int64_t i = 0; i < j.images; ++i)
        for (int64_t t = 0; t < T; ++t) {
          const float* src = j.qkv.data() + (i * T + t) * 3 * C + s * C + h * d;
          double nn = 0;
          for (int64_t e = 0; e < d; ++e) nn += static_cast<double>(src[e]) * src[e];
          const double inv = nn > 0 ? 1.0 / std::sqrt(nn) : 0.0;
          for (int64_t e = 0; e < d; ++e) rows.push_back(static_cast<float>(src[e] * inv));
        }
    const int64_t R = static_cast<int64_t>(rows.size()) / d;
    const std::vector<float> centres = kmeans(rows, R, d, m, 12, rng);
    std::copy(centres.begin(), centres.end(), anchor.begin() + h * m * d);
    // Kernel features as inference computes them: sigma per image and per stream (q or k).
    std::vector<double> F(static_cast<size_t>(R * m));
    for (int64_t g = 0; g < 2 * j.images; ++g) {
      double sigma = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t a = 0; a < m; ++a) {
          double dd = 0;
          for (int64_t e = 0; e < d; ++e) {
            const double z = rows[(g * T + t) * d + e] - centres[a * d + e];
            dd += z * z;
          }
          F[(g * T + t) * m + a] = dd;
          sigma += dd;
        }
      sigma /= static_cast<double>(T * m);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t a = 0; a < m; ++a) {
          double& f = F[(g * T + t) * m + a];
          f = sigma > 0 ? std::exp(-f / (2 * sigma)) : 1.0;
        }
    }
    std::vector<double> mean(static_cast<size_t>(m), 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t a = 0; a < m; ++a) mean[a] += F[r * m + a];
    for (double& v : mean) v /= static_cast<double>(R);
    std::vector<double> cov(static_cast<size_t>(m * m), 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t a = 0; a < m; ++a)
        for (int64_t e = 0; e < m; ++e) cov[a * m + e] += (F[r * m + a] - mean[a]) * (F[r * m + e] - mean[e]);
    std::vector<double> vals, vecs;
    symmetric_eigen(cov, static_cast<int>(m), vals, vecs);
    for (int64_t a = 0; a < m; ++a) mvec[h * m + a] = static_cast<float>(mean[a]);
    for (int64_t k = 0; k < nb; ++k)
      for (int64_t a = 0; a < m; ++a) A[(h * nb + k) * m + a] = static_cast<float>(vecs[k * m + a]);
  }
  out[b + ".ksh.anchor"] = f32_tensor(anchor, {H, m, d});
  out[b + ".ksh.mvec"] = f32_tensor(mvec, {H, m});
  out[b + ".ksh.A"] = f32_tensor(A, {H, nb, m});
  out[b + ".dconv.weight"] = f32_tensor(taps, {H, 9});
  layers[b] = json{{"kind", "ksh"}, {"bits", nb}, {"anchors", m}};
  auto run_ksh = [&] {
    Graph g;
    const int x = g.input({T, 3 * C});
    g.set_output(g.ksh_attention_qkv(x, H, out[b + ".ksh.anchor"], out[b + ".ksh.mvec"], out[b + ".ksh.A"],
                                     out[b + ".dconv.weight"], b));
    return run_graph(g, be, j.images, j.qkv.data());
  };
  // The output is unit-norm per token and head (Z / ||Z||) plus dconv(V): fit, per head, a scale
  // alpha and the 9 dconv taps by least squares so that alpha * Z/||Z|| + dconv(V) matches the
  // dense attention output; alpha is folded into the proj weight (fold_scale), taps / alpha stored.
  const std::vector<float> z = run_ksh();  // taps are zero: z = Z / ||Z||
  j.alpha.assign(static_cast<size_t>(H), 1.0f);
  for (int64_t h = 0; h < H; ++h) {
    double M[10][10] = {}, rhs[10] = {};
    for (int64_t i = 0; i < j.images; ++i)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < d; ++e) {
          double f[10];
          f[0] = z[(i * T + t) * C + h * d + e];
          for (int64_t k = 0; k < 9; ++k) {
            const int64_t src = t - 4 + k;
            f[k + 1] = src >= 0 && src < T ? j.qkv[(i * T + src) * 3 * C + 2 * C + h * d + e] : 0.0;
          }
          const double y = j.attn[(i * T + t) * C + h * d + e];
          for (int a = 0; a < 10; ++a) {
            rhs[a] += f[a] * y;
            for (int bb = 0; bb < 10; ++bb) M[a][bb] += f[a] * f[bb];
          }
        }
    for (int a = 0; a < 10; ++a) M[a][a] += 1e-6 * (M[a][a] + 1e-12);
    // Gaussian elimination with partial pivoting (10 x 10).
    int piv[10];
    for (int a = 0; a < 10; ++a) piv[a] = a;
    double sol[10];
    for (int col = 0; col < 10; ++col) {
      int best = col;
      for (int r2 = col + 1; r2 < 10; ++r2)
        if (std::fabs(M[r2][col]) > std::fabs(M[best][col])) best = r2;
      std::swap(M[col], M[best]);
      std::swap(rhs[col], rhs[best]);
      for (int r2 = col + 1; r2 < 10; ++r2) {
        const double fct = M[r2][col] / M[col][col];
        for (int c2 = col; c2 < 10; ++c2) M[r2][c2] -= fct * M[col][c2];
        rhs[r2] -= fct * rhs[col];
      }
    }
    for (int a = 9; a >= 0; --a) {
      double v = rhs[a];
      for (int c2 = a + 1; c2 < 10; ++c2) v -= M[a][c2] * sol[c2];
      sol[a] = v / M[a][a];
    }
    (void)piv;
    const double alpha = std::max(sol[0], 1e-3);
    j.alpha[h] = static_cast<float>(alpha);
    for (int k = 0; k < 9; ++k) taps[h * 9 + k] = static_cast<float>(sol[k + 1] / alpha);
  }
  out[b + ".dconv.weight"] = f32_tensor(taps, {H, 9});
  std::vector<float> y = run_ksh();
  for (int64_t r = 0; r < j.images * T; ++r)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t e = 0; e < d; ++e) y[r * C + h * d + e] *= j.alpha[h];
  LayerReport r;
  r.name = b;
  r.kind = "ksh";
  r.rel_error = rel_fro(y, j.attn);
  r.detail = std::to_string(nb) + "-bit codes, " + std::to_string(m) +
             " anchors (k-means), A by kernel PCA, dconv + per-head scale by least squares";
  return r;
}

// ----- checks and helpers -------------------------------------------------------------------

void check_options(const Options& o) {
  if (o.input.empty() || o.output.empty()) throw Error("convert: INPUT and OUTPUT are required");
  if (!kLinearKinds.count(o.mlp)) throw Error("convert: --mlp '" + o.mlp + "': expected dense, shift or moe");
  if (!kLinearKinds.count(o.attn_proj))
    throw Error("convert: --attn-proj '" + o.attn_proj + "': expected dense, shift or moe");
  if (!kAttnKinds.count(o.attn)) throw Error("convert: --attn '" + o.attn + "': expected dense or ksh-linear");
  if (o.bits < 1 || o.bits > 64) throw Error("convert: --bits " + std::to_string(o.bits) + ": expected 1..64");
  if (o.shift_bits != 4 && o.shift_bits != 5)
    throw Error("convert: --bits-shift " + std::to_string(o.shift_bits) + ": expected 4 or 5");
  if (o.anchors < 1) throw Error("convert: --anchors must be >= 1");
  if (o.bits > o.anchors)
    throw Error("convert: --bits " + std::to_string(o.bits) + " > --anchors " + std::to_string(o.anchors) +
                ": each bit is a principal direction of the anchors' kernel features, so bits <= anchors");
  if (!(o.shift_ratio >= 0 && o.shift_ratio <= 1))
    throw Error("convert: --shift-ratio " + std::to_string(o.shift_ratio) + ": expected a share in [0, 1]");
  if (o.calib_count < 1) throw Error("convert: --calib-count must be >= 1");
  if (o.calib.empty())
    throw Error("convert: --calib is required: calibration images (a folder, a .npy or IDX files) fit the "
                "routers and hashes and measure the error report");
  std::error_code ec;
  if (!o.force && fs::exists(o.output, ec))
    throw Error(o.output + ": already exists; pass --force to replace it");
  if (fs::exists(o.output, ec) && fs::equivalent(o.output, o.input, ec))
    throw Error(o.output + ": is the input model; write the converted model to another file");
}

json config_json(const VitConfig& c, const ModelInfo& info) {
  json j;
  j["architecture"] = info.architecture;
  j["embed_dim"] = c.dim;
  j["depth"] = c.depth;
  j["num_heads"] = c.heads;
  j["patch_size"] = c.patch_size;
  j["img_size"] = c.image_size;
  j["in_chans"] = c.in_chans;
  j["num_classes"] = c.num_classes;
  j["layer_norm_eps"] = c.eps;
  if (!c.labels.empty()) j["label_names"] = c.labels;
  const PreprocessConfig& p = c.preprocess;
  j["shiftadd_preprocess"] = {{"crop_pct", p.crop_pct}, {"resize_exact", p.resize_exact},
                              {"resize_exact_size", p.resize_exact_size}, {"interpolation", p.interpolation},
                              {"mean", p.mean}, {"std", p.std}};
  return j;
}

// PVTv2: what infer_pvt_v2_config needs beside the tensors (heads per stage from the graph).
json pvt_config_json(const Graph& g, const ModelInfo& info, const PreprocessConfig& p) {
  json heads = json::array();
  for (int s = 1;; ++s) {
    const std::string name = "block" + std::to_string(s) + ".0.attn";
    const auto it = std::find_if(g.nodes().begin(), g.nodes().end(), [&](const Node& n) { return n.name == name; });
    if (it == g.nodes().end()) break;
    heads.push_back(it->p.heads);
  }
  json j{{"architecture", "pvt_v2"}, {"img_size", info.image_size}, {"in_chans", info.in_chans},
         {"num_classes", info.num_classes}, {"num_heads", heads}};
  if (!info.labels.empty()) j["label_names"] = info.labels;
  j["shiftadd_preprocess"] = {{"crop_pct", p.crop_pct}, {"resize_exact", p.resize_exact},
                              {"resize_exact_size", p.resize_exact_size}, {"interpolation", p.interpolation},
                              {"mean", p.mean}, {"std", p.std}};
  return j;
}

int find_node(const Graph& g, const std::string& name) {
  const auto& nodes = g.nodes();
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace

// ----- the pipeline -------------------------------------------------------------------------

Report convert_model(const Options& o) {
  const auto t_start = std::chrono::steady_clock::now();
  check_options(o);
  auto progress = [&](const char* stage, int64_t done, int64_t total) {
    if (o.progress) o.progress(stage, done, total);
  };
  const auto model = Model::load(o.input);
  const Model::Impl& mi = model->impl();
  const ModelInfo& info = model->info();
  if (info.architecture.rfind("shiftadd", 0) == 0 || info.naming == "shiftadd")
    throw Error(o.input + ": is already a ShiftAddViT model (" + info.architecture + "); convert the dense model");
  const bool pvt = info.architecture == "pvt_v2";
  if (info.architecture != "vit" && info.architecture != "deit-distilled" && !pvt)
    throw Error(o.input + ": architecture '" + info.architecture +
                "' cannot be converted (supported: ViT / DeiT from timm, Hugging Face or ONNX; PVTv2)");
  if (pvt && o.attn != "dense")
    throw Error("convert: --attn " + o.attn + " is for ViT / DeiT: PVTv2's spatial-reduction attention has no "
                "LinAngular counterpart to convert to without retraining (upstream trains to_qk / to_v); keep "
                "--attn dense for PVTv2");
  static const VitConfig kNotVit;  // PVTv2: the ViT-only steps below (KSH blocks) do not run
  const VitConfig* vit = std::get_if<VitConfig>(&mi.config);
  const VitConfig& c = vit ? *vit : kNotVit;
  const Graph& dense = mi.graph;
  // Blocks ("blocks.{i}." or PVTv2's "block{s}.{j}.") and their linear layers.
  std::vector<std::string> blocks;
  for (const Node& n : dense.nodes())
    if (n.name.size() > 6 && n.name.compare(n.name.size() - 6, 6, ".norm1") == 0)
      blocks.push_back(n.name.substr(0, n.name.size() - 5));
  const std::vector<std::pair<std::string, const std::string*>> linears =
      pvt ? std::vector<std::pair<std::string, const std::string*>>{{"attn.q", &o.attn_proj},
                                                                     {"attn.kv", &o.attn_proj},
                                                                     {"attn.proj", &o.attn_proj},
                                                                     {"mlp.fc1", &o.mlp},
                                                                     {"mlp.fc2", &o.mlp}}
          : std::vector<std::pair<std::string, const std::string*>>{
                {"attn.qkv", &o.attn_proj}, {"attn.proj", &o.attn_proj}, {"mlp.fc1", &o.mlp}, {"mlp.fc2", &o.mlp}};

  // Which layers change.
  std::set<int64_t> ksh_blocks;
  if (o.attn == "ksh-linear") {
    if (o.ksh_blocks.empty())
      for (int64_t i = 0; i + 1 < c.depth || (c.depth == 1 && i == 0); ++i) ksh_blocks.insert(i);
    for (int64_t i : o.ksh_blocks) {
      if (i < 0 || i >= c.depth)
        throw Error("convert: --ksh-blocks " + std::to_string(i) + ": the model has blocks 0.." +
                    std::to_string(c.depth - 1));
      ksh_blocks.insert(i);
    }
    const int64_t T = c.tokens();
    if (2 * T * std::min<int64_t>(o.calib_count, kMaxKshImages) < o.anchors)
      throw Error("convert: too few calibration tokens for " + std::to_string(o.anchors) + " anchors");
  }
  std::vector<LinearJob> jobs;
  for (const std::string& b : blocks) {
    for (const auto& [suffix, kind] : linears) {
      if (*kind == "dense") continue;
      LinearJob j;
      j.name = b + suffix;
      j.kind = *kind;
      j.node = find_node(dense, j.name);
      if (j.node < 0) throw Error(o.input + ": no layer '" + j.name + "' in the model graph");
      const Node& n = dense.nodes()[j.node];
      j.K = dense.sample_shape(n.inputs[0]).back();
      j.N = dense.sample_shape(n.output).back();
      j.gelu = n.p.gelu;
      jobs.push_back(std::move(j));
    }
  }
  std::vector<KshJob> kjobs;
  for (int64_t i : ksh_blocks) {
    KshJob k;
    k.block = i;
    const std::string b = "blocks." + std::to_string(i) + ".attn";
    const int qkv = find_node(dense, b + ".qkv"), attn = find_node(dense, b);
    if (qkv < 0 || attn < 0) throw Error(o.input + ": no attention '" + b + "' in the model graph");
    k.qkv_value = dense.nodes()[qkv].output;
    k.attn_value = dense.nodes()[attn].output;
    kjobs.push_back(std::move(k));
  }

  // Calibration data.
  DatasetOptions dopt;
  dopt.split = o.calib_split;
  dopt.limit = o.calib_count;
  dopt.labels = info.labels;
  const Dataset data = Dataset::open(o.calib, dopt);
  const int64_t N = data.size();
  if (N == 0) throw Error(o.calib + ": no calibration images");
  const int64_t in_size = info.in_chans * info.image_size * info.image_size;
  std::vector<float> images(static_cast<size_t>(N * in_size));
  for (int64_t i = 0; i < N; ++i) data.preprocess(i, *model, images.data() + i * in_size);

  // 1. Capture: every job's sampled input rows, every KSH block's q|k|v and attention output.
  int64_t sum_k = 0;
  for (const LinearJob& j : jobs) sum_k += j.K;
  const int64_t rows = std::max<int64_t>(
      64, std::min<int64_t>(kMaxRows, sum_k ? static_cast<int64_t>(kCaptureBudget / (4.0 * sum_k)) : kMaxRows));
  std::mt19937 rng(o.seed);
  auto backend = make_cpu_backend(o.threads);
  auto fast_backend = make_cpu_backend(o.threads, kernels::ShiftMode::Fast);
  const int64_t per_image_bytes = [&] {
    int64_t s = 0;
    for (const ValueInfo& v : dense.values()) s += 4 * shape_numel(v.sample_shape);
    return s;
  }();
  const int64_t chunk = std::clamp<int64_t>(int64_t{512} * 1024 * 1024 / std::max<int64_t>(per_image_bytes, 1), 1, 32);
  for (LinearJob& j : jobs) j.x.reserve(static_cast<size_t>(rows * j.K));
  const int64_t ksh_images = std::min(N, kMaxKshImages);
  std::vector<float> dense_logits;
  dense_logits.reserve(static_cast<size_t>(N * info.num_classes));
  for (int64_t i0 = 0; i0 < N; i0 += chunk) {
    const int64_t nb = std::min(chunk, N - i0);
    const auto vals = run_all_values(dense, *backend, nb, images.data() + i0 * in_size);
    const auto& logits = vals[dense.output_value()];
    dense_logits.insert(dense_logits.end(), logits.begin(), logits.end());
    for (LinearJob& j : jobs) {
      const std::vector<float>& x = vals[dense.nodes()[j.node].inputs[0]];
      const int64_t per_image = static_cast<int64_t>(x.size()) / (nb * j.K);
      // Rows spread evenly over the images: this image's share of the layer's budget.
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t img = i0 + i;
        const int64_t want = (img + 1) * rows / N - img * rows / N;
        std::vector<int64_t> idx(static_cast<size_t>(per_image));
        std::iota(idx.begin(), idx.end(), 0);
        std::shuffle(idx.begin(), idx.end(), rng);
        for (int64_t t = 0; t < std::min(want, per_image); ++t) {
          const float* src = x.data() + (i * per_image + idx[t]) * j.K;
          j.x.insert(j.x.end(), src, src + j.K);
        }
      }
    }
    for (KshJob& k : kjobs)
      for (int64_t i = 0; i < nb && i0 + i < ksh_images; ++i) {
        const auto& q = vals[k.qkv_value];
        const auto& a = vals[k.attn_value];
        const size_t qs = q.size() / static_cast<size_t>(nb), as = a.size() / static_cast<size_t>(nb);
        k.qkv.insert(k.qkv.end(), q.begin() + i * qs, q.begin() + (i + 1) * qs);
        k.attn.insert(k.attn.end(), a.begin() + i * as, a.begin() + (i + 1) * as);
        ++k.images;
      }
    progress("calibrate", i0 + nb, N);
  }
  for (LinearJob& j : jobs) j.R = static_cast<int64_t>(j.x.size()) / j.K;

  // 2. Convert.
  Report rep;
  rep.input = o.input;
  rep.output = o.output;
  rep.source_architecture = info.architecture;
  rep.calib_images = N;
  rep.calib_tokens_per_layer = jobs.empty() ? 0 : jobs.front().R;
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : mi.weights.tensors) out[name] = t;
  json layers = json::object();
  const int64_t total = static_cast<int64_t>(jobs.size() + kjobs.size());
  int64_t done = 0;
  std::map<std::string, Tensor> folded;  // proj weights with a KSH block's output scale folded in
  for (KshJob& k : kjobs) {
    rep.layers.push_back(convert_ksh(k, c, o, *backend, rng, out, layers));
    // Fold the per-head output scale into proj's input columns (and its calibration rows).
    const std::string proj = "blocks." + std::to_string(k.block) + ".attn.proj";
    const int pn = find_node(dense, proj);
    const int64_t C = c.dim, d = C / c.heads;
    Tensor w = Tensor::empty(DType::F32, {C, C});
    std::copy_n(dense.nodes()[pn].w(LinearW::Weight).data<float>(), C * C, w.data<float>());
    for (int64_t r = 0; r < C; ++r)
      for (int64_t col = 0; col < C; ++col) w.data<float>()[r * C + col] *= k.alpha[col / d];
    folded[proj] = w;
    if (out.count(proj + ".weight")) out[proj + ".weight"] = w;
    for (LinearJob& j : jobs)
      if (j.name == proj)
        for (int64_t r = 0; r < j.R; ++r)
          for (int64_t col = 0; col < C; ++col) j.x[r * C + col] /= k.alpha[col / d];
    k.qkv.clear();
    k.attn.clear();
    progress("layers", ++done, total);
  }
  for (LinearJob& j : jobs) {
    const Node& n = dense.nodes()[j.node];
    const Tensor w = folded.count(j.name) ? folded[j.name] : n.w(LinearW::Weight);
    const Tensor b = n.f32_or_null(LinearW::Bias) ? n.w(LinearW::Bias) : Tensor();
    out.erase(j.name + ".weight");
    out.erase(j.name + ".bias");
    rep.layers.push_back(convert_linear(j, w, b, o, *backend, *fast_backend, out, layers));
    j.x.clear();
    j.x.shrink_to_fit();
    progress("layers", ++done, total);
  }
  for (const std::string& b : blocks) {
    for (const auto& [suffix, kind] : linears)
      if (!layers.contains(b + suffix)) layers[b + suffix] = json::object({{"kind", "dense"}});
    if (!layers.contains(b + "attn")) layers[b + "attn"] = json::object({{"kind", "softmax"}});
  }
  std::sort(rep.layers.begin(), rep.layers.end(), [&](const LayerReport& a, const LayerReport& b) {
    return find_node(dense, a.name) < find_node(dense, b.name);
  });

  // 3. Write (atomically), load back, check end to end.
  json source{{"input", fs::path(o.input).filename().string()}, {"mlp", o.mlp}, {"attn_proj", o.attn_proj},
              {"attn", o.attn}, {"calib_images", N}, {"shift_scale", o.shift_scale}, {"shift_bits", o.shift_bits},
              {"shift_ratio", o.latency_aware ? json("latency-aware") : json(o.shift_ratio)}};
  std::map<std::string, std::string> meta{{"format", "shiftadd"},
                                          {"format_version", "2"},
                                          {"architecture", pvt ? "pvt_v2" : "vit"},
                                          {"config", (pvt ? pvt_config_json(dense, info, mi.preprocess)
                                                          : config_json(c, info)).dump()},
                                          {"layers", layers.dump()},
                                          {"source", "shiftadd " + version() + " convert " + source.dump()}};
  save_safetensors(o.output, out, meta, o.force);
  const auto converted = Model::load(o.output);
  Session s(converted, {o.threads});
  int64_t agree = 0;
  double diff = 0, ref = 0;
  const int64_t K = info.num_classes;
  for (int64_t i0 = 0; i0 < N; i0 += 32) {
    const int64_t nb = std::min<int64_t>(32, N - i0);
    std::vector<float> y(static_cast<size_t>(nb * K));
    s.run(images.data() + i0 * in_size, nb, y.data());
    for (int64_t i = 0; i < nb; ++i) {
      const float* a = y.data() + i * K;
      const float* d = dense_logits.data() + (i0 + i) * K;
      for (int64_t k = 0; k < K; ++k) {
        diff = std::max(diff, std::fabs(static_cast<double>(a[k]) - d[k]));
        ref = std::max(ref, std::fabs(static_cast<double>(d[k])));
      }
      agree += std::max_element(a, a + K) - a == std::max_element(d, d + K) - d;
    }
    progress("check", i0 + nb, N);
  }
  rep.logit_rel_error = diff / std::max(ref, 1e-30);
  rep.top1_agreement = static_cast<double>(agree) / static_cast<double>(N);
  if (rep.top1_agreement < kTop1AgreementWarning) {
    char w[400];
    std::snprintf(w, sizeof w,
                  "top-1 agreement with the dense model collapsed to %.1f%% (below %.0f%%): fine-tune the "
                  "converted model with tools/finetune_shiftadd.py (docs/accuracy.md), or convert fewer "
                  "layers (e.g. --mlp moe, --attn dense)",
                  100 * rep.top1_agreement, 100 * kTop1AgreementWarning);
    rep.warnings.push_back(w);
  }
  std::error_code ec;
  rep.input_bytes = static_cast<int64_t>(fs::file_size(info.path, ec));
  rep.output_bytes = static_cast<int64_t>(fs::file_size(o.output, ec));
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return rep;
}

// ----- report -------------------------------------------------------------------------------

json Report::to_json() const {
  json l = json::array();
  for (const LayerReport& r : layers) {
    json e{{"name", r.name}, {"kind", r.kind}, {"rel_error", r.rel_error}, {"detail", r.detail}};
    if (r.rel_error_fast >= 0) e["rel_error_fast"] = r.rel_error_fast, e["outside_int8_window"] = r.outside_window;
    if (r.shift_share >= 0) e["shift_share"] = r.shift_share;
    if (r.dense_us > 0) e["dense_us_per_1k_tokens"] = r.dense_us, e["shift_us_per_1k_tokens"] = r.shift_us;
    l.push_back(e);
  }
  return json{{"input", input},
              {"output", output},
              {"source_architecture", source_architecture},
              {"calib_images", calib_images},
              {"calib_tokens_per_layer", calib_tokens_per_layer},
              {"layers", l},
              {"logit_rel_error", logit_rel_error},
              {"top1_agreement", top1_agreement},
              {"input_bytes", input_bytes},
              {"output_bytes", output_bytes},
              {"seconds", seconds},
              {"warnings", warnings}};
}

void Report::save_json(const std::string& path, bool overwrite) const {
  const std::string text = to_json().dump(2) + "\n";
  write_file_atomic(path, {{text.data(), text.size()}}, overwrite);
}

std::string Report::to_table() const {
  std::ostringstream s;
  char line[512];
  std::snprintf(line, sizeof line, "%-22s %-6s %10s %10s %8s  %s\n", "layer", "kind", "rel.error", "fast", "window",
                "detail");
  s << line;
  for (const LayerReport& r : layers) {
    char fast[32] = "", window[32] = "";
    if (r.rel_error_fast >= 0) {
      std::snprintf(fast, sizeof fast, "%.4f", r.rel_error_fast);
      std::snprintf(window, sizeof window, "%.2f%%", 100 * r.outside_window);
    }
    std::snprintf(line, sizeof line, "%-22s %-6s %10.4f %10s %8s  %s\n", r.name.c_str(), r.kind.c_str(), r.rel_error,
                  fast, window, r.detail.c_str());
    s << line;
  }
  std::snprintf(line, sizeof line,
                "end to end on %lld calibration images: logits %.4f relative (max |diff| / max |dense|), "
                "top-1 unchanged on %.1f%%\n%s (%.2f MB) -> %s (%.2f MB) in %.1f s\n",
                static_cast<long long>(calib_images), logit_rel_error, 100 * top1_agreement, input.c_str(),
                input_bytes / 1e6, output.c_str(), output_bytes / 1e6, seconds);
  s << line;
  for (const std::string& w : warnings) s << "warning: " << w << "\n";
  return s.str();
}

}  // namespace shiftadd::convert
