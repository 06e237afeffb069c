// Fused CPU pass (float32 / float64) of the Fisher's per-sample Conv2d rule (kernels/fisher_rules.py conv2d_rule);
// Python side and the cases it routes to the torch form: kernels/fisher_cpp.py conv.
//
// conv_sqsum_: weight (C_out, K) += sum_b (G_b U_b^T)^2 per group and bias (C_out) += sum_b (sum_l g_bl)^2, for the
// input x (B, C_in, H, W) and the output gradient g (B, C_out, OH, OW) of a convolution with stride, zero padding,
// dilation and groups; G_b (C_out / groups, L = OH OW) is a group's output gradient and U_b (K, L) with
// K = C_in / groups * kh * kw the im2col of its input channels.
//
// No unfolded tensor is formed (the torch form unfolds the batch and copies it transposed: K x L elements per sample
// written and read back for K x L x C_out multiply-adds). Per sample, a thread copies the input into its zero-padded
// buffer (C_in, Hp, Wp) and a group's output gradient, transposed, into (L, O_pad) (O_pad: C_out / groups rounded up
// to a vector; the extra columns stay zero). A register tile of R patch rows k x NV vectors of output channels
// accumulates sum_l U[k, l] G[o, l] over all L positions, U[k, l] broadcast straight from the padded input at offset
// koff[k] + loff[l], G^T[l, o : o + V] loaded as a vector; then the tile is squared into the thread's accumulator
// (groups x K x O_pad: the output block, in L1 / L2). Threads take samples; each adds its accumulator into weight
// (transposed) at its end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

// one AVX-512 register and 12-row tiles where the build machine has AVX-512 (24 accumulators + 2 + 1 of 32), else
// one AVX2 register and 6 rows (12 + 2 + 1 of 16); as in fisher_rules.cpp
#if defined(__AVX512F__)
constexpr int VBYTES = 64;
constexpr int ROWS = 12;
#else
constexpr int VBYTES = 32;
constexpr int ROWS = 6;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(VBYTES)));
};

