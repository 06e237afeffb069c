// RegLoRA's key-position penalty sum_u w_u |B[i_u,:] . A[:,j_u]| and its gradients in one pass over the positions
// (CPU). Python side, autograd and the pure-PyTorch reference: kernels/key_penalty.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

template <typename scalar_t>
inline void update(scalar_t* __restrict__ gaj, const scalar_t* __restrict__ bi, scalar_t s, int64_t r) {
#pragma omp simd
  for (int64_t k = 0; k < r; ++k) gaj[k] += s * bi[k];
}

template <typename scalar_t>
inline scalar_t sign_weight(scalar_t dot, scalar_t w) {
  return dot > 0 ? w : (dot < 0 ? -w : scalar_t(0));
}

// Positions [p, stop) of row i (columns sorted): four at a time (four independent dot products, one pass over B_i's
// gradient). RANK > 0 fixes the rank at compile time (the common LoRA ranks), so the loops unroll; RANK = 0 reads r.
template <typename scalar_t, int RANK>
double row_span(const scalar_t* at, const scalar_t* bi, const int32_t* col, const scalar_t* w, int32_t p,
                int32_t stop, int64_t r_runtime, scalar_t* gbi, scalar_t* gat, bool grad) {
  const int64_t r = RANK > 0 ? RANK : r_runtime;
  double total = 0.0;
  for (; p + 4 <= stop; p += 4) {
    const scalar_t* a0 = at + int64_t(col[p]) * r;
    const scalar_t* a1 = at + int64_t(col[p + 1]) * r;
    const scalar_t* a2 = at + int64_t(col[p + 2]) * r;
    const scalar_t* a3 = at + int64_t(col[p + 3]) * r;
    scalar_t d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int64_t k = 0; k < r; ++k) {
      d0 += bi[k] * a0[k];
      d1 += bi[k] * a1[k];
      d2 += bi[k] * a2[k];
      d3 += bi[k] * a3[k];
    }
    total += double(w[p]) * std::abs(double(d0)) + double(w[p + 1]) * std::abs(double(d1)) +
             double(w[p + 2]) * std::abs(double(d2)) + double(w[p + 3]) * std::abs(double(d3));
    if (!grad) continue;
    const scalar_t s0 = sign_weight(d0, w[p]), s1 = sign_weight(d1, w[p + 1]);
    const scalar_t s2 = sign_weight(d2, w[p + 2]), s3 = sign_weight(d3, w[p + 3]);
#pragma omp simd
    for (int64_t k = 0; k < r; ++k) gbi[k] += s0 * a0[k] + s1 * a1[k] + s2 * a2[k] + s3 * a3[k];
    update(gat + int64_t(col[p]) * r, bi, s0, r);
    update(gat + int64_t(col[p + 1]) * r, bi, s1, r);
    update(gat + int64_t(col[p + 2]) * r, bi, s2, r);
    update(gat + int64_t(col[p + 3]) * r, bi, s3, r);
  }
  for (; p < stop; ++p) {
    const scalar_t* aj = at + int64_t(col[p]) * r;
    scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t k = 0; k < r; ++k) dot += bi[k] * aj[k];
    total += double(w[p]) * std::abs(double(dot));
    if (!grad) continue;
    const scalar_t s = sign_weight(dot, w[p]);
    update(gbi, aj, s, r);
    update(gat + int64_t(col[p]) * r, bi, s, r);
  }
  return total;
}


#if defined(__AVX512F__)
// float32, rank 16 * V (V zmm registers per row): B_i and its gradient stay in registers over the row's positions in a
// tile; four positions at a time, their four dot products summed horizontally together.
inline __m128 hsum4(__m512 c0, __m512 c1, __m512 c2, __m512 c3) {
  auto half = [](__m512 c) {
    return _mm256_add_ps(_mm512_castps512_ps256(c), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c), 1)));
  };
  const __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(half(c0), half(c1)), _mm256_hadd_ps(half(c2), half(c3)));
  return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));  // {c0, c1, c2, c3} summed
}

