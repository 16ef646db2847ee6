// Batched multi-LoRA for one projection group, gathered per slot (the SGMV idea of Punica, on CPU).
//
// y[n, :] += scale[s] * (x[n] @ A[s].T) @ B[s]   with s = row_slot[n]; rows with s < 0 are left as they are.
//   y:     [N, out_total]           the projection's output, updated in place
//   x:     [N, in]
//   A:     [S, nsub * R, in]        slot s, sub-module m, rank row r at A[s, m*R + r]
//   B:     [S, R * out_total]       per slot, sub-module m's block [R, out_m] starts at R * (out_0 + ... + out_{m-1})
// Sub-module m's columns of y start at out_0 + ... + out_{m-1}.
// Rows are grouped by slot and every work item serves all rows of its slot, so each slot's weights are read
// from memory once per call however many rows use it (two rows of one adapter used to read them twice), and
// only the slots the batch uses are read. Zero rank rows (adapters of rank < R, padded) are skipped in the
// expand. Accumulation is in fp32 and y is rounded to its dtype once, after the add.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

// <x, a_j> for NJ consecutive rows a_j of A (stride n): x is loaded once for all of them.
// -ffast-math lets the compiler vectorize these reductions.
template <int NJ, typename T>
static inline void dots(const T* x, const T* a, int64_t n, float* out) {
  float acc[NJ] = {};
  for (int64_t k = 0; k < n; ++k) {
    const float xv = static_cast<float>(x[k]);
    for (int j = 0; j < NJ; ++j) acc[j] += xv * static_cast<float>(a[j * n + k]);
  }
  for (int j = 0; j < NJ; ++j) out[j] = acc[j];
}

// acc_i[c] += h_i * b[c] for NR rows i: each element of b is converted once for all of them.
template <int NR, typename T>
static inline void axpys(const float* h, const T* b, int64_t len, float* const* acc) {
  for (int64_t c = 0; c < len; ++c) {
    const float bv = static_cast<float>(b[c]);
    for (int i = 0; i < NR; ++i) acc[i][c] += h[i] * bv;
  }
}

