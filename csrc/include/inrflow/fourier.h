// Fused Fourier embedding: the per-element math shared by the CPU kernel (g++), the CUDA kernel
// (nvcc) and the emulated CUDA test build (g++ + tests/simt/prelude.h), plus the C ABI of the
// CUDA launchers. Torch-free.
//
// Layout of one output row for an input row x[0..C) and frequencies f[0..F):
//   [ x (only if include_input) | sin(x_c * f_k) at c*F + k | cos(x_c * f_k) at c*F + k ]
//
// Accuracy of the fp32 path: the product x*f is formed exactly (hi + lo), reduced by pi/2 with a
// four-part Cody-Waite constant (exact for |x*f| <= kFastRange) and evaluated with minimax
// polynomials on [-0.8, 0.8]. Measured error against fp64 sin/cos of the exact product: below
// 2e-7 absolute for |x*f| <= kFastRange. Larger or non-finite arguments take a double-precision
// path (sincos_mul_slow). Nothing here calls libm on the fast path, so g++ can vectorise loops
// over it; do not compile this with -ffast-math (the rounding trick in round_to_int relies on
// IEEE addition).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "inrflow/common.h"

namespace inrflow {
namespace fourier {

// |x*f| up to which the fast path is exact in its reduction (quotient < 2^16, see below).
constexpr float kFastRange = 65536.0f;

// pi/2 = kPio2A + kPio2B + kPio2C + kPio2D (+ 5e-17). A, B and C have at most 8 significant bits,
// so q * A, q * B and q * C are exact for integer |q| < 2^16.
constexpr float kPio2A = 1.5703125f;                  // 0x1.92p+0
constexpr float kPio2B = 4.825592041015625e-4f;       // 0x1.fap-12
constexpr float kPio2C = 1.2665987014770508e-6f;      // 0x1.54p-20
constexpr float kPio2D = 9.92093629470503e-10f;       // 0x1.10b462p-30
constexpr float kTwoOverPi = 0.636619772367581343f;

// Minimax (relative error) fits on [-0.8, 0.8], computed for this project with Lawson's
// algorithm: sin(r) ~ r + r^3 (S1 + r^2 (S2 + r^2 S3)), cos(r) ~ 1 - r^2/2 + r^4 (C1 + ...).
constexpr float kSin1 = -0.16666653752326965f;
constexpr float kSin2 = 0.008332070894539356f;
constexpr float kSin3 = -0.0001950306905200705f;
constexpr float kCos1 = 0.04166664555668831f;
constexpr float kCos2 = -0.0013887251261621714f;
constexpr float kCos3 = 2.442492223053705e-05f;

// Nearest integer of |v| < 2^22 as a float, without libm (rintf is not vectorisable on plain
// SSE2): adding 1.5 * 2^23 pushes the fraction bits out of the significand.
INRFLOW_HD float round_to_int(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// hi + lo == a * b exactly, using a fused multiply-add (CUDA, or host code built for FMA).
INRFLOW_HD float two_prod_fma(float a, float b, float& lo) {
  const float hi = a * b;
  lo = fmaf(a, b, -hi);
  return hi;
}

// hi + lo == a * b exactly without FMA (Dekker's split into 12-bit halves). Valid while 4097 * a
// and 4097 * b cannot overflow; the CPU kernel sends operands above 1e30 to the slow path.
INRFLOW_HD float two_prod_split(float a, float b, float& lo) {
  constexpr float kSplit = 4097.0f;  // 2^12 + 1
  const float hi = a * b;
  const float ta = kSplit * a;
  const float a_hi = ta - (ta - a);
  const float a_lo = a - a_hi;
  const float tb = kSplit * b;
  const float b_hi = tb - (tb - b);
  const float b_lo = b - b_hi;
  lo = ((a_hi * b_hi - hi) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo;
  return hi;
}

// a * b + c, with one rounding where an FMA is available (CUDA; host code built for FMA).
template <bool kFma>
INRFLOW_HD float madd(float a, float b, float c) {
  if constexpr (kFma) {
    return fmaf(a, b, c);
  } else {
    return a * b + c;
  }
}

// v with its sign bit flipped where `sign_bit` is 0x80000000 (bit operations vectorise; a
// multiplication by +-1 would need an int-to-float conversion).
INRFLOW_HD float flip_sign(float v, uint32_t sign_bit) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(__float_as_uint(v) ^ sign_bit);
#else
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits ^= sign_bit;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
#endif
}

// sin and cos of (hi + lo), |hi| <= kFastRange, |lo| <= ulp(hi). Branch-free. kFma only changes
// the rounding of the polynomial steps (the reduction steps are exact either way).
template <bool kFma>
INRFLOW_HD void sincos_reduced(float hi, float lo, float& sin_out, float& cos_out) {
  const float q = round_to_int(hi * kTwoOverPi);
  // Each step is exact (see the constants); the remainder lands in about [-0.79, 0.79].
  float r = madd<kFma>(-q, kPio2A, hi);
  r = madd<kFma>(-q, kPio2B, r);
  r = madd<kFma>(-q, kPio2C, r);
  r = madd<kFma>(-q, kPio2D, r);
  r = r + lo;
  const float r2 = r * r;
  float ps = madd<kFma>(kSin3, r2, kSin2);
  ps = madd<kFma>(ps, r2, kSin1);
  const float s = madd<kFma>(r * r2, ps, r);
  float pc = madd<kFma>(kCos3, r2, kCos2);
  pc = madd<kFma>(pc, r2, kCos1);
  const float c = madd<kFma>(r2 * r2, pc, madd<kFma>(-0.5f, r2, 1.0f));
  // Quadrant q mod 4: (s, c), (c, -s), (-s, -c), (-c, s).
  const uint32_t qu = static_cast<uint32_t>(static_cast<int32_t>(q));
  const bool odd = (qu & 1u) != 0;
  sin_out = flip_sign(odd ? c : s, (qu & 2u) << 30);
  cos_out = flip_sign(odd ? s : c, ((qu + 1u) & 2u) << 30);
}

// Fallback for large or non-finite arguments: the fp32 product is exact in double.
INRFLOW_HD void sincos_mul_slow(float x, float f, float& sin_out, float& cos_out) {
  const double a = static_cast<double>(x) * static_cast<double>(f);
  sin_out = static_cast<float>(sin(a));
  cos_out = static_cast<float>(cos(a));
}

// sin(x*f), cos(x*f) for one element (CUDA threads and scalar host code).
INRFLOW_HD void sincos_mul(float x, float f, float& sin_out, float& cos_out) {
  float lo;
  const float hi = two_prod_fma(x, f, lo);
  if (fabsf(hi) <= kFastRange) {
    sincos_reduced<true>(hi, lo, sin_out, cos_out);
  } else {  // also NaN and inf
    sincos_mul_slow(x, f, sin_out, cos_out);
  }
}

// fp64 inputs (gradcheck) are computed in fp64 throughout.
INRFLOW_HD void sincos_mul(double x, float f, double& sin_out, double& cos_out) {
  const double a = x * static_cast<double>(f);
  sin_out = sin(a);
  cos_out = cos(a);
}

// Contribution of one (c, k) pair to d loss / d x_c, given the forward outputs s = sin(x_c f_k)
// and c = cos(x_c f_k): d sin / dx = f cos, d cos / dx = -f sin. No transcendental math.
template <typename Acc>
INRFLOW_HD Acc grad_term(Acc grad_sin, Acc grad_cos, Acc s, Acc c, Acc f) {
  return f * (grad_sin * c - grad_cos * s);
}

// Width of one output row: C * 2F (+ C).
INRFLOW_HD int64_t output_width(int64_t channels, int64_t num_freqs, bool include_input) {
  return channels * 2 * num_freqs + (include_input ? channels : 0);
}

// Unsigned 32-bit division by a runtime constant d in [1, 2^31) through a multiply-high
// (Granlund-Montgomery): n / d == (mulhi(n, m) + n) >> s with s = ceil(log2 d) and
// m = ceil(2^(32+s) / d) - 2^32, for every n < 2^32. Replaces the slow integer division in the
// CUDA kernels' index math.
struct DivMod32 {
  uint32_t divisor;
  uint32_t multiplier;
  uint32_t shift;

  INRFLOW_HD static DivMod32 make(uint32_t d) {
    uint32_t s = 0;
    while ((uint64_t{1} << s) < d) ++s;
    const uint64_t scaled = ((uint64_t{1} << (32 + s)) + d - 1) / d;
    return DivMod32{d, static_cast<uint32_t>(scaled - (uint64_t{1} << 32)), s};
  }

  INRFLOW_HD uint32_t div(uint32_t n) const {
    const uint64_t high = (static_cast<uint64_t>(n) * multiplier) >> 32;
    return static_cast<uint32_t>((high + n) >> shift);
  }
};

}  // namespace fourier
}  // namespace inrflow

// C ABI of the CUDA launchers (csrc/kernels/fourier.cu). Only declared where a cudaStream_t
// exists: nvcc, the emulated build (its prelude defines the runtime types), and the host-side
// CUDA registrations (WITH_CUDA).
#if defined(__CUDACC__) || defined(INRFLOW_SIMT_EMULATION) || defined(WITH_CUDA)
#if !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_runtime_api.h>
#endif

extern "C" {

// out[rows, W] = embedding of x[rows, channels] (both contiguous, dtype `dtype`), W =
// channels * 2 * num_freqs (+ channels). freqs: float32 [num_freqs]. Returns a cudaError_t value.
int32_t inrflow_fourier_embed_forward(int32_t dtype, const void* x, const float* freqs, void* out,
                                      int64_t rows, int64_t channels, int64_t num_freqs,
                                      int32_t include_input, cudaStream_t stream);

// grad_x[rows, channels] from grad_out[rows, W] and the forward output out[rows, W] (contiguous,
// dtype `dtype`). Reduces over the frequencies in fp32 (fp64 for Float64).
int32_t inrflow_fourier_embed_backward(int32_t dtype, const void* grad_out, const void* out,
                                       const float* freqs, void* grad_x, int64_t rows,
                                       int64_t channels, int64_t num_freqs, int32_t include_input,
                                       cudaStream_t stream);

}  // extern "C"
#endif
