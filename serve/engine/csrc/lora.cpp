// Batched multi-LoRA for one projection group, gathered per row (the SGMV idea of Punica, on CPU).
//
// delta[n, :] = scale[s] * (x[n] @ A[s].T) @ B[s]   with s = row_slot[n]; rows with s < 0 (base) get 0.
//   x:     [N, in]
//   A:     [S, nsub * R, in]        slot s, sub-module m, rank row r at A[s, m*R + r]
//   B:     [S, R * out_total]       per slot, sub-module m's block [R, out_m] starts at R * (out_0 + ... + out_{m-1})
//   delta: [N, out_total]           sub-module m's columns start at out_0 + ... + out_{m-1}
// Only the slots the batch uses are read, and each row reads only its own slot: no masks, no zero blocks.
// Zero rank rows (adapters of rank < R, padded) are skipped. Accumulation is in fp32; delta is rounded
// to the dtype once, like a matmul's output.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>

template <typename T>
static void lora_delta_rows(const T* x, const T* a, const T* b, const int64_t* row_slot, const float* scale,
                            const std::vector<int64_t>& out_dims, int64_t n, int64_t in, int64_t rank, T* delta) {
  const int64_t nsub = static_cast<int64_t>(out_dims.size());
  const int64_t hr = nsub * rank;
  int64_t out_total = 0;
  for (auto d : out_dims) out_total += d;

  // shrink: h[n, m*R + r] = scale * <x[n], A[s, m*R + r]>
  std::vector<float> h(n * hr, 0.f);
  at::parallel_for(0, n * hr, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = i / hr, j = i % hr, s = row_slot[row];
      if (s < 0) continue;
      const T* xr = x + row * in;
      const T* ar = a + (s * hr + j) * in;
      float acc = 0.f;
      for (int64_t k = 0; k < in; ++k) acc += static_cast<float>(xr[k]) * static_cast<float>(ar[k]);
      h[i] = acc * scale[s];
    }
  });

  // expand: one work item per (row, sub-module, chunk of output columns)
  constexpr int64_t CHUNK = 256;
  struct Item { int64_t row, m, col0, col1, out_off, b_off; };
  std::vector<Item> items;
  for (int64_t row = 0; row < n; ++row) {
    int64_t out_off = 0;
    for (int64_t m = 0; m < nsub; ++m) {
      const int64_t dm = out_dims[m];
      for (int64_t c = 0; c < dm; c += CHUNK) items.push_back({row, m, c, std::min(c + CHUNK, dm), out_off, rank * out_off});
      out_off += dm;
    }
  }
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    float acc[CHUNK];
    for (int64_t it = begin; it < end; ++it) {
      const Item& w = items[it];
      const int64_t s = row_slot[w.row], dm = out_dims[w.m], len = w.col1 - w.col0;
      T* dst = delta + w.row * out_total + w.out_off + w.col0;
      for (int64_t c = 0; c < len; ++c) acc[c] = 0.f;
      if (s >= 0) {
        const float* hr_row = h.data() + w.row * hr + w.m * rank;
        const T* bs = b + s * rank * out_total + w.b_off;
        for (int64_t r = 0; r < rank; ++r) {
          const float coef = hr_row[r];
          if (coef == 0.f) continue;
          const T* br = bs + r * dm + w.col0;
          for (int64_t c = 0; c < len; ++c) acc[c] += coef * static_cast<float>(br[c]);
        }
      }
      for (int64_t c = 0; c < len; ++c) dst[c] = static_cast<T>(acc[c]);
    }
  });
}

torch::Tensor lora_delta(torch::Tensor x, torch::Tensor a, torch::Tensor b, torch::Tensor row_slot, torch::Tensor scale,
                         std::vector<int64_t> out_dims, int64_t rank) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && a.is_contiguous() && b.is_contiguous(), "lora_delta: contiguous inputs");
  TORCH_CHECK(x.scalar_type() == a.scalar_type() && a.scalar_type() == b.scalar_type(), "lora_delta: one dtype");
  TORCH_CHECK(row_slot.scalar_type() == at::kLong && scale.scalar_type() == at::kFloat, "lora_delta: int64 slots, fp32 scales");
  TORCH_CHECK(row_slot.numel() == x.size(0), "lora_delta: one slot per row");
  const int64_t n = x.size(0), in = x.size(1);
  TORCH_CHECK(a.dim() == 3 && a.size(1) == rank * static_cast<int64_t>(out_dims.size()) && a.size(2) == in, "lora_delta: A shape");
  int64_t out_total = 0;
  for (auto d : out_dims) out_total += d;
  TORCH_CHECK(b.dim() == 2 && b.size(0) == a.size(0) && b.size(1) == rank * out_total, "lora_delta: B shape");
  auto delta = torch::empty({n, out_total}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lora_delta", [&] {
    lora_delta_rows<scalar_t>(x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                              row_slot.data_ptr<int64_t>(), scale.data_ptr<float>(), out_dims, n, in, rank,
                              delta.data_ptr<scalar_t>());
  });
  return delta;
}
