#include "convert/fit.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/shift_codes.h"
#include "shiftadd/error.h"

namespace shiftadd::convert {

namespace {
uint8_t code_of(float w) {
  if (w == 0.0f || !std::isfinite(w)) return kShiftZeroCode;
  return pack_shift_weight(std::log2(std::fabs(w)), w > 0 ? 1.0f : -1.0f);
}
}  // namespace

ShiftFit fit_shift(const float* w, int64_t N, int64_t K, bool scale, int bits) {
  ShiftFit f;
  f.codes.resize(static_cast<size_t>(N * K));
  f.scale.assign(static_cast<size_t>(N), 1.0f);
  for (int64_t n = 0; n < N; ++n) {
    const float* row = w + n * K;
    uint8_t* c = f.codes.data() + n * K;
    float s = 1.0f;
    int64_t windowed = 0;
    for (int it = 0; it < (scale ? 3 : 1); ++it) {
      for (int64_t k = 0; k < K; ++k) c[k] = code_of(row[k] / s);
      windowed = 0;
      if (bits == 4) {
        const int e = shift_row_exponent(c, K);
        const int lowest = e - (kShiftInt8Levels - 1);
        for (int64_t k = 0; k < K; ++k) {
          if (shift_code_is_zero(c[k]) || shift_code_exponent(c[k]) >= lowest) continue;
          ++windowed;
          const float v = row[k] / s;
          c[k] = std::fabs(v) >= std::ldexp(1.0f, lowest - 1) ? encode_shift(v > 0 ? 1 : -1, lowest) : kShiftZeroCode;
        }
      }
      if (!scale) break;
      double num = 0, den = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double q = decode_shift_weight(c[k]);
        num += q * row[k];
        den += q * q;
      }
      if (den <= 0 || num <= 0) break;
      s = static_cast<float>(num / den);
    }
    f.scale[static_cast<size_t>(n)] = s;
    f.windowed += windowed;
  }
  return f;
}

void ridge(const float* X, int64_t R, int64_t K, const double* y, double lambda, std::vector<double>& v,
           double& c) {
  if (R < 2) throw Error("router calibration needs at least 2 token rows");
  std::vector<double> mean(static_cast<size_t>(K), 0.0), sd(static_cast<size_t>(K), 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) mean[k] += X[r * K + k];
  for (double& m : mean) m /= static_cast<double>(R);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) sd[k] += (X[r * K + k] - mean[k]) * (X[r * K + k] - mean[k]);
  for (double& s : sd) s = std::sqrt(s / static_cast<double>(R)) + 1e-8;
  double ymean = 0;
  for (int64_t r = 0; r < R; ++r) ymean += y[r];
  ymean /= static_cast<double>(R);
  // Normal equations on standardised features: (Z^T Z + lambda R I) b = Z^T (y - ymean).
  std::vector<double> A(static_cast<size_t>(K * K), 0.0), rhs(static_cast<size_t>(K), 0.0), z(static_cast<size_t>(K));
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t k = 0; k < K; ++k) z[k] = (X[r * K + k] - mean[k]) / sd[k];
    const double t = y[r] - ymean;
    for (int64_t i = 0; i < K; ++i) {
      rhs[i] += z[i] * t;
      const double zi = z[i];
      double* Ai = A.data() + i * K;
      for (int64_t j = 0; j <= i; ++j) Ai[j] += zi * z[j];
    }
  }
  for (int64_t i = 0; i < K; ++i) A[i * K + i] += lambda * static_cast<double>(R);
  // Cholesky (lower) in place, then two triangular solves.
  for (int64_t j = 0; j < K; ++j) {
    double d = A[j * K + j];
    for (int64_t p = 0; p < j; ++p) d -= A[j * K + p] * A[j * K + p];
    if (d <= 0) throw Error("router calibration: singular feature matrix");
    d = std::sqrt(d);
    A[j * K + j] = d;
    for (int64_t i = j + 1; i < K; ++i) {
      double s = A[i * K + j];
      for (int64_t p = 0; p < j; ++p) s -= A[i * K + p] * A[j * K + p];
      A[i * K + j] = s / d;
    }
  }
  std::vector<double> b(rhs);
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t p = 0; p < i; ++p) b[i] -= A[i * K + p] * b[p];
    b[i] /= A[i * K + i];
  }
  for (int64_t i = K - 1; i >= 0; --i) {
    for (int64_t p = i + 1; p < K; ++p) b[i] -= A[p * K + i] * b[p];
    b[i] /= A[i * K + i];
  }
  v.assign(static_cast<size_t>(K), 0.0);
  c = ymean;
  for (int64_t k = 0; k < K; ++k) {
    v[k] = b[k] / sd[k];
    c -= v[k] * mean[k];
  }
}

