// RegLoRA's key-position penalty sum_u w_u |B[i_u,:] . A[:,j_u]| and its gradients in one pass over the positions
// (CPU). Python side, autograd and the pure-PyTorch reference: kernels/key_penalty.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
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

// Rows [row_begin, row_end) in column tiles: A^T and dA^T of one tile (``tile`` columns) stay in the L2 cache while
// every row's positions in that tile are visited (untiled, the scattered reads and updates of a 7B layer's 2 MB A^T and
// dA^T went to L3 and cost 2/3 of the pass).
template <typename scalar_t, int RANK>
double rows_pass(const scalar_t* at, const scalar_t* b, const int32_t* crow, const int32_t* col, const scalar_t* w,
                 int64_t row_begin, int64_t row_end, int64_t d_in, int64_t r, int64_t tile, scalar_t* gb,
                 scalar_t* gat, bool grad) {
  std::vector<int32_t> cursor(crow + row_begin, crow + row_end);
  double total = 0.0;
  for (int64_t tile_start = 0; tile_start < d_in; tile_start += tile) {
    const int32_t tile_end = static_cast<int32_t>(std::min(d_in, tile_start + tile));
    for (int64_t i = row_begin; i < row_end; ++i) {
      const int32_t p = cursor[i - row_begin];
      const int32_t stop = static_cast<int32_t>(std::lower_bound(col + p, col + crow[i + 1], tile_end) - col);
      if (stop == p) continue;
      total += row_span<scalar_t, RANK>(at, b + i * r, col, w, p, stop, r, grad ? gb + i * r : nullptr, gat, grad);
      cursor[i - row_begin] = stop;
    }
  }
  return total;
}

// at: (d_in, r) = A^T, b: (d_out, r), crow: (d_out + 1,) int32, col: (U,) int32 sorted within rows, w: (U,).
// Returns {value (0-d, float64 accumulation cast to the input dtype), grad_B (d_out, r), grad_At (d_in, r)}; the
// gradients are empty tensors when grad is false.
std::vector<at::Tensor> gathered_abs_mean(const at::Tensor& at, const at::Tensor& b, const at::Tensor& crow,
                                          const at::Tensor& col, const at::Tensor& w, bool grad) {
  TORCH_CHECK(at.device().is_cpu() && b.device().is_cpu(), "gathered_abs_mean: CPU tensors only");
  TORCH_CHECK(at.dim() == 2 && b.dim() == 2 && at.size(1) == b.size(1), "gathered_abs_mean: A^T (d_in, r), B (d_out, r)");
  TORCH_CHECK(at.scalar_type() == b.scalar_type() && w.scalar_type() == b.scalar_type(), "gathered_abs_mean: dtypes differ");
  TORCH_CHECK(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt, "gathered_abs_mean: int32 CSR indices");
  TORCH_CHECK(crow.numel() == b.size(0) + 1 && col.numel() == w.numel(), "gathered_abs_mean: CSR pattern shape");
  const auto atc = at.contiguous(), bc = b.contiguous(), crowc = crow.contiguous(), colc = col.contiguous(),
             wc = w.contiguous();
  const int64_t d_out = b.size(0), d_in = at.size(0), r = b.size(1);
  const int64_t threads = grad ? at::get_num_threads() : 1;
  auto gb = grad ? at::zeros({d_out, r}, b.options()) : at::empty({0}, b.options());
  auto gat_parts = grad ? at::zeros({threads, d_in, r}, b.options()) : at::empty({0}, b.options());
  std::vector<double> totals(at::get_num_threads(), 0.0);
  // columns per tile: A^T and dA^T of a tile in ~512 KiB (half a core's L2 on the machines measured)
  const int64_t tile = std::max<int64_t>(64, (int64_t(512) << 10) / (2 * r * int64_t(b.element_size())));
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "gathered_abs_mean", [&] {
    const scalar_t* atp = atc.data_ptr<scalar_t>();
    const scalar_t* bp = bc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    const int32_t* crowp = crowc.data_ptr<int32_t>();
    const int32_t* colp = colc.data_ptr<int32_t>();
    scalar_t* gbp = grad ? gb.data_ptr<scalar_t>() : nullptr;
    scalar_t* gatp = grad ? gat_parts.data_ptr<scalar_t>() : nullptr;
    // rows are disjoint between chunks (grad_B has no race); grad_At gets one buffer per thread, summed below
    at::parallel_for(0, d_out, 64, [&](int64_t begin, int64_t end) {
      const int64_t tid = at::get_thread_num();
      scalar_t* gat_local = grad ? gatp + tid * d_in * r : nullptr;
      double part = 0.0;
      switch (r) {  // the common LoRA ranks unrolled at compile time
        case 8: part = rows_pass<scalar_t, 8>(atp, bp, crowp, colp, wp, begin, end, d_in, r, tile, gbp, gat_local, grad); break;
        case 16: part = rows_pass<scalar_t, 16>(atp, bp, crowp, colp, wp, begin, end, d_in, r, tile, gbp, gat_local, grad); break;
        case 32: part = rows_pass<scalar_t, 32>(atp, bp, crowp, colp, wp, begin, end, d_in, r, tile, gbp, gat_local, grad); break;
        case 64: part = rows_pass<scalar_t, 64>(atp, bp, crowp, colp, wp, begin, end, d_in, r, tile, gbp, gat_local, grad); break;
        case 128: part = rows_pass<scalar_t, 128>(atp, bp, crowp, colp, wp, begin, end, d_in, r, tile, gbp, gat_local, grad); break;
        default: part = rows_pass<scalar_t, 0>(atp, bp, crowp, colp, wp, begin, end, d_in, r, tile, gbp, gat_local, grad);
      }
      totals[tid] += part;
    });
  });
  double total = 0.0;
  for (double t : totals) total += t;
  auto value = at::scalar_tensor(total, b.options());
  auto gat = grad ? gat_parts.sum(0) : at::empty({0}, b.options());
  return {value, gb, gat};
}

}  // namespace

TORCH_LIBRARY(cl_kernels, m) {
  m.def("gathered_abs_mean(Tensor At, Tensor B, Tensor crow, Tensor col, Tensor weight, bool grad) -> Tensor[]");
  m.impl("gathered_abs_mean", c10::DispatchKey::CPU, TORCH_FN(gathered_abs_mean));
}
