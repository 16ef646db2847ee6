// Paged decode attention for CPU: one query token per sequence, keys/values read in place from the
// block pool (no gather copy). Parallel over (sequence, kv head); each task scores its GQA group of query
// heads against the sequence's context in fp32, softmaxes and accumulates values in fp32.
//
// q:            [num_seqs, num_heads, head_dim]
// k_cache/v_cache: [num_slots, num_kv_heads, head_dim]  (slot = block * block_size + offset)
// block_tables: [num_seqs, max_blocks] int64
// context_lens: [num_seqs] int64 (tokens to attend to, including the new one)
// returns       [num_seqs, num_heads, head_dim], dtype of q
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

template <typename T>
static inline float to_float(T x) { return static_cast<float>(x); }

template <typename T>
static void decode_kernel(const T* q, const T* kc, const T* vc, const int64_t* tables, const int64_t* lens, T* out,
                          int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                          int64_t max_blocks, int64_t block_size, float scale) {
  const int64_t group = num_heads / num_kv_heads;
  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * head_dim), scores, acc(group * head_dim);
    std::vector<float> kf(head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / num_kv_heads, h = task % num_kv_heads;
      const int64_t len = lens[s];
      const int64_t* table = tables + s * max_blocks;
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          qf[g * head_dim + d] = to_float(q[(s * num_heads + h * group + g) * head_dim + d]) * scale;
      scores.assign(group * len, 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const T* kp = kc + (slot * num_kv_heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) kf[d] = to_float(kp[d]);
        for (int64_t g = 0; g < group; ++g) {
          const float* qp = qf.data() + g * head_dim;
          float dot = 0.f;
          for (int64_t d = 0; d < head_dim; ++d) dot += qp[d] * kf[d];
          scores[g * len + t] = dot;
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sc = scores.data() + g * len;
        float mx = sc[0];  // len >= 1; no -inf sentinel (built with -ffast-math)
        for (int64_t t = 1; t < len; ++t) mx = sc[t] > mx ? sc[t] : mx;
        float sum = 0.f;
        for (int64_t t = 0; t < len; ++t) { sc[t] = std::exp(sc[t] - mx); sum += sc[t]; }
        const float inv = 1.f / sum;
        for (int64_t t = 0; t < len; ++t) sc[t] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const T* vp = vc + (slot * num_kv_heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) kf[d] = to_float(vp[d]);
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * len + t];
          float* ap = acc.data() + g * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) ap[d] += p * kf[d];
        }
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          out[(s * num_heads + h * group + g) * head_dim + d] = static_cast<T>(acc[g * head_dim + d]);
    }
  });
}

torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                     torch::Tensor block_tables, torch::Tensor context_lens, int64_t block_size,
                                     double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.dim() == 3, "q, k_cache, v_cache must be 3-D");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(), "dtype mismatch");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt64 && context_lens.scalar_type() == torch::kInt64, "int64 indices");
  TORCH_CHECK(q.size(1) % k_cache.size(1) == 0, "num_heads must be a multiple of num_kv_heads");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  context_lens = context_lens.contiguous();
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    decode_kernel<scalar_t>(q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
                            block_tables.data_ptr<int64_t>(), context_lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                            q.size(0), q.size(1), k_cache.size(1), q.size(2), block_tables.size(1), block_size,
                            static_cast<float>(scale));
  });
  return out;
}
