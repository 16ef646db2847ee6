// Few-row bf16 projection for decode: y[m, n] = <x[m], W[n]>, x [M, K], W [N, K] (the nn.Linear layout).
//
// At a handful of rows a projection is one pass over the weight, so its speed is the memory bandwidth it
// reaches. oneDNN's packed GEMV reached about 18 GB/s on the 2-core machines here, where a plain read streams
// at about 40 GB/s. Here each thread streams its own block of contiguous weight rows: a row is widened to fp32
// once (into L1) and dotted with every x row, accumulating in fp32; the result is rounded to bf16 once.
//
// Every (m, n) goes through the one non-inlined `dot` below, so a row's result has the same bits whatever M
// is: decoding one token and verifying k speculated tokens (M = k + 1) agree exactly.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstring>
#include <vector>

static inline float bf16_bits_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// 64 independent partial sums (four AVX-512 or eight AVX2 accumulators) hide the FMA latency.
__attribute__((noinline)) static float dot(const float* a, const float* b, int64_t K) {
  constexpr int64_t W = 64;
  float acc[W] = {0.f};
  int64_t k = 0;
  for (; k + W <= K; k += W)
    for (int64_t j = 0; j < W; ++j) acc[j] += a[k + j] * b[k + j];
  float tail = 0.f;
  for (; k < K; ++k) tail += a[k] * b[k];
  float s = 0.f;
  for (int64_t j = 0; j < W; ++j) s += acc[j];
  return s + tail;
}

torch::Tensor bf16_small_m_linear(torch::Tensor x, torch::Tensor weight) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1),
              "bf16_small_m_linear: x [M, K] and weight [N, K] expected");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "bf16_small_m_linear: bf16 only");
  TORCH_CHECK(weight.is_contiguous(), "bf16_small_m_linear: weight must be contiguous");
  const int64_t M = x.size(0), K = weight.size(1), N = weight.size(0);
  auto xc = x.contiguous();
  std::vector<float> xf(M * K);
  const uint16_t* xb = reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>());
  for (int64_t i = 0; i < M * K; ++i) xf[i] = bf16_bits_to_float(xb[i]);
  auto y = torch::empty({M, N}, x.options());
  const uint16_t* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  at::BFloat16* out = y.data_ptr<at::BFloat16>();
  const float* xv = xf.data();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> wrow(K);
    for (int64_t n = begin; n < end; ++n) {
      const uint16_t* row = w + n * K;
      for (int64_t k = 0; k < K; ++k) wrow[k] = bf16_bits_to_float(row[k]);
      for (int64_t m = 0; m < M; ++m) out[m * N + n] = at::BFloat16(dot(wrow.data(), xv + m * K, K));
    }
  });
  return y;
}