template <typename T, int R, int NV>
inline void tile(const T* __restrict__ xp, const int64_t* __restrict__ koff, const int64_t* __restrict__ loff,
                 const T* __restrict__ gt, T* __restrict__ acc, int64_t nl, int64_t ldg, int64_t lda) {
  using V = typename Vec<T>::type;
  constexpr int L = VBYTES / sizeof(T);
  const V zero = {};
  V a[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) a[r][v] = zero;
  const T* xr[R];
  for (int r = 0; r < R; ++r) xr[r] = xp + koff[r];
  for (int64_t l = 0; l < nl; ++l) {
    V gv[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&gv[v], gt + l * ldg + v * L, VBYTES);
    const int64_t off = loff[l];
    for (int r = 0; r < R; ++r) {
      const V xb = xr[r][off] - zero;  // a broadcast
      for (int v = 0; v < NV; ++v) a[r][v] += xb * gv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      V o;
      std::memcpy(&o, acc + r * lda + v * L, VBYTES);
      o += a[r][v] * a[r][v];
      std::memcpy(acc + r * lda + v * L, &o, VBYTES);
    }
}

template <typename T, int NV>
inline void tile_rows(int r, const T* xp, const int64_t* koff, const int64_t* loff, const T* gt, T* acc, int64_t nl,
                      int64_t ldg, int64_t lda) {
  switch (r) {
#if defined(__AVX512F__)
    case 12: tile<T, 12, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 11: tile<T, 11, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 10: tile<T, 10, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 9: tile<T, 9, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 8: tile<T, 8, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 7: tile<T, 7, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
#endif
    case 6: tile<T, 6, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 5: tile<T, 5, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 4: tile<T, 4, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 3: tile<T, 3, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    case 2: tile<T, 2, NV>(xp, koff, loff, gt, acc, nl, ldg, lda); break;
    default: tile<T, 1, NV>(xp, koff, loff, gt, acc, nl, ldg, lda);
  }
}

// Small patch count K (K <= L / 2), stride 1 along x and OW a multiple of a 32-byte vector: the transpose of G above
// (one scalar copy per element of G per sample) costs more than the products. Here vectors run along the output
// columns x instead: G[o, (y, x : x + V)] is contiguous in g and U[k, (y, x : x + V)] in the padded input; a tile of
// LRO output channels x LRK patch rows keeps one vector accumulator per pair, summed across lanes once per sample.
#if defined(__AVX512F__)
constexpr int LRO = 4, LRK = 6;  // 24 accumulators + 4 + 1 of 32 registers
#else
constexpr int LRO = 2, LRK = 5;  // 10 + 2 + 1 of 16
#endif

template <typename T>
struct Vec32 {
  typedef T type __attribute__((vector_size(32)));
};

template <typename T>
inline void ltile(const T* const* __restrict__ grow, const T* __restrict__ xp, const int64_t* __restrict__ koff,
                  int64_t oh, int64_t ow, int64_t ystep, T* __restrict__ acc, int64_t lda, int ro, int rk) {
  using V = typename Vec32<T>::type;
  constexpr int L = 32 / sizeof(T);
  const V zero = {};
  V a[LRO][LRK];
  for (int r = 0; r < LRO; ++r)
    for (int k = 0; k < LRK; ++k) a[r][k] = zero;
  for (int64_t y = 0; y < oh; ++y)
    for (int64_t x0 = 0; x0 < ow; x0 += L) {
      V gv[LRO];
      for (int r = 0; r < LRO; ++r) std::memcpy(&gv[r], grow[r] + y * ow + x0, 32);
      const T* xr = xp + y * ystep + x0;
      for (int k = 0; k < LRK; ++k) {
        V u;
        std::memcpy(&u, xr + koff[k], 32);
        for (int r = 0; r < LRO; ++r) a[r][k] += gv[r] * u;
      }
    }
  for (int r = 0; r < ro; ++r)
    for (int k = 0; k < rk; ++k) {
      T sum = 0;
      for (int i = 0; i < L; ++i) sum += a[r][k][i];
      acc[r * lda + k] += sum * sum;
    }
}

struct Geometry {
  int64_t nb, cin, h, w, cout, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int64_t hp() const { return h + 2 * ph; }
  int64_t wp() const { return w + 2 * pw; }
  int64_t cg() const { return cin / groups; }
  int64_t og() const { return cout / groups; }
  int64_t k() const { return cg() * kh * kw; }
};

template <typename T>
void conv_sqsum_impl(const T* x, const T* g, T* weight, T* bias, const Geometry& s) {
  constexpr int64_t LANES = VBYTES / sizeof(T);
  const int64_t hp = s.hp(), wp = s.wp(), nl = s.oh * s.ow, og = s.og(), nk = s.k();
  const int64_t opad = (og + LANES - 1) / LANES * LANES;
  std::vector<int64_t> koff(nk), loff(nl);  // patch row k = (c, i, j) and position l = (y, x) -> padded-input offset
  for (int64_t c = 0; c < s.cg(); ++c)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) koff[(c * s.kh + i) * s.kw + j] = (c * hp + i * s.dh) * wp + j * s.dw;
  for (int64_t y = 0; y < s.oh; ++y)
    for (int64_t xx = 0; xx < s.ow; ++xx) loff[y * s.ow + xx] = y * s.sh * wp + xx * s.sw;
  // vectors along x (ltile) for small K: stride 1 along x, whole vectors per output row, K <= L / 2 (measured:
  // experiments/unlearn_native/README.md, speed section; kernels/fisher_cpp.py _along_x states the same condition)
  const bool lvec = s.sw == 1 && s.ow % (32 / int64_t(sizeof(T))) == 0 && 2 * nk <= nl;
  std::mutex merge;
  at::parallel_for(0, s.nb, 1, [&](int64_t begin, int64_t end) {  // one call per thread: its samples [begin, end)
    std::vector<T> acc(weight != nullptr ? s.groups * nk * opad : 0, T(0)), bacc(bias != nullptr ? s.cout : 0, T(0));
    std::vector<T> xpad(weight != nullptr ? s.cin * hp * wp : 0, T(0)), gt(weight != nullptr && !lvec ? nl * opad : 0);
    std::vector<T> lacc(weight != nullptr && lvec ? s.cout * nk : 0, T(0)), zeros(lvec ? nl : 0, T(0));
    for (int64_t b = begin; b < end; ++b) {
      const T* gb = g + b * s.cout * nl;
      if (bias != nullptr)
        for (int64_t o = 0; o < s.cout; ++o) {
          T sum = 0;
          for (int64_t l = 0; l < nl; ++l) sum += gb[o * nl + l];
          bacc[o] += sum * sum;
        }
      if (weight == nullptr) continue;
      const T* xb = x + b * s.cin * s.h * s.w;
      for (int64_t c = 0; c < s.cin; ++c)  // interior of the padded copy (the border stays zero)
        for (int64_t y = 0; y < s.h; ++y)
          std::memcpy(&xpad[(c * hp + y + s.ph) * wp + s.pw], xb + (c * s.h + y) * s.w, s.w * sizeof(T));
      for (int64_t gi = 0; gi < s.groups && lvec; ++gi) {  // vectors along x: no transpose, no padded channels
        const T* xg = xpad.data() + gi * s.cg() * hp * wp;
        for (int64_t o0 = 0; o0 < og; o0 += LRO) {
          const int ro = int(std::min<int64_t>(LRO, og - o0));
          const T* grow[LRO];
          for (int r = 0; r < LRO; ++r) grow[r] = r < ro ? gb + (gi * og + o0 + r) * nl : zeros.data();
          for (int64_t k0 = 0; k0 < nk; k0 += LRK) {
            const int rk = int(std::min<int64_t>(LRK, nk - k0));
            int64_t ko[LRK];
            for (int k = 0; k < LRK; ++k) ko[k] = koff[k < rk ? k0 + k : k0];
            ltile<T>(grow, xg, ko, s.oh, s.ow, s.sh * wp, lacc.data() + (gi * og + o0) * nk + k0, nk, ro, rk);
          }
        }
      }
      for (int64_t gi = 0; gi < s.groups && !lvec; ++gi) {
        for (int64_t o = 0; o < og; ++o)
          for (int64_t l = 0; l < nl; ++l) gt[l * opad + o] = gb[(gi * og + o) * nl + l];
        const T* xg = xpad.data() + gi * s.cg() * hp * wp;
        T* ag = acc.data() + gi * nk * opad;
        for (int64_t k0 = 0; k0 < nk; k0 += ROWS) {
          const int r = int(std::min<int64_t>(ROWS, nk - k0));
          int64_t o0 = 0;
          for (; o0 + 2 * LANES <= opad; o0 += 2 * LANES)
            tile_rows<T, 2>(r, xg, &koff[k0], loff.data(), gt.data() + o0, ag + k0 * opad + o0, nl, opad, opad);
          if (o0 < opad)
            tile_rows<T, 1>(r, xg, &koff[k0], loff.data(), gt.data() + o0, ag + k0 * opad + o0, nl, opad, opad);
        }
      }
    }
    const std::lock_guard<std::mutex> lock(merge);  // the thread's accumulator into weight (transposed) and bias
    if (weight != nullptr && lvec)
      for (int64_t i = 0; i < s.cout * nk; ++i) weight[i] += lacc[i];
    if (weight != nullptr && !lvec)
      for (int64_t gi = 0; gi < s.groups; ++gi)
        for (int64_t k = 0; k < nk; ++k)
          for (int64_t o = 0; o < og; ++o) weight[(gi * og + o) * nk + k] += acc[(gi * nk + k) * opad + o];
    if (bias != nullptr)
      for (int64_t o = 0; o < s.cout; ++o) bias[o] += bacc[o];
  });
}

