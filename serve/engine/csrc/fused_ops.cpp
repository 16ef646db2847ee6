// Fused elementwise ops for the CPU decode/prefill step. Each replaces 6-16 small torch ops whose
// per-call overhead dominated the step at small batch. Rounding follows HF Llama: values are rounded
// to the model dtype at the same points as the torch code (so fp32 results match it to float precision).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

template <typename T>
static inline T round_to(float x) { return static_cast<T>(x); }

// out = w * to_dtype(x * rsqrt(mean(x^2) + eps)), computed per row in fp32.
// If `residual` is defined: x = residual + delta first (rounded to dtype) and written back to `residual`.
template <typename T>
static void rms_norm_rows(const T* x_in, T* residual, const T* w, T* out, int64_t rows, int64_t hidden, float eps) {
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(hidden);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x_in + r * hidden;
      float ss = 0.f;
      if (residual) {
        T* rr = residual + r * hidden;
        for (int64_t i = 0; i < hidden; ++i) {
          T v = round_to<T>(static_cast<float>(rr[i]) + static_cast<float>(xr[i]));
          rr[i] = v;
          xf[i] = static_cast<float>(v);
        }
      } else {
        for (int64_t i = 0; i < hidden; ++i) xf[i] = static_cast<float>(xr[i]);
      }
      for (int64_t i = 0; i < hidden; ++i) ss += xf[i] * xf[i];
      const float inv = 1.f / std::sqrt(ss / hidden + eps);
      T* o = out + r * hidden;
      for (int64_t i = 0; i < hidden; ++i)
        o[i] = round_to<T>(static_cast<float>(w[i]) * static_cast<float>(round_to<T>(xf[i] * inv)));
    }
  });
}

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && weight.is_contiguous(), "rms_norm: contiguous [rows, hidden]");
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), nullptr, weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                            x.size(0), x.size(1), static_cast<float>(eps));
  });
  return out;
}

// residual += delta (in place); returns rms_norm(residual) * weight.
torch::Tensor add_rms_norm(torch::Tensor residual, torch::Tensor delta, torch::Tensor weight, double eps) {
  TORCH_CHECK(residual.dim() == 2 && residual.is_contiguous() && delta.is_contiguous(), "add_rms_norm: contiguous [rows, hidden]");
  TORCH_CHECK(residual.sizes() == delta.sizes(), "add_rms_norm: shape mismatch");
  auto out = torch::empty_like(residual);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, residual.scalar_type(), "add_rms_norm", [&] {
    rms_norm_rows<scalar_t>(delta.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                            out.data_ptr<scalar_t>(), residual.size(0), residual.size(1), static_cast<float>(eps));
  });
  return out;
}

// In place on qkv [N, (Hq + 2*Hkv) * D]: rotate the q and k heads of each token by its position
// (rotate-half convention: x*cos + rotate_half(x)*sin, each product rounded to dtype), then copy the
// token's k and v heads into k_cache/v_cache [slots, Hkv, D] at slot_mapping[token].
template <typename T>
static void rope_cache_rows(T* qkv, const T* cos, const T* sin, const int64_t* pos, T* kc, T* vc, const int64_t* slots,
                            int64_t n, int64_t hq, int64_t hkv, int64_t d) {
  const int64_t width = (hq + 2 * hkv) * d, half = d / 2;
  at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(d);
    for (int64_t t = begin; t < end; ++t) {
      T* row = qkv + t * width;
      const T* c = cos + pos[t] * d;
      const T* s = sin + pos[t] * d;
      for (int64_t h = 0; h < hq + hkv; ++h) {
        T* x = row + h * d;
        for (int64_t i = 0; i < d; ++i) {
          const float rot = i < half ? -static_cast<float>(x[i + half]) : static_cast<float>(x[i - half]);
          const float a = static_cast<float>(round_to<T>(static_cast<float>(x[i]) * static_cast<float>(c[i])));
          const float b = static_cast<float>(round_to<T>(rot * static_cast<float>(s[i])));
          tmp[i] = a + b;
        }
        for (int64_t i = 0; i < d; ++i) x[i] = round_to<T>(tmp[i]);
      }
      const int64_t slot = slots[t];
      std::copy(row + hq * d, row + (hq + hkv) * d, kc + slot * hkv * d);
      std::copy(row + (hq + hkv) * d, row + width, vc + slot * hkv * d);
    }
  });
}

void rope_and_cache(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, torch::Tensor positions,
                    torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slot_mapping, int64_t num_q_heads,
                    int64_t num_kv_heads) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous(), "rope_and_cache: qkv must be contiguous [N, width]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && cos.is_contiguous() && sin.is_contiguous(), "contiguous");
  TORCH_CHECK(positions.scalar_type() == torch::kInt64 && slot_mapping.scalar_type() == torch::kInt64, "int64 indices");
  const int64_t d = k_cache.size(2);
  TORCH_CHECK(qkv.size(1) == (num_q_heads + 2 * num_kv_heads) * d, "rope_and_cache: width mismatch");
  auto p = positions.contiguous();
  auto sm = slot_mapping.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rope_and_cache", [&] {
    rope_cache_rows<scalar_t>(qkv.data_ptr<scalar_t>(), cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(),
                              p.data_ptr<int64_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
                              sm.data_ptr<int64_t>(), qkv.size(0), num_q_heads, num_kv_heads, d);
  });
}

// out = silu(x[:, :I]) * x[:, I:] for x [N, 2I], rounded as torch does (silu result rounded, then product).
torch::Tensor silu_and_mul(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0, "silu_and_mul: contiguous [N, 2I]");
  const int64_t n = x.size(0), inter = x.size(1) / 2;
  auto out = torch::empty({n, inter}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_and_mul", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* g = xp + r * 2 * inter;
        const scalar_t* u = g + inter;
        for (int64_t i = 0; i < inter; ++i) {
          const float gv = static_cast<float>(g[i]);
          const float s = static_cast<float>(round_to<scalar_t>(gv / (1.f + std::exp(-gv))));
          op[r * inter + i] = round_to<scalar_t>(s * static_cast<float>(u[i]));
        }
      }
    });
  });
  return out;
}
