// Fused CPU passes (float32 / float64) of two exact Fisher-diagonal rules (kernels/fisher_rules.py); Python side and
// the pure-PyTorch forms they replace: kernels/fisher_cpp.py.
//
// bn_sqsum_: the eval-mode BatchNorm rule: per sample and channel the reductions sum_s g (x - mean_c) and sum_s g over
// the spatial positions s in one read of x and g (the torch form writes a (B, C, S) temporary x - mean and reads it
// back), squared and summed over samples.
//
// seq_sqsum_: out (O, K) += sum_b (G_b^T X_b)^2 for G (B, T, O), X (B, T, K), and optionally bias (O) +=
// sum_b (sum_t g_bt)^2: the Linear-on-sequences rule with the per-sample product, its square and the sum over samples
// fused.
//
// The torch form writes every per-sample product (O x K per sample) and reads it back to square it: with T = 17
// tokens that is 17 multiply-adds per element written, and the product is write-bound. Here an output block
// (OB x KB) stays in L1 while every sample's G_b[:, block] and X_b[:, block] stream through; within it a register
// tile of R <= 6 rows x 2 vectors accumulates sum_t g_bt,o x_bt,k, then is squared into the block. Each output
// element is written once per sample into L1, never to memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

// GCC / Clang vector extensions: one AVX-512 register and a 12-row tile where the build machine has AVX-512 (24 + 2 + 1
// of 32 registers), else one AVX2 register (two SSE / NEON ops elsewhere) and 6 rows (12 + 2 + 1 of 16)
#if defined(__AVX512F__)
constexpr int VBYTES = 64;
constexpr int ROWS = 12;
#else
constexpr int VBYTES = 32;
constexpr int ROWS = 6;
#endif
constexpr int64_t OB = 48;  // output block rows (a multiple of ROWS)

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(VBYTES)));
};

template <typename T, int R>
inline void tile(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ out, int64_t tt, int64_t ldg,
                 int64_t ldx, int64_t ldo) {
  using V = typename Vec<T>::type;
  constexpr int L = VBYTES / sizeof(T);
  const V zero = {};
  V a[R][2];
  for (int r = 0; r < R; ++r) a[r][0] = a[r][1] = zero;
  for (int64_t t = 0; t < tt; ++t) {
    V x0, x1;
    std::memcpy(&x0, x + t * ldx, VBYTES);
    std::memcpy(&x1, x + t * ldx + L, VBYTES);
    const T* gt = g + t * ldg;
    for (int r = 0; r < R; ++r) {
      const V gr = gt[r] - zero;  // a broadcast (x - 0 is x for every x: folded away)
      a[r][0] += gr * x0;
      a[r][1] += gr * x1;
    }
  }
  for (int r = 0; r < R; ++r) {
    V o0, o1;
    std::memcpy(&o0, out + r * ldo, VBYTES);
    std::memcpy(&o1, out + r * ldo + L, VBYTES);
    o0 += a[r][0] * a[r][0];
    o1 += a[r][1] * a[r][1];
    std::memcpy(out + r * ldo, &o0, VBYTES);
    std::memcpy(out + r * ldo + L, &o1, VBYTES);
  }
}

template <typename T>
inline void tile_rows(int r, const T* g, const T* x, T* out, int64_t tt, int64_t ldg, int64_t ldx, int64_t ldo) {
  switch (r) {
#if defined(__AVX512F__)
    case 12: tile<T, 12>(g, x, out, tt, ldg, ldx, ldo); break;
    case 11: tile<T, 11>(g, x, out, tt, ldg, ldx, ldo); break;
    case 10: tile<T, 10>(g, x, out, tt, ldg, ldx, ldo); break;
    case 9: tile<T, 9>(g, x, out, tt, ldg, ldx, ldo); break;
    case 8: tile<T, 8>(g, x, out, tt, ldg, ldx, ldo); break;
    case 7: tile<T, 7>(g, x, out, tt, ldg, ldx, ldo); break;
#endif
    case 6: tile<T, 6>(g, x, out, tt, ldg, ldx, ldo); break;
    case 5: tile<T, 5>(g, x, out, tt, ldg, ldx, ldo); break;
    case 4: tile<T, 4>(g, x, out, tt, ldg, ldx, ldo); break;
    case 3: tile<T, 3>(g, x, out, tt, ldg, ldx, ldo); break;
    case 2: tile<T, 2>(g, x, out, tt, ldg, ldx, ldo); break;
    default: tile<T, 1>(g, x, out, tt, ldg, ldx, ldo);
  }
}

