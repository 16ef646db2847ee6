// Few-row bf16 projection for decode: y[m, n] = <x[m], W[n]>, x [M, K], W [N, K] (the nn.Linear layout).
//
// At a handful of rows a projection is one pass over the weight, so its speed is the memory bandwidth it
// reaches. oneDNN's packed GEMV reached about 18 GB/s on the 2-core machines here, where a plain read streams
// at about 40 GB/s. Here each thread streams its own block of contiguous weight rows; 64 weights at a time are
// widened to fp32 in registers and multiplied into every x row (up to 4 rows per pass over the weight row, which
// stays in L1), with four 16-lane fp32 accumulators per x row. The result is rounded to bf16 once.
//
// A row's sums run in the same order whatever M is (same chunks, same accumulators, same final reduction), so
// its result has the same bits at any row count: decoding one token and verifying k speculated tokens
// (M = k + 1) agree exactly. Built only with AVX-512 (``-march=native`` on such a CPU); elsewhere the module
// has no ``bf16_small_m_linear`` and projections stay on oneDNN.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#include <algorithm>
#include <cstring>

namespace {

constexpr int64_t kChunk = 64;  // 4 x 16 lanes
constexpr int64_t kRowBlock = 4;

inline __m512 widen_bf16(const uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline float widen_bf16_scalar(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Dot products of one weight row with R (1..4) fp32 x rows; every x row sees the same operation sequence.
template <int R>
inline void dot_rows(const uint16_t* w, const float* const* x, int64_t K, float* out) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kChunk <= K; k += kChunk) {
    const __m512 w0 = widen_bf16(w + k), w1 = widen_bf16(w + k + 16), w2 = widen_bf16(w + k + 32),
                 w3 = widen_bf16(w + k + 48);
    for (int r = 0; r < R; ++r) {
      const float* xr = x[r] + k;
      acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xr + 32), acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xr + 48), acc[r][3]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float tail = 0.f;
    for (int64_t t = k; t < K; ++t) tail += widen_bf16_scalar(w[t]) * x[r][t];
    const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3]));
    out[r] = _mm512_reduce_add_ps(s) + tail;
  }
}

}  // namespace

torch::Tensor bf16_small_m_linear(torch::Tensor x, torch::Tensor weight) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1),
              "bf16_small_m_linear: x [M, K] and weight [N, K] expected");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "bf16_small_m_linear: bf16 only");
  TORCH_CHECK(weight.is_contiguous(), "bf16_small_m_linear: weight must be contiguous");
  const int64_t M = x.size(0), K = weight.size(1), N = weight.size(0);
  auto xf = x.to(torch::kFloat32).contiguous();  // exact: every bf16 is an fp32
  auto y = torch::empty({M, N}, x.options());
  const uint16_t* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const float* xv = xf.data_ptr<float>();
  at::BFloat16* out = y.data_ptr<at::BFloat16>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    const float* rows[kRowBlock];
    float sums[kRowBlock];
    for (int64_t n = begin; n < end; ++n) {
      const uint16_t* wn = w + n * K;
      for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
        const int64_t r = std::min(kRowBlock, M - m0);
        for (int64_t i = 0; i < r; ++i) rows[i] = xv + (m0 + i) * K;
        switch (r) {
          case 4: dot_rows<4>(wn, rows, K, sums); break;
          case 3: dot_rows<3>(wn, rows, K, sums); break;
          case 2: dot_rows<2>(wn, rows, K, sums); break;
          default: dot_rows<1>(wn, rows, K, sums); break;
        }
        for (int64_t i = 0; i < r; ++i) out[(m0 + i) * N + n] = at::BFloat16(sums[i]);
      }
    }
  });
  return y;
}
#endif
