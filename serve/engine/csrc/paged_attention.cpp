// Paged decode attention for CPU: one query token per sequence, keys/values read in place from the
// block pool (no gather copy). Parallel over (sequence, kv head); each task scores its GQA group of query
// heads against the sequence's context in fp32, softmaxes and accumulates values in fp32.
//
// q:            [num_seqs, num_heads, head_dim]
// k_cache/v_cache: [num_slots, num_kv_heads, head_dim]  (slot = block * block_size + offset)
// block_tables: [num_seqs, max_blocks] int64
// context_lens: [num_seqs] int64 (tokens to attend to, including the new one)
// returns       [num_seqs, num_heads, head_dim], dtype of q
//
// paged_decode_attention_quant reads int8 or fp8 (e4m3fn) caches with per-KV-head fp32 dequantization
// scales k_scale/v_scale [num_kv_heads] (x = stored * scale): the K scale is folded into the query and the
// V scale into the output, so the inner loops only convert. write_kv_quant stores K/V that way.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

template <typename T>
static inline float to_float(T x) { return static_cast<float>(x); }

// fp8 e4m3fn bytes are converted through a 256-entry table: c10's bit-twiddling conversion costs more than
// the dot product it feeds.
struct Fp8Byte { uint8_t bits; };
static const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = static_cast<float>(c10::Float8_e4m3fn(static_cast<uint8_t>(i), c10::Float8_e4m3fn::from_bits()));
    return t;
  }();
  return table;
}
template <>
inline float to_float<Fp8Byte>(Fp8Byte x) { return fp8_table()[x.bits]; }

template <typename T, typename C>
static void decode_kernel(const T* q, const C* kc, const C* vc, const int64_t* tables, const int64_t* lens, T* out,
                          int64_t num_seqs, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                          int64_t max_blocks, int64_t block_size, float scale, const float* k_scale = nullptr,
                          const float* v_scale = nullptr) {
  const int64_t group = num_heads / num_kv_heads;
  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * head_dim), scores, acc(group * head_dim);
    std::vector<float> kf(head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / num_kv_heads, h = task % num_kv_heads;
      const int64_t len = lens[s];
      const int64_t* table = tables + s * max_blocks;
      const float qscale = k_scale ? scale * k_scale[h] : scale;
      const float vscale = v_scale ? v_scale[h] : 1.f;
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          qf[g * head_dim + d] = to_float(q[(s * num_heads + h * group + g) * head_dim + d]) * qscale;
      scores.assign(group * len, 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const C* kp = kc + (slot * num_kv_heads + h) * head_dim;
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
        const C* vp = vc + (slot * num_kv_heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) kf[d] = to_float(vp[d]);
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * len + t];
          float* ap = acc.data() + g * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) ap[d] += p * kf[d];
        }
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d)
          out[(s * num_heads + h * group + g) * head_dim + d] = static_cast<T>(acc[g * head_dim + d] * vscale);
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
    decode_kernel<scalar_t, scalar_t>(q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
                            block_tables.data_ptr<int64_t>(), context_lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                            q.size(0), q.size(1), k_cache.size(1), q.size(2), block_tables.size(1), block_size,
                            static_cast<float>(scale));
  });
  return out;
}