template <typename T>
void seq_sqsum_impl(const T* g, const T* x, T* out, int64_t nb, int64_t tt, int64_t no, int64_t nk) {
  constexpr int64_t W = 2 * (VBYTES / sizeof(T));  // columns of a register tile
  constexpr int64_t KB = 2 * W;                     // output block columns (OB x KB: 12-24 KiB, in L1)
  const int64_t kv = nk - nk % W;                   // columns covered by register tiles; the rest: scalar loop
  at::parallel_for(0, (no + OB - 1) / OB, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t o0 = blk * OB, o1 = std::min(no, o0 + OB);
      for (int64_t k0 = 0; k0 < kv; k0 += KB) {
        const int64_t k1 = std::min(kv, k0 + KB);
        for (int64_t b = 0; b < nb; ++b) {
          const T* gb = g + b * tt * no;
          const T* xb = x + b * tt * nk;
          for (int64_t o = o0; o < o1; o += ROWS) {
            const int r = int(std::min<int64_t>(ROWS, o1 - o));
            for (int64_t k = k0; k < k1; k += W) tile_rows<T>(r, gb + o, xb + k, out + o * nk + k, tt, no, nk, nk);
          }
        }
      }
      if (kv == nk) continue;
      for (int64_t b = 0; b < nb; ++b) {
        const T* gb = g + b * tt * no;
        const T* xb = x + b * tt * nk;
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t k = kv; k < nk; ++k) {
            T s = 0;
            for (int64_t t = 0; t < tt; ++t) s += gb[t * no + o] * xb[t * nk + k];
            out[o * nk + k] += s * s;
          }
      }
    }
  });
}

// bias (O) += sum_b (sum_t g_bt)^2
template <typename T>
void bias_sqsum_impl(const T* g, T* bias, int64_t nb, int64_t tt, int64_t no) {
  std::vector<T> s(no);
  for (int64_t b = 0; b < nb; ++b) {
    std::fill(s.begin(), s.end(), T(0));
    for (int64_t t = 0; t < tt; ++t) {
      const T* gt = g + (b * tt + t) * no;
      for (int64_t o = 0; o < no; ++o) s[o] += gt[o];
    }
    for (int64_t o = 0; o < no; ++o) bias[o] += s[o] * s[o];
  }
}

