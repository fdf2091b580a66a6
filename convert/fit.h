#pragma once
// Small dense numerics for the converter (calibration-time only, double precision, plain
// loops): shift codes from dense weights, ridge regression, symmetric eigendecomposition and
// k-means. Nothing here runs at inference.
#include <cstdint>
#include <random>
#include <vector>

namespace shiftadd::convert {

// Upstream's initialisation of a shift layer from a dense weight (spec section 3):
// s = round(log2|w|) clamped to [-14, 0], g = sign(w). With `scale`, a per-row factor
// s_n = <w_n, W_n> / <W_n, W_n> (least squares) is fitted, the codes re-derived from w_n / s_n
// and the factor re-fitted (twice), so that s_n * W_n approximates w_n; without, s_n = 1.
// bits = 4 keeps each row within the 7 exponents below its largest e (docs/format.md): a weight
// below the window becomes 2^(e-6) when |w| >= 2^(e-7) (the nearer of it and 0), else 0.
struct ShiftFit {
  std::vector<uint8_t> codes;  // [N, K]
  std::vector<float> scale;    // [N] (all 1 without `scale`)
  int64_t windowed = 0;        // bits = 4: nonzero weights below their row's window
};
ShiftFit fit_shift(const float* w, int64_t N, int64_t K, bool scale, int bits = 5);

// Ridge regression y ~ X v + c over R rows of K features (X row-major), with the features
// standardised internally; returns v (K) and c. lambda is relative to the mean feature variance.
void ridge(const float* X, int64_t R, int64_t K, const double* y, double lambda, std::vector<double>& v,
           double& c);

// Eigenvectors of a symmetric n x n matrix (row-major), sorted by decreasing eigenvalue: row i of
// `vecs` is the i-th eigenvector. Cyclic Jacobi; n is small (the KSH anchor count).
void symmetric_eigen(std::vector<double> a, int n, std::vector<double>& vals, std::vector<double>& vecs);

// k-means (k-means++ start, `iters` Lloyd steps) of R rows of d floats; returns k x d centres.
std::vector<float> kmeans(const std::vector<float>& rows, int64_t R, int64_t d, int64_t k, int iters,
                          std::mt19937& rng);

}  // namespace shiftadd::convert