template <int V>
double row_span_avx512(const float* at, const float* bi, const int32_t* col, const float* w, int32_t p, int32_t stop,
                       float* gbi, float* gat, bool grad) {
  constexpr int64_t R = 16 * V;
  __m512 b[V], gb[V];
  for (int v = 0; v < V; ++v) {
    b[v] = _mm512_loadu_ps(bi + 16 * v);
    gb[v] = _mm512_setzero_ps();
  }
  double total = 0.0;
  const __m128 zero = _mm_setzero_ps();
  for (; p + 4 <= stop; p += 4) {
    const float* a[4] = {at + int64_t(col[p]) * R, at + int64_t(col[p + 1]) * R, at + int64_t(col[p + 2]) * R,
                         at + int64_t(col[p + 3]) * R};
    __m512 c[4];
    for (int q = 0; q < 4; ++q) c[q] = _mm512_mul_ps(b[0], _mm512_loadu_ps(a[q]));
    for (int v = 1; v < V; ++v)
      for (int q = 0; q < 4; ++q) c[q] = _mm512_fmadd_ps(b[v], _mm512_loadu_ps(a[q] + 16 * v), c[q]);
    const __m128 d = hsum4(c[0], c[1], c[2], c[3]);
    const __m128 wv = _mm_loadu_ps(w + p);
    alignas(16) float dd[4];
    _mm_store_ps(dd, d);
    for (int q = 0; q < 4; ++q) total += double(w[p + q]) * std::abs(double(dd[q]));
    if (!grad) continue;
    alignas(16) float ss[4];  // w sign(d)
    _mm_store_ps(ss, _mm_sub_ps(_mm_and_ps(_mm_cmpgt_ps(d, zero), wv), _mm_and_ps(_mm_cmplt_ps(d, zero), wv)));
    for (int q = 0; q < 4; ++q) {
      const __m512 s = _mm512_set1_ps(ss[q]);
      float* g = gat + int64_t(col[p + q]) * R;
      for (int v = 0; v < V; ++v) {
        gb[v] = _mm512_fmadd_ps(s, _mm512_loadu_ps(a[q] + 16 * v), gb[v]);
        _mm512_storeu_ps(g + 16 * v, _mm512_fmadd_ps(s, b[v], _mm512_loadu_ps(g + 16 * v)));
      }
    }
  }
  for (; p < stop; ++p) {
    const float* aj = at + int64_t(col[p]) * R;
    __m512 c = _mm512_mul_ps(b[0], _mm512_loadu_ps(aj));
    for (int v = 1; v < V; ++v) c = _mm512_fmadd_ps(b[v], _mm512_loadu_ps(aj + 16 * v), c);
    const float dot = _mm512_reduce_add_ps(c);
    total += double(w[p]) * std::abs(double(dot));
    if (!grad) continue;
    const __m512 s = _mm512_set1_ps(sign_weight(dot, w[p]));
    float* g = gat + int64_t(col[p]) * R;
    for (int v = 0; v < V; ++v) {
      gb[v] = _mm512_fmadd_ps(s, _mm512_loadu_ps(aj + 16 * v), gb[v]);
      _mm512_storeu_ps(g + 16 * v, _mm512_fmadd_ps(s, b[v], _mm512_loadu_ps(g + 16 * v)));
    }
  }
  if (grad)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(gbi + 16 * v, _mm512_add_ps(_mm512_loadu_ps(gbi + 16 * v), gb[v]));
  return total;
}
#endif