// norm_sqsum_: LayerNorm / RMSNorm over the last dim C of x (B, T, C) with output gradient g (B, T, C):
// weight (C) += sum_b (sum_t g_bt * xhat_bt)^2 and bias (C) += sum_b (sum_t g_bt)^2, xhat recomputed per token
// ((x - mean) / sqrt(var + eps), biased variance; RMSNorm: x / sqrt(mean x^2 + eps); statistics accumulated in
// double). One pass over x and g, no (B, T, C) temporary (the torch form allocated three).
template <typename T>
void norm_sqsum_impl(const T* x, const T* g, T* w, T* bias, int64_t nb, int64_t tt, int64_t nc, double eps, bool rms) {
  std::vector<T> dw(nc), db(nc);
  for (int64_t b = 0; b < nb; ++b) {
    std::fill(dw.begin(), dw.end(), T(0));
    std::fill(db.begin(), db.end(), T(0));
    for (int64_t t = 0; t < tt; ++t) {
      const T* xr = x + (b * tt + t) * nc;
      const T* gr = g + (b * tt + t) * nc;
      double mean = 0, sq = 0;
      if (!rms) {
        for (int64_t c = 0; c < nc; ++c) mean += xr[c];
        mean /= double(nc);
      }
      for (int64_t c = 0; c < nc; ++c) {
        const double d = double(xr[c]) - mean;
        sq += d * d;
      }
      const T m = T(mean), rstd = T(1.0 / std::sqrt(sq / double(nc) + eps));
      if (w != nullptr)
        for (int64_t c = 0; c < nc; ++c) dw[c] += gr[c] * ((xr[c] - m) * rstd);
      if (bias != nullptr)
        for (int64_t c = 0; c < nc; ++c) db[c] += gr[c];
    }
    if (w != nullptr)
      for (int64_t c = 0; c < nc; ++c) w[c] += dw[c] * dw[c];
    if (bias != nullptr)
      for (int64_t c = 0; c < nc; ++c) bias[c] += db[c] * db[c];
  }
}

void check_acc(const at::Tensor& acc, const at::Tensor& like, int64_t n, const char* what) {
  if (acc.numel() == 0) return;  // not selected
  TORCH_CHECK(acc.numel() == n && acc.is_contiguous() && acc.scalar_type() == like.scalar_type() && acc.device().is_cpu(),
              what, ": a contiguous CPU accumulator of ", n, " elements in the inputs' dtype expected");
}

void norm_sqsum_(const at::Tensor& x, const at::Tensor& g, at::Tensor w, at::Tensor bias, double eps, bool rms) {
  TORCH_CHECK(x.dim() == 3 && x.sizes() == g.sizes() && x.scalar_type() == g.scalar_type() && x.device().is_cpu() &&
                  g.device().is_cpu(),
              "norm_sqsum_: x and g (B, T, C) CPU tensors of one dtype expected");
  check_acc(w, x, x.size(2), "norm_sqsum_ weight");
  check_acc(bias, x, x.size(2), "norm_sqsum_ bias");
  const auto xc = x.contiguous();
  const auto gc = g.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "norm_sqsum_", [&] {
    norm_sqsum_impl<scalar_t>(xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                              w.numel() ? w.data_ptr<scalar_t>() : nullptr,
                              bias.numel() ? bias.data_ptr<scalar_t>() : nullptr, x.size(0), x.size(1), x.size(2), eps,
                              rms);
  });
}

// bn_sqsum_: x, g (B, C, S); weight (C) += sum_b (invstd_c sum_s g_bcs (x_bcs - mean_c))^2, bias (C) += sum_b
// (sum_s g_bcs)^2; vector accumulators over s (a floating-point reduction is not vectorised by the compiler alone)
template <typename T>
void bn_sqsum_impl(const T* x, const T* g, const T* mean, const T* invstd, T* w, T* bias, int64_t nb, int64_t nc,
                   int64_t ns) {
  using V = typename Vec<T>::type;
  constexpr int64_t L = VBYTES / sizeof(T);
  const V zero = {};
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t c = 0; c < nc; ++c) {
      const T* xr = x + (b * nc + c) * ns;
      const T* gr = g + (b * nc + c) * ns;
      const T m = mean[c];
      const V mv = m - zero;
      V aw = zero, ab = zero;
      int64_t s = 0;
      for (; s + L <= ns; s += L) {
        V xv, gv;
        std::memcpy(&xv, xr + s, VBYTES);
        std::memcpy(&gv, gr + s, VBYTES);
        aw += gv * (xv - mv);
        ab += gv;
      }
      T sw = 0, sb = 0;
      for (int i = 0; i < L; ++i) {
        sw += aw[i];
        sb += ab[i];
      }
      for (; s < ns; ++s) {
        sw += gr[s] * (xr[s] - m);
        sb += gr[s];
      }
      if (w != nullptr) w[c] += (sw * invstd[c]) * (sw * invstd[c]);
      if (bias != nullptr) bias[c] += sb * sb;
    }
}