void symmetric_eigen(std::vector<double> a, int n, std::vector<double>& vals, std::vector<double>& vecs) {
  std::vector<double> V(static_cast<size_t>(n * n), 0.0);
  for (int i = 0; i < n; ++i) V[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) off += a[i * n + j] * a[i * n + j];
    if (off < 1e-24) break;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double cs = 1 / std::sqrt(t * t + 1), sn = t * cs;
        for (int k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = cs * akp - sn * akq;
          a[k * n + q] = sn * akp + cs * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = cs * apk - sn * aqk;
          a[q * n + k] = sn * apk + cs * aqk;
        }
        for (int k = 0; k < n; ++k) {
          const double vkp = V[k * n + p], vkq = V[k * n + q];
          V[k * n + p] = cs * vkp - sn * vkq;
          V[k * n + q] = sn * vkp + cs * vkq;
        }
      }
  }
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return a[x * n + x] > a[y * n + y]; });
  vals.resize(static_cast<size_t>(n));
  vecs.resize(static_cast<size_t>(n * n));
  for (int i = 0; i < n; ++i) {
    vals[i] = a[order[i] * n + order[i]];
    for (int k = 0; k < n; ++k) vecs[i * n + k] = V[k * n + order[i]];
  }
}

std::vector<float> kmeans(const std::vector<float>& rows, int64_t R, int64_t d, int64_t k, int iters,
                          std::mt19937& rng) {
  if (R < k) throw Error("KSH fitting: " + std::to_string(R) + " calibration tokens for " + std::to_string(k) +
                         " anchors; give more calibration images (--calib-count) or fewer anchors");
  auto dist2 = [&](const float* a, const float* b) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += (a[c] - b[c]) * (a[c] - b[c]);
    return s;
  };
  std::vector<float> C(static_cast<size_t>(k * d));
  std::vector<double> best(static_cast<size_t>(R), 1e300);
  std::uniform_int_distribution<int64_t> pick(0, R - 1);
  int64_t first = pick(rng);
  std::copy_n(rows.data() + first * d, d, C.data());
  for (int64_t j = 1; j < k; ++j) {  // k-means++: next centre with probability ~ D^2
    double total = 0;
    for (int64_t r = 0; r < R; ++r) {
      best[r] = std::min(best[r], dist2(rows.data() + r * d, C.data() + (j - 1) * d));
      total += best[r];
    }
    double u = std::uniform_real_distribution<double>(0, total)(rng);
    int64_t chosen = R - 1;
    for (int64_t r = 0; r < R; ++r)
      if ((u -= best[r]) <= 0) {
        chosen = r;
        break;
      }
    std::copy_n(rows.data() + chosen * d, d, C.data() + j * d);
  }
  std::vector<int64_t> assign(static_cast<size_t>(R));
  std::vector<double> sum(static_cast<size_t>(k * d));
  std::vector<int64_t> count(static_cast<size_t>(k));
  for (int it = 0; it < iters; ++it) {
    for (int64_t r = 0; r < R; ++r) {
      double bd = 1e300;
      for (int64_t j = 0; j < k; ++j) {
        const double dd = dist2(rows.data() + r * d, C.data() + j * d);
        if (dd < bd) bd = dd, assign[r] = j;
      }
    }
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(count.begin(), count.end(), 0);
    for (int64_t r = 0; r < R; ++r) {
      ++count[assign[r]];
      for (int64_t c = 0; c < d; ++c) sum[assign[r] * d + c] += rows[r * d + c];
    }
    for (int64_t j = 0; j < k; ++j)
      if (count[j])
        for (int64_t c = 0; c < d; ++c) C[j * d + c] = static_cast<float>(sum[j * d + c] / count[j]);
  }
  return C;
}

}  // namespace shiftadd::convert