// Rows [row_begin, row_end) of every column tile. The positions are stored tile-major (kernels/key_penalty.py
// ``tile_layout``): ``ptr[t * d_out + i]`` starts row i's positions in tile t, so the pass streams ``col`` and ``w``
// once, while A^T and dA^T of one tile stay in the L2 cache (untiled, the scattered reads and updates of a 7B layer's
// 2 MB A^T and dA^T went to L3 and cost 2/3 of the pass; finding each row's tile span by binary search in a row-major
// pattern cost as much as the tiling saved on small tiles).
template <typename scalar_t, int RANK>
double rows_pass(const scalar_t* at, const scalar_t* b, const int32_t* ptr, const int32_t* col, const scalar_t* w,
                 int64_t row_begin, int64_t row_end, int64_t d_out, int64_t tiles, int64_t r, scalar_t* gb,
                 scalar_t* gat, bool grad) {
  double total = 0.0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int32_t* tp = ptr + t * d_out;
    for (int64_t i = row_begin; i < row_end; ++i) {
      const int32_t p = tp[i], stop = tp[i + 1];
      if (stop == p) continue;
      scalar_t* gbi = grad ? gb + i * r : nullptr;
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<scalar_t, float> && RANK > 0 && RANK % 16 == 0) {
        total += row_span_avx512<RANK / 16>(at, b + i * r, col, w, p, stop, gbi, gat, grad);
        continue;
      }
#endif
      total += row_span<scalar_t, RANK>(at, b + i * r, col, w, p, stop, r, gbi, gat, grad);
    }
  }
  return total;
}

// at: (d_in, r) = A^T, b: (d_out, r), ptr: (tiles * d_out + 1,) int32 (tiles = 1: a CSR row pointer), col: (U,) int32
// sorted within each (tile, row), w: (U,). Returns {value (0-d, float64 accumulation cast to the input dtype),
// grad_B (d_out, r), grad_At (d_in, r)}; the gradients are empty tensors when grad is false.
std::vector<at::Tensor> gathered_abs_mean(const at::Tensor& at, const at::Tensor& b, const at::Tensor& ptr,
                                          const at::Tensor& col, const at::Tensor& w, bool grad) {
  TORCH_CHECK(at.device().is_cpu() && b.device().is_cpu(), "gathered_abs_mean: CPU tensors only");
  TORCH_CHECK(at.dim() == 2 && b.dim() == 2 && at.size(1) == b.size(1), "gathered_abs_mean: A^T (d_in, r), B (d_out, r)");
  TORCH_CHECK(at.scalar_type() == b.scalar_type() && w.scalar_type() == b.scalar_type(), "gathered_abs_mean: dtypes differ");
  TORCH_CHECK(ptr.scalar_type() == at::kInt && col.scalar_type() == at::kInt, "gathered_abs_mean: int32 indices");
  const int64_t d_out = b.size(0), d_in = at.size(0), r = b.size(1);
  TORCH_CHECK(d_out > 0 && ptr.numel() >= d_out + 1 && (ptr.numel() - 1) % d_out == 0 && col.numel() == w.numel(),
              "gathered_abs_mean: ptr must have tiles * d_out + 1 entries, col and weight one per position");
  const int64_t tiles = (ptr.numel() - 1) / d_out;
  const auto atc = at.contiguous(), bc = b.contiguous(), ptrc = ptr.contiguous(), colc = col.contiguous(),
             wc = w.contiguous();
  const int64_t threads = grad ? at::get_num_threads() : 1;
  auto gb = grad ? at::zeros({d_out, r}, b.options()) : at::empty({0}, b.options());
  auto gat_parts = grad ? at::zeros({threads, d_in, r}, b.options()) : at::empty({0}, b.options());
  std::vector<double> totals(at::get_num_threads(), 0.0);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "gathered_abs_mean", [&] {
    const scalar_t* atp = atc.data_ptr<scalar_t>();
    const scalar_t* bp = bc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    const int32_t* ptrp = ptrc.data_ptr<int32_t>();
    const int32_t* colp = colc.data_ptr<int32_t>();
    scalar_t* gbp = grad ? gb.data_ptr<scalar_t>() : nullptr;
    scalar_t* gatp = grad ? gat_parts.data_ptr<scalar_t>() : nullptr;
    // rows are disjoint between chunks (grad_B has no race); grad_At gets one buffer per thread, summed below
    at::parallel_for(0, d_out, 64, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      scalar_t* gat_local = grad ? gatp + tid * d_in * r : nullptr;
      double part = 0.0;
      auto pass = [&](auto rank) {
        return rows_pass<scalar_t, decltype(rank)::value>(atp, bp, ptrp, colp, wp, begin, end, d_out, tiles, r, gbp,
                                                         gat_local, grad);
      };
      switch (r) {  // the common LoRA ranks unrolled at compile time
        case 8: part = pass(std::integral_constant<int, 8>()); break;
        case 16: part = pass(std::integral_constant<int, 16>()); break;
        case 32: part = pass(std::integral_constant<int, 32>()); break;
        case 64: part = pass(std::integral_constant<int, 64>()); break;
        case 128: part = pass(std::integral_constant<int, 128>()); break;
        default: part = pass(std::integral_constant<int, 0>());
      }
      totals[tid] += part;
    });
  });
  double total = 0.0;
  for (double t : totals) total += t;
  auto value = at::scalar_tensor(total, b.options());
  auto gat = grad ? (threads == 1 ? gat_parts[0] : gat_parts.sum(0)) : at::empty({0}, b.options());
  return {value, gb, gat};
}