void bn_sqsum_(const at::Tensor& x, const at::Tensor& g, const at::Tensor& mean, const at::Tensor& invstd,
               at::Tensor w, at::Tensor bias) {
  TORCH_CHECK(x.dim() == 3 && x.sizes() == g.sizes() && x.scalar_type() == g.scalar_type() && x.device().is_cpu() &&
                  g.device().is_cpu(),
              "bn_sqsum_: x and g (B, C, S) CPU tensors of one dtype expected");
  for (const auto* t : {&mean, &invstd})
    TORCH_CHECK(t->numel() == x.size(1) && t->scalar_type() == x.scalar_type() && t->device().is_cpu(),
                "bn_sqsum_: mean and invstd (C) in the inputs' dtype expected");
  check_acc(w, x, x.size(1), "bn_sqsum_ weight");
  check_acc(bias, x, x.size(1), "bn_sqsum_ bias");
  const auto xc = x.contiguous();
  const auto gc = g.contiguous();
  const auto mc = mean.contiguous();
  const auto ic = invstd.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bn_sqsum_", [&] {
    bn_sqsum_impl<scalar_t>(xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(),
                            ic.data_ptr<scalar_t>(), w.numel() ? w.data_ptr<scalar_t>() : nullptr,
                            bias.numel() ? bias.data_ptr<scalar_t>() : nullptr, x.size(0), x.size(1), x.size(2));
  });
}

at::Tensor seq_sqsum_(const at::Tensor& g, const at::Tensor& x, at::Tensor out, at::Tensor bias) {
  TORCH_CHECK(g.dim() == 3 && x.dim() == 3 && g.size(0) == x.size(0) && g.size(1) == x.size(1),
              "seq_sqsum_: g (B, T, O) and x (B, T, K) expected");
  const bool weight = out.numel() > 0 || (out.dim() == 2 && out.size(0) == g.size(2) && out.size(1) == x.size(2));
  TORCH_CHECK(!weight || (out.dim() == 2 && out.size(0) == g.size(2) && out.size(1) == x.size(2) &&
                          out.is_contiguous()),
              "seq_sqsum_: out must be a contiguous (O, K) tensor (or empty: bias alone)");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && g.scalar_type() == out.scalar_type(),
              "seq_sqsum_: g, x and out must share one dtype");
  TORCH_CHECK(g.device().is_cpu() && x.device().is_cpu() && out.device().is_cpu(), "seq_sqsum_: CPU tensors only");
  check_acc(bias, g, g.size(2), "seq_sqsum_ bias");
  const auto gc = g.contiguous();
  const auto xc = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "seq_sqsum_", [&] {
    if (weight)
      seq_sqsum_impl<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g.size(0),
                               g.size(1), g.size(2), x.size(2));
    if (bias.numel())
      bias_sqsum_impl<scalar_t>(gc.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), g.size(0), g.size(1), g.size(2));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(cl_fisher, m) {
  m.def("seq_sqsum_(Tensor g, Tensor x, Tensor(a!) out, Tensor(b!) bias) -> Tensor(a!)");
  m.impl("seq_sqsum_", c10::DispatchKey::CPU, TORCH_FN(seq_sqsum_));
  m.def("norm_sqsum_(Tensor x, Tensor g, Tensor(a!) weight, Tensor(b!) bias, float eps, bool rms) -> ()");
  m.impl("norm_sqsum_", c10::DispatchKey::CPU, TORCH_FN(norm_sqsum_));
  m.def("bn_sqsum_(Tensor x, Tensor g, Tensor mean, Tensor invstd, Tensor(a!) weight, Tensor(b!) bias) -> ()");
  m.impl("bn_sqsum_", c10::DispatchKey::CPU, TORCH_FN(bn_sqsum_));
}
