// Operation-count rules of the profiler (docs/profiling.md, "What is counted").
//
// Conventions, the same for every op:
// - A multiply-accumulate (MAC) is one multiplication and one addition: a dot product of length
//   K costs K mults and K adds (the accumulator starts from the bias, or from 0). So a dense
//   linear [M, K] x [K, N] is M*N*K mults and M*N*K adds whether or not it has a bias.
// - A shift-accumulate is one shift and one addition, counted for nonzero shift weights only
//   (a zero weight contributes nothing; the scalar kernel skips it).
// - `mults` holds the multiplications of MACs only. Elementwise multiplications, divisions,
//   square roots and transcendental functions (exp, erf, log) go to `other_ops`, one per
//   element per operation, so the MAC count of a model stays exact (DeiT-Tiny: 1,253,683,200).
// - Comparisons (max, argmax, hash thresholds) count as additions.
// - Copies (token selection, MoE gather/scatter) are data movement: bytes, no operations.
#include "engine/op_counts.h"

#include <algorithm>

#include "core/shift_codes.h"

namespace shiftadd {

int64_t shift_code_nonzeros(const Tensor& codes) {
  const uint8_t* c = codes.data<uint8_t>();
  int64_t nz = 0;
  for (int64_t i = 0; i < codes.numel(); ++i) nz += shift_code_is_zero(c[i]) ? 0 : 1;
  return nz;
}

namespace {

bool present(const Tensor& t) { return t.raw() != nullptr && t.numel() > 0; }
int64_t bytes_of(const Tensor& t) { return present(t) ? static_cast<int64_t>(t.nbytes()) : 0; }

// GELU (exact erf form) per element: 0.5 * x * (1 + erf(x / sqrt 2)): three multiplications
// and one erf (other_ops), one addition.
void add_gelu(OpCounts& c, int64_t elems) {
  c.other_ops += 4 * elems;
  c.adds += elems;
}

}  // namespace

OpCounts count_node_ops(const Graph& g, const Node& n, int64_t B, std::array<int64_t, 2> tokens,
                        std::string* note) {
  OpCounts c;
  const Shape& out = g.sample_shape(n.output);
  const int64_t out_elems = B * shape_numel(out);
  // Activations: every input read once, the output written once (fp32).
  if (n.op != OpKind::Input) {
    int64_t elems = out_elems;
    if (n.op == OpKind::TakeTokens)
      elems += out_elems;  // only the selected tokens are read
    else
      for (int v : n.inputs) elems += B * shape_numel(g.sample_shape(v));
    c.activation_bytes = 4 * elems;
  }
  for (const Tensor& w : n.weights) c.weight_bytes += bytes_of(w);

  switch (n.op) {
    case OpKind::Input:
    case OpKind::TakeTokens:
    case OpKind::Count: break;

    case OpKind::Conv2d: {
      // out [OH*OW, Cout]; each output is a dot product over Cin*kh*kw (padding included:
      // the kernels multiply the zero padding too).
      const Tensor& w = n.w(Conv2dW::Weight);
      const int64_t K = w.dim(1) * w.dim(2) * w.dim(3);
      c.mults = out_elems * K;
      c.adds = out_elems * K;
      break;
    }

    case OpKind::EmbedTokens:
      // Prefix tokens are copied; the position embedding is added to every token.
      if (present(n.w(EmbedW::Pos))) c.adds = out_elems;
      break;

    case OpKind::LayerNorm: {
      // Per row of C: mean (C adds, 1 scale), variance (C subtractions, C squares, C adds,
      // 1 scale), eps (1 add), 1/sqrt (1), then (x - mean) * rstd * gamma + beta (2C
      // multiplications, C adds).
      const int64_t C = out.back(), rows = out_elems / C;
      c.adds = rows * (4 * C + 1);
      c.other_ops = rows * (3 * C + 3);
      break;
    }

    case OpKind::Linear: {
      const Tensor& w = n.w(LinearW::Weight);
      const int64_t N = w.dim(0), K = w.dim(1), M = out_elems / N;
      c.mults = M * N * K;
      c.adds = M * N * K;
      if (n.p.gelu) add_gelu(c, out_elems);
      if (n.inputs.size() > 1) c.adds += out_elems;  // fused residual
      break;
    }

    case OpKind::Attention: {
      // Per image and head: scores q.k (Nq*Nkv*d MACs), softmax (scale, exp and normalise:
      // 3 other per score; max, subtract and sum: 3 adds per score), p.v (Nq*Nkv*d MACs).
      const Shape& sq = g.sample_shape(n.inputs[0]);
      const int64_t Nq = sq[0];
      const int64_t C = n.inputs.size() == 1 ? sq[1] / 3 : sq[1];
      const int64_t Nkv = n.inputs.size() == 1 ? Nq : g.sample_shape(n.inputs[1])[0];
      const int64_t H = n.p.heads, d = C / H;
      const int64_t scores = B * H * Nq * Nkv;
      c.mults = 2 * scores * d;
      c.adds = 2 * scores * d + 3 * scores;
      c.other_ops = 3 * scores;
      break;
    }

    case OpKind::Add:
      c.adds = out_elems;
      if (n.p.alpha != 1.0f) c.other_ops = out_elems;
      break;

    case OpKind::DwConv3x3:
      // 9 taps per output (zero padding included), bias as the accumulator's start.
      c.mults = 9 * out_elems;
      c.adds = 9 * out_elems;
      if (n.p.gelu) add_gelu(c, out_elems);
      break;

    case OpKind::MeanTokens: {
      const Shape& s = g.sample_shape(n.inputs[0]);
      c.adds = B * s[0] * s[1];
      c.other_ops = B * s[1];
      break;
    }

    case OpKind::ShiftLinear: {
      // Per token: quantise K inputs to Q16.16 (other), one shift and one add per nonzero
      // weight, convert N outputs back to float (other).
      const Tensor& codes = n.w(ShiftW::Codes);
      const int64_t N = codes.dim(0), K = codes.dim(1), M = out_elems / N;
      const int64_t nz = shift_code_nonzeros(codes);
      c.shifts = M * nz;
      c.adds = M * nz;
      c.other_ops = M * (K + N);
      if (present(n.w(ShiftW::Scale))) c.other_ops += M * N;  // per-output scale
      if (n.p.gelu) add_gelu(c, out_elems);
      if (n.inputs.size() > 1) c.adds += out_elems;  // fused residual
      break;
    }

    case OpKind::MoeLinear: {
      // Router on every token (2 dot products + argmax), then each expert on the tokens it
      // really received, then log(exp(y) + eps) on every output (2 other + 1 add each).
      const Tensor& w0 = n.w(MoeW::W0);
      const int64_t N = w0.dim(0), K = w0.dim(1), M = out_elems / N;
      const int64_t t0 = tokens[0], t1 = tokens[1];
      const int64_t nz = shift_code_nonzeros(n.w(MoeW::Codes1));
      const bool scaled = present(n.w(MoeW::Scale1));
      c.mults = M * 2 * K + t0 * N * K;
      c.adds = M * 2 * K + M + t0 * N * K + t1 * nz;
      c.shifts = t1 * nz;
      c.other_ops = t1 * (K + N) + (scaled ? t1 * N : 0);
      if (n.p.log_exp_combine) {
        c.adds += M * N;
        c.other_ops += 2 * M * N;
      }
      if (n.p.gelu) add_gelu(c, out_elems);
      if (n.inputs.size() > 1) c.adds += out_elems;  // fused residual
      // Weights: the router always; an expert only when it received tokens.
      c.weight_bytes = bytes_of(n.w(MoeW::RouterW)) + bytes_of(n.w(MoeW::RouterB));
      if (t0 > 0) c.weight_bytes += bytes_of(n.w(MoeW::W0)) + bytes_of(n.w(MoeW::B0));
      if (t1 > 0)
        c.weight_bytes += bytes_of(n.w(MoeW::Codes1)) + bytes_of(n.w(MoeW::Bias1)) + bytes_of(n.w(MoeW::Scale1));
      break;
    }

    case OpKind::KshAttention: {
      // Per image and head over N tokens of head dim d, m anchors, nbits hash bits. Inputs
      // qk and v (upstream: q = k, hashed once), or one packed q|k|v (q and k hashed apart).
      const int64_t N = out[0], H = n.p.heads, d = out[1] / H, m = n.p.anchors, nbits = n.p.nbits;
      const int64_t BH = B * H;
      const int64_t hashes = BH * (n.inputs.size() == 1 ? 2 : 1);  // hashed row sets
      // L2 norm of the hashed rows: N*d MACs, N square roots, N*d divisions.
      c.mults += hashes * N * d;
      c.adds += hashes * N * d;
      c.other_ops += hashes * (N + N * d);
      // D[n,j] = sum_c (qk - anchor)^2: N*m*d subtractions and MACs; sigma: N*m adds, 1 div.
      c.mults += hashes * N * m * d;
      c.adds += hashes * (2 * N * m * d + N * m);
      c.other_ops += hashes;
      // Kf = exp(-D / 2 sigma) - mvec: 2 other + 1 add per entry.
      c.other_ops += hashes * 2 * N * m;
      c.adds += hashes * N * m;
      // y = Kf A^T: N*nbits*m MACs; code bits: N*nbits comparisons.
      c.mults += hashes * N * nbits * m;
      c.adds += hashes * (N * nbits * m + N * nbits);
      // Additive attention: KV = code^T V and Y = code KV add one V / KV row of d per set bit.
      // The set bits are data dependent and not recorded by the backend: half of the nbits per
      // token is assumed (KSH fits balanced bits).
      c.adds += BH * 2 * (N * nbits / 2) * d;
      if (note) *note = "additive attention adds assume half of the " + std::to_string(nbits) + " hash bits set";
      // Z = 0.5 V + Y / pi (2 other, 1 add), Z / ||Z|| (N*d MACs, N sqrt, N*d div),
      // 9-tap dconv along tokens (9 MACs per element).
      c.other_ops += BH * (2 * N * d + N + N * d);
      c.adds += BH * (N * d + N * d + 9 * N * d);
      c.mults += BH * (N * d + 9 * N * d);
      break;
    }
  }
  return c;
}

}  // namespace shiftadd