template <typename T>
static void lora_add_rows(T* y, const T* x, const T* a, const T* b, const int64_t* row_slot, const float* scale,
                          const std::vector<int64_t>& out_dims, int64_t n, int64_t in, int64_t rank, int64_t num_slots) {
  const int64_t nsub = static_cast<int64_t>(out_dims.size());
  const int64_t hr = nsub * rank;
  int64_t out_total = 0;
  for (auto d : out_dims) out_total += d;

  // the rows of each used slot
  std::vector<std::vector<int64_t>> rows(num_slots);
  for (int64_t row = 0; row < n; ++row)
    if (row_slot[row] >= 0) rows[row_slot[row]].push_back(row);
  std::vector<int64_t> used;
  for (int64_t s = 0; s < num_slots; ++s)
    if (!rows[s].empty()) used.push_back(s);
  if (used.empty()) return;

  // shrink: h[n, m*R + r] = scale * <x[n], A[s, m*R + r]>, one work item per (slot, block of 4 rank rows)
  constexpr int64_t NJ = 4;
  const int64_t jblocks = (hr + NJ - 1) / NJ;
  std::vector<float> h(n * hr, 0.f);
  at::parallel_for(0, static_cast<int64_t>(used.size()) * jblocks, 1, [&](int64_t begin, int64_t end) {
    float out[NJ];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = used[i / jblocks], j0 = (i % jblocks) * NJ, nj = std::min(NJ, hr - j0);
      const T* aj = a + (s * hr + j0) * in;
      for (int64_t row : rows[s]) {
        const T* xr = x + row * in;
        if (nj == NJ) {
          dots<NJ>(xr, aj, in, out);
        } else {
          for (int64_t j = 0; j < nj; ++j) dots<1>(xr, aj + j * in, in, out + j);
        }
        for (int64_t j = 0; j < nj; ++j) h[row * hr + j0 + j] = out[j] * scale[s];
      }
    }
  });

  // expand: one work item per (slot, sub-module, chunk of output columns), for all of the slot's rows
  constexpr int64_t CHUNK = 256;
  struct Item { int64_t s, m, col0, col1, out_off, b_off; };
  std::vector<Item> items;
  for (int64_t s : used) {
    int64_t out_off = 0;
    for (int64_t m = 0; m < nsub; ++m) {
      const int64_t dm = out_dims[m];
      for (int64_t c = 0; c < dm; c += CHUNK) items.push_back({s, m, c, std::min(c + CHUNK, dm), out_off, rank * out_off});
      out_off += dm;
    }
  }
  constexpr int NR = 2;  // rows expanded together
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    float acc[NR][CHUNK];
    float* accp[NR] = {acc[0], acc[1]};
    for (int64_t it = begin; it < end; ++it) {
      const Item& w = items[it];
      const int64_t dm = out_dims[w.m], len = w.col1 - w.col0;
      const T* bs = b + w.s * rank * out_total + w.b_off + w.col0;
      const std::vector<int64_t>& rs = rows[w.s];
      for (size_t i0 = 0; i0 < rs.size(); i0 += NR) {
        const int nr = static_cast<int>(std::min<size_t>(NR, rs.size() - i0));
        for (int i = 0; i < nr; ++i) std::fill(acc[i], acc[i] + len, 0.f);
        for (int64_t r = 0; r < rank; ++r) {
          float coef[NR];
          bool any = false;
          for (int i = 0; i < nr; ++i) {
            coef[i] = h[rs[i0 + i] * hr + w.m * rank + r];
            any |= coef[i] != 0.f;
          }
          if (!any) continue;  // a zero-padded rank row
          if (nr == NR) axpys<NR>(coef, bs + r * dm, len, accp);
          else axpys<1>(coef, bs + r * dm, len, accp);
        }
        for (int i = 0; i < nr; ++i) {
          T* dst = y + rs[i0 + i] * out_total + w.out_off + w.col0;
          for (int64_t c = 0; c < len; ++c) dst[c] = static_cast<T>(static_cast<float>(dst[c]) + acc[i][c]);
        }
      }
    }
  });
}

void lora_add_(torch::Tensor y, torch::Tensor x, torch::Tensor a, torch::Tensor b, torch::Tensor row_slot,
               torch::Tensor scale, std::vector<int64_t> out_dims, int64_t rank) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.is_contiguous() && y.is_contiguous() && a.is_contiguous() &&
              b.is_contiguous(), "lora_add_: contiguous inputs");
  TORCH_CHECK(x.scalar_type() == a.scalar_type() && a.scalar_type() == b.scalar_type() &&
              y.scalar_type() == x.scalar_type(), "lora_add_: one dtype");
  TORCH_CHECK(row_slot.scalar_type() == at::kLong && scale.scalar_type() == at::kFloat, "lora_add_: int64 slots, fp32 scales");
  TORCH_CHECK(row_slot.numel() == x.size(0) && y.size(0) == x.size(0), "lora_add_: one slot per row");
  const int64_t n = x.size(0), in = x.size(1), num_slots = a.size(0);
  TORCH_CHECK(a.dim() == 3 && a.size(1) == rank * static_cast<int64_t>(out_dims.size()) && a.size(2) == in, "lora_add_: A shape");
  int64_t out_total = 0;
  for (auto d : out_dims) out_total += d;
  TORCH_CHECK(b.dim() == 2 && b.size(0) == num_slots && b.size(1) == rank * out_total && y.size(1) == out_total,
              "lora_add_: B / y shape");
  TORCH_CHECK(scale.numel() == num_slots, "lora_add_: one scale per slot");
  const int64_t* slots = row_slot.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(slots[i] < num_slots, "lora_add_: slot out of range");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lora_add_", [&] {
    lora_add_rows<scalar_t>(y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                            slots, scale.data_ptr<float>(), out_dims, n, in, rank, num_slots);
  });
}