// The tile-major order of a row-major CSR pattern (crow: (d_out + 1,), col: (U,) int32, sorted within rows) for
// column tiles of ``tile`` columns: {ptr (tiles * d_out + 1,) int32, order (U,) int64} with ptr[t * d_out + i] the
// start of row i's positions in tile t and order[v] the row-major index of the v-th tile-major position (a counting
// sort: columns stay sorted within each (tile, row)). Built once per pattern (the positions change per experience).
std::vector<at::Tensor> tile_order(const at::Tensor& crow, const at::Tensor& col, int64_t d_in, int64_t tile) {
  TORCH_CHECK(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt, "tile_order: int32 CSR indices");
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1 && tile > 0 && d_in > 0, "tile_order: crow (d_out + 1,), tile > 0");
  const auto crowc = crow.contiguous().cpu(), colc = col.contiguous().cpu();
  const int64_t d_out = crowc.numel() - 1, tiles = (d_in + tile - 1) / tile, n = colc.numel();
  TORCH_CHECK(tiles * d_out < (int64_t(1) << 31) - 1, "tile_order: too many (tile, row) pairs for int32");
  const int32_t* cr = crowc.data_ptr<int32_t>();
  const int32_t* c = colc.data_ptr<int32_t>();
  TORCH_CHECK(cr[d_out] == n, "tile_order: crow[-1] must equal the number of positions");
  auto ptr = at::zeros({tiles * d_out + 1}, crowc.options());
  auto order = at::empty({n}, crowc.options().dtype(at::kLong));
  int32_t* pp = ptr.data_ptr<int32_t>();
  int64_t* op = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < d_out; ++i)
    for (int32_t u = cr[i]; u < cr[i + 1]; ++u) {
      TORCH_CHECK(c[u] >= 0 && c[u] < d_in, "tile_order: a column index is out of range");
      ++pp[(c[u] / tile) * d_out + i + 1];
    }
  for (int64_t k = 0; k < tiles * d_out; ++k) pp[k + 1] += pp[k];
  std::vector<int32_t> next(pp, pp + tiles * d_out);
  for (int64_t i = 0; i < d_out; ++i)
    for (int32_t u = cr[i]; u < cr[i + 1]; ++u) op[next[(c[u] / tile) * d_out + i]++] = u;
  return {ptr, order};
}

}  // namespace

TORCH_LIBRARY(cl_kernels, m) {
  m.def("gathered_abs_mean(Tensor At, Tensor B, Tensor ptr, Tensor col, Tensor weight, bool grad) -> Tensor[]");
  m.impl("gathered_abs_mean", c10::DispatchKey::CPU, TORCH_FN(gathered_abs_mean));
  m.def("tile_order(Tensor crow, Tensor col, int d_in, int tile) -> Tensor[]");
  m.impl("tile_order", c10::DispatchKey::CPU, TORCH_FN(tile_order));
}