void conv_sqsum_(const at::Tensor& x, const at::Tensor& g, at::Tensor weight, at::Tensor bias, at::IntArrayRef kernel,
                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(x.dim() == 4 && g.dim() == 4 && x.size(0) == g.size(0), "conv_sqsum_: x and g (B, C, H, W) expected");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "conv_sqsum_: kernel, stride, padding, dilation: two values each");
  TORCH_CHECK(x.scalar_type() == g.scalar_type() && x.device().is_cpu() && g.device().is_cpu(),
              "conv_sqsum_: CPU tensors of one dtype expected");
  const Geometry s{x.size(0),  x.size(1),   x.size(2),   x.size(3),   g.size(1),   g.size(2),   g.size(3),  kernel[0],
                   kernel[1],  stride[0],   stride[1],   padding[0],  padding[1],  dilation[0], dilation[1], groups};
  TORCH_CHECK(groups > 0 && s.cin % groups == 0 && s.cout % groups == 0, "conv_sqsum_: groups must divide C_in, C_out");
  TORCH_CHECK(s.sh > 0 && s.sw > 0 && s.dh > 0 && s.dw > 0 && s.ph >= 0 && s.pw >= 0 && s.kh > 0 && s.kw > 0,
              "conv_sqsum_: positive kernel, stride, dilation and non-negative padding expected");
  TORCH_CHECK(s.oh == (s.hp() - s.dh * (s.kh - 1) - 1) / s.sh + 1 && s.ow == (s.wp() - s.dw * (s.kw - 1) - 1) / s.sw + 1,
              "conv_sqsum_: g's spatial size does not match the convolution of x");
  for (const auto* acc : {&weight, &bias}) {
    const int64_t n = acc == &weight ? s.cout * s.k() : s.cout;
    TORCH_CHECK(acc->numel() == 0 || (acc->numel() == n && acc->is_contiguous() &&
                                      acc->scalar_type() == x.scalar_type() && acc->device().is_cpu()),
                "conv_sqsum_: a contiguous CPU accumulator of ", n, " elements in the inputs' dtype (or empty) expected");
  }
  const auto xc = x.contiguous();
  const auto gc = g.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_sqsum_", [&] {
    conv_sqsum_impl<scalar_t>(xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                              weight.numel() ? weight.data_ptr<scalar_t>() : nullptr,
                              bias.numel() ? bias.data_ptr<scalar_t>() : nullptr, s);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cl_fisher, m) {
  m.def(
      "conv_sqsum_(Tensor x, Tensor g, Tensor(a!) weight, Tensor(b!) bias, int[] kernel, int[] stride, int[] padding, "
      "int[] dilation, int groups) -> ()");
  m.impl("conv_sqsum_", c10::DispatchKey::CPU, TORCH_FN(conv_sqsum_));
}