torch::Tensor paged_decode_attention_quant(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                           torch::Tensor k_scale, torch::Tensor v_scale, torch::Tensor block_tables,
                                           torch::Tensor context_lens, int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.dim() == 3, "q, k_cache, v_cache must be 3-D");
  const auto ct = k_cache.scalar_type();
  TORCH_CHECK(ct == v_cache.scalar_type() && (ct == torch::kInt8 || ct == at::kFloat8_e4m3fn), "int8 or fp8 e4m3fn caches");
  TORCH_CHECK(k_scale.scalar_type() == torch::kFloat32 && v_scale.scalar_type() == torch::kFloat32, "fp32 scales");
  TORCH_CHECK(k_scale.numel() == k_cache.size(1) && v_scale.numel() == k_cache.size(1), "one scale per KV head");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt64 && context_lens.scalar_type() == torch::kInt64, "int64 indices");
  TORCH_CHECK(q.size(1) % k_cache.size(1) == 0, "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  context_lens = context_lens.contiguous();
  k_scale = k_scale.contiguous();
  v_scale = v_scale.contiguous();
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention_quant", [&] {
    auto run = [&](auto* kc, auto* vc) {
      decode_kernel<scalar_t>(q.data_ptr<scalar_t>(), kc, vc, block_tables.data_ptr<int64_t>(),
                              context_lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), q.size(0), q.size(1),
                              k_cache.size(1), q.size(2), block_tables.size(1), block_size, static_cast<float>(scale),
                              k_scale.data_ptr<float>(), v_scale.data_ptr<float>());
    };
    if (ct == torch::kInt8)
      run(k_cache.data_ptr<int8_t>(), v_cache.data_ptr<int8_t>());
    else
      run(reinterpret_cast<const Fp8Byte*>(k_cache.data_ptr()), reinterpret_cast<const Fp8Byte*>(v_cache.data_ptr()));
  });
  return out;
}

// Quantize the K and V heads of qkv [N, width] (K at column k_offset, V right after it) into k_cache/v_cache
// [slots, Hkv, D] at slot_mapping[token]: round(x / scale[head]) saturated to [-127, 127] for int8, to
// +-448 then rounded to nearest-even for fp8 e4m3fn (what torch's .to(float8_e4m3fn) does).
void write_kv_quant(torch::Tensor qkv, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slot_mapping,
                    torch::Tensor k_scale, torch::Tensor v_scale, int64_t k_offset) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous(), "write_kv_quant: qkv must be contiguous [N, width]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  const auto ct = k_cache.scalar_type();
  TORCH_CHECK(ct == v_cache.scalar_type() && (ct == torch::kInt8 || ct == at::kFloat8_e4m3fn), "int8 or fp8 e4m3fn caches");
  TORCH_CHECK(slot_mapping.scalar_type() == torch::kInt64, "int64 slots");
  TORCH_CHECK(k_scale.scalar_type() == torch::kFloat32 && v_scale.scalar_type() == torch::kFloat32, "fp32 scales");
  const int64_t n = qkv.size(0), width = qkv.size(1), hkv = k_cache.size(1), d = k_cache.size(2);
  TORCH_CHECK(k_offset + 2 * hkv * d <= width, "write_kv_quant: width mismatch");
  auto sm = slot_mapping.contiguous();
  auto ks = k_scale.contiguous(), vs = v_scale.contiguous();
  const int64_t* slots = sm.data_ptr<int64_t>();
  const float* ksp = ks.data_ptr<float>();
  const float* vsp = vs.data_ptr<float>();
  const bool is_int8 = ct == torch::kInt8;
  auto* kc = static_cast<uint8_t*>(k_cache.data_ptr());
  auto* vc = static_cast<uint8_t*>(v_cache.data_ptr());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "write_kv_quant", [&] {
    const scalar_t* src = qkv.data_ptr<scalar_t>();
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        for (int part = 0; part < 2; ++part) {
          const scalar_t* x = src + t * width + k_offset + part * hkv * d;
          uint8_t* dst = (part ? vc : kc) + slots[t] * hkv * d;
          const float* sc = part ? vsp : ksp;
          for (int64_t h = 0; h < hkv; ++h) {
            for (int64_t i = 0; i < d; ++i) {
              const float y = static_cast<float>(x[h * d + i]) / sc[h];
              if (is_int8) {
                const float r = std::min(std::max(std::nearbyint(y), -127.f), 127.f);
                dst[h * d + i] = static_cast<uint8_t>(static_cast<int8_t>(r));
              } else {
                dst[h * d + i] = c10::Float8_e4m3fn(std::min(std::max(y, -448.f), 448.f)).x;
              }
            }
          }
        }
      }
    });
  });
}
