// Fused Fourier embedding on the CPU: the at::parallel_for kernels and their registration (the
// schemas are in csrc/ops.cpp, the argument checks in csrc/checks.cpp).
//
// The fp32/fp16/bf16 forward evaluates the shared branch-free sincos of inrflow/fourier.h in an
// inner loop over the frequencies that g++ auto-vectorises (-O3). Because the build cannot
// assume AVX2, the loops are compiled twice on x86-64: once for the baseline ISA (exact product
// by Dekker's split) and once with target("avx2,fma,f16c") (exact product by FMA), picked at run
// time (csrc/cpu/dispatch.h). The backward reads the forward output instead of x, so it
// only multiplies and adds: grad_x[c] = sum_k f_k (g_sin[c,k] cos[c,k] - g_cos[c,k] sin[c,k]).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../checks.h"
#include "dispatch.h"
#include "inrflow/fourier.h"

#if defined(__GNUC__)
#define INRFLOW_PREFETCH(p) __builtin_prefetch(p)
#else
#define INRFLOW_PREFETCH(p) ((void)(p))
#endif

namespace inrflow {

// ------------------------------------------------------------------------------------------------
// Kernels

namespace {

using fourier::kFastRange;

// Operand magnitude up to which two_prod_split cannot overflow (4097 * 1e30 << FLT_MAX).
constexpr float kSplitSafe = 1e30f;

// Frequencies per block of the fp16/bf16 paths, which compute in fp32 scratch and then convert.
constexpr int64_t kChunk = 256;

// Software prefetch of the backward: distance, and the widest row it is used for (wider rows
// are long sequential streams that the hardware prefetchers follow on their own).
constexpr int64_t kPrefetchBytes = 8192;
constexpr int64_t kPrefetchRowBytes = 4096;
constexpr int64_t kCacheLine = 64;

// Lanes of the backward's partial sums: two AVX2 vectors, so the reduction vectorises without
// reassociation flags.
constexpr int64_t kLanes = 16;

template <typename T>
INRFLOW_ALWAYS_INLINE float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
INRFLOW_ALWAYS_INLINE T from_float(float v) {
  return static_cast<T>(v);
}

template <bool kFma>
INRFLOW_ALWAYS_INLINE void sincos_fast(float x, float f, float& s, float& c) {
  float lo;
  const float hi = kFma ? fourier::two_prod_fma(x, f, lo) : fourier::two_prod_split(x, f, lo);
  fourier::sincos_reduced<kFma>(hi, lo, s, c);
}

// sin/cos of x * f[0..n) into s_out/c_out; the fast path needs |x * f| <= kFastRange.
template <bool kFma>
INRFLOW_ALWAYS_INLINE void sincos_row(float x, const float* __restrict__ f, int64_t n, bool fast,
                                      float* __restrict__ s_out, float* __restrict__ c_out) {
  if (fast) {
    for (int64_t k = 0; k < n; ++k) sincos_fast<kFma>(x, f[k], s_out[k], c_out[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) fourier::sincos_mul_slow(x, f[k], s_out[k], c_out[k]);
  }
}

// Rows [begin, end) of the fp32/fp16/bf16 forward. `f_abs_max` is max |f| (NaN if any f is NaN).
template <typename T, bool kFma>
INRFLOW_ALWAYS_INLINE void forward_rows(const T* __restrict__ x, const float* __restrict__ f,
                                        T* __restrict__ out, int64_t begin, int64_t end,
                                        int64_t channels, int64_t num_freqs, bool include_input,
                                        float f_abs_max) {
  const int64_t cf = channels * num_freqs;
  const int64_t x_cols = include_input ? channels : 0;
  const int64_t width = 2 * cf + x_cols;
  float s_buf[kChunk];
  float c_buf[kChunk];
  for (int64_t row = begin; row < end; ++row) {
    const T* x_row = x + row * channels;
    T* out_row = out + row * width;
    for (int64_t c = 0; c < x_cols; ++c) out_row[c] = x_row[c];
    // One range decision per row keeps the inner loops free of branches; NaN/inf fail it, and
    // so do operands large enough to overflow Dekker's split (1e38 * 1e-34, say).
    bool fast = f_abs_max <= kSplitSafe;
    for (int64_t c = 0; c < channels; ++c) {
      const float a = std::fabs(to_float(x_row[c]));
      fast = fast && a <= kSplitSafe && a * f_abs_max <= kFastRange;
    }
    T* s_row = out_row + x_cols;
    T* c_row = s_row + cf;
    for (int64_t c = 0; c < channels; ++c) {
      const float xv = to_float(x_row[c]);
      T* s_dst = s_row + c * num_freqs;
      T* c_dst = c_row + c * num_freqs;
      if constexpr (std::is_same_v<T, float>) {
        sincos_row<kFma>(xv, f, num_freqs, fast, s_dst, c_dst);
      } else {
        for (int64_t k0 = 0; k0 < num_freqs; k0 += kChunk) {
          const int64_t n = std::min(kChunk, num_freqs - k0);
          sincos_row<kFma>(xv, f + k0, n, fast, s_buf, c_buf);
          for (int64_t k = 0; k < n; ++k) {
            s_dst[k0 + k] = from_float<T>(s_buf[k]);
            c_dst[k0 + k] = from_float<T>(c_buf[k]);
          }
        }
      }
    }
  }
}

// Rows [begin, end) of the fp32/fp16/bf16 backward, accumulating in fp32.
template <typename T>
INRFLOW_ALWAYS_INLINE void backward_rows(const T* __restrict__ grad_out,
                                         const T* __restrict__ out, const float* __restrict__ f,
                                         T* __restrict__ grad_x, int64_t begin, int64_t end,
                                         int64_t channels, int64_t num_freqs,
                                         bool include_input) {
  const int64_t cf = channels * num_freqs;
  const int64_t x_cols = include_input ? channels : 0;
  const int64_t width = 2 * cf + x_cols;
  // Each row reads four interleaved streams (sin and cos parts of grad_out and out); prefetching
  // a few KiB ahead keeps them at memory bandwidth (measured ~15% faster on 1 KiB rows).
  const int64_t row_bytes = width * static_cast<int64_t>(sizeof(T));
  const int64_t ahead = row_bytes <= kPrefetchRowBytes ? kPrefetchBytes / row_bytes + 1 : 0;
  for (int64_t row = begin; row < end; ++row) {
    const T* g_row = grad_out + row * width;
    const T* o_row = out + row * width;
    if (ahead > 0 && row + ahead < end) {
      const char* g_next = reinterpret_cast<const char*>(g_row + ahead * width);
      const char* o_next = reinterpret_cast<const char*>(o_row + ahead * width);
      for (int64_t b = 0; b < row_bytes; b += kCacheLine) {
        INRFLOW_PREFETCH(g_next + b);
        INRFLOW_PREFETCH(o_next + b);
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      const T* gs = g_row + x_cols + c * num_freqs;
      const T* gc = gs + cf;
      const T* os = o_row + x_cols + c * num_freqs;
      const T* oc = os + cf;
      float lanes[kLanes] = {};
      int64_t k = 0;
      for (; k + kLanes <= num_freqs; k += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) {
          lanes[j] += fourier::grad_term<float>(to_float(gs[k + j]), to_float(gc[k + j]),
                                                to_float(os[k + j]), to_float(oc[k + j]),
                                                f[k + j]);
        }
      }
      float acc = 0.0f;
      for (; k < num_freqs; ++k) {
        acc += fourier::grad_term<float>(to_float(gs[k]), to_float(gc[k]), to_float(os[k]),
                                         to_float(oc[k]), f[k]);
      }
      for (int64_t j = 0; j < kLanes; ++j) acc += lanes[j];
      if (include_input) acc += to_float(g_row[c]);
      grad_x[row * channels + c] = from_float<T>(acc);
    }
  }
}

// fp64 (gradcheck): plain fp64 math with libm.
void forward_rows_f64(const double* x, const float* f, double* out, int64_t begin, int64_t end,
                      int64_t channels, int64_t num_freqs, bool include_input) {
  const int64_t cf = channels * num_freqs;
  const int64_t x_cols = include_input ? channels : 0;
  const int64_t width = 2 * cf + x_cols;
  for (int64_t row = begin; row < end; ++row) {
    const double* x_row = x + row * channels;
    double* out_row = out + row * width;
    for (int64_t c = 0; c < x_cols; ++c) out_row[c] = x_row[c];
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t k = 0; k < num_freqs; ++k) {
        double s;
        double co;
        fourier::sincos_mul(x_row[c], f[k], s, co);
        out_row[x_cols + c * num_freqs + k] = s;
        out_row[x_cols + cf + c * num_freqs + k] = co;
      }
    }
  }
}

void backward_rows_f64(const double* grad_out, const double* out, const float* f, double* grad_x,
                       int64_t begin, int64_t end, int64_t channels, int64_t num_freqs,
                       bool include_input) {
  const int64_t cf = channels * num_freqs;
  const int64_t x_cols = include_input ? channels : 0;
  const int64_t width = 2 * cf + x_cols;
  for (int64_t row = begin; row < end; ++row) {
    const double* g_row = grad_out + row * width;
    const double* o_row = out + row * width;
    for (int64_t c = 0; c < channels; ++c) {
      double acc = include_input ? g_row[c] : 0.0;
      for (int64_t k = 0; k < num_freqs; ++k) {
        const int64_t j = x_cols + c * num_freqs + k;
        acc += fourier::grad_term<double>(g_row[j], g_row[j + cf], o_row[j], o_row[j + cf],
                                          static_cast<double>(f[k]));
      }
      grad_x[row * channels + c] = acc;
    }
  }
}

// Row-range entry points, one per ISA. The AVX2 versions inline the same templates under
// INRFLOW_TARGET_AVX2_FMA, so the header math vectorises 8-wide with FMA there.
template <typename T>
void forward_rows_baseline(const T* x, const float* f, T* out, int64_t begin, int64_t end,
                           int64_t channels, int64_t num_freqs, bool include_input,
                           float f_abs_max) {
  forward_rows<T, false>(x, f, out, begin, end, channels, num_freqs, include_input, f_abs_max);
}

template <typename T>
void backward_rows_baseline(const T* grad_out, const T* out, const float* f, T* grad_x,
                            int64_t begin, int64_t end, int64_t channels, int64_t num_freqs,
                            bool include_input) {
  backward_rows<T>(grad_out, out, f, grad_x, begin, end, channels, num_freqs, include_input);
}

template <typename T>
INRFLOW_TARGET_AVX2_FMA void forward_rows_avx2(
    const T* x, const float* f, T* out, int64_t begin, int64_t end, int64_t channels,
    int64_t num_freqs, bool include_input, float f_abs_max) {
  forward_rows<T, true>(x, f, out, begin, end, channels, num_freqs, include_input, f_abs_max);
}

template <typename T>
INRFLOW_TARGET_AVX2_FMA void backward_rows_avx2(
    const T* grad_out, const T* out, const float* f, T* grad_x, int64_t begin, int64_t end,
    int64_t channels, int64_t num_freqs, bool include_input) {
  backward_rows<T>(grad_out, out, f, grad_x, begin, end, channels, num_freqs, include_input);
}

// max |f|, NaN if any frequency is NaN (so that the fast-path check fails).
float abs_max(const float* f, int64_t n) {
  float m = 0.0f;
  for (int64_t k = 0; k < n; ++k) {
    const float a = std::fabs(f[k]);
    if (!(a <= m)) m = a;  // also takes NaN, which then sticks
  }
  return m;
}

// Rows per at::parallel_for task: enough work (~32k outputs) to amortise the task overhead.
int64_t grain_rows(const FourierDims& d) {
  const int64_t per_row = std::max<int64_t>(1, d.width());
  return std::max<int64_t>(1, (int64_t{1} << 15) / per_row);
}

template <typename T>
void forward_typed(const at::Tensor& x, const at::Tensor& freqs, at::Tensor& out,
                   const FourierDims& d) {
  const T* xp = x.const_data_ptr<T>();
  const float* fp = freqs.const_data_ptr<float>();
  T* op = out.mutable_data_ptr<T>();
  if constexpr (std::is_same_v<T, double>) {
    at::parallel_for(0, d.rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      forward_rows_f64(xp, fp, op, begin, end, d.channels, d.num_freqs, d.include_input);
    });
  } else {
    const float f_abs_max = abs_max(fp, d.num_freqs);
    cpu::parallel_for_isa(
        cpu::Isa::kAvx2Fma, d.rows, grain_rows(d),
        [&](int64_t begin, int64_t end) {
          forward_rows_avx2<T>(xp, fp, op, begin, end, d.channels, d.num_freqs, d.include_input,
                               f_abs_max);
        },
        [&](int64_t begin, int64_t end) {
          forward_rows_baseline<T>(xp, fp, op, begin, end, d.channels, d.num_freqs,
                                   d.include_input, f_abs_max);
        });
  }
}

template <typename T>
void backward_typed(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& freqs,
                    at::Tensor& grad_x, const FourierDims& d) {
  const T* gp = grad_out.const_data_ptr<T>();
  const T* op = out.const_data_ptr<T>();
  const float* fp = freqs.const_data_ptr<float>();
  T* gx = grad_x.mutable_data_ptr<T>();
  if constexpr (std::is_same_v<T, double>) {
    at::parallel_for(0, d.rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      backward_rows_f64(gp, op, fp, gx, begin, end, d.channels, d.num_freqs, d.include_input);
    });
  } else {
    cpu::parallel_for_isa(
        cpu::Isa::kAvx2Fma, d.rows, grain_rows(d),
        [&](int64_t begin, int64_t end) {
          backward_rows_avx2<T>(gp, op, fp, gx, begin, end, d.channels, d.num_freqs,
                                d.include_input);
        },
        [&](int64_t begin, int64_t end) {
          backward_rows_baseline<T>(gp, op, fp, gx, begin, end, d.channels, d.num_freqs,
                                    d.include_input);
        });
  }
}

at::Tensor fourier_embed_cpu(const at::Tensor& x, const at::Tensor& freqs, bool include_input) {
  const FourierDims d = check_fourier_forward(x, freqs, include_input);
  TORCH_CHECK(x.device().is_cpu(), "inrflow::fourier_embed: the CPU kernel got a tensor on ",
              x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor fc = freqs.contiguous();
  at::Tensor out = empty_fourier_output(x, d);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fourier_embed_cpu",
                                  [&] { forward_typed<scalar_t>(xc, fc, out, d); });
  return out;
}

at::Tensor fourier_embed_backward_cpu(const at::Tensor& grad_out, const at::Tensor& out,
                                      const at::Tensor& freqs, bool include_input) {
  const FourierDims d = check_fourier_backward(grad_out, out, freqs, include_input);
  TORCH_CHECK(out.device().is_cpu(),
              "inrflow::fourier_embed_backward: the CPU kernel got a tensor on ", out.device());
  const at::Tensor gc = grad_out.contiguous();
  const at::Tensor oc = out.contiguous();
  const at::Tensor fc = freqs.contiguous();
  at::Tensor grad_x = empty_fourier_grad(out, d);
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "fourier_embed_backward_cpu",
                                  [&] { backward_typed<scalar_t>(gc, oc, fc, grad_x, d); });
  return grad_x;
}

}  // namespace
}  // namespace inrflow

TORCH_LIBRARY_IMPL(inrflow, CPU, m) {
  m.impl("fourier_embed", &inrflow::fourier_embed_cpu);
  m.impl("fourier_embed_backward", &inrflow::fourier_embed_backward_cpu);
}
