// Grouped local cross-attention on the CPU: the at::parallel_for kernels and their registration
// (the schemas are in csrc/ops.cpp, the argument checks in csrc/checks.cpp).
//
// Work is cut as in the CUDA kernels (inrflow/grouped_attention.h) into splits of at most
// kMaxSplit keys of one group, so Zipf-sized groups parallelise like uniform ones. With one kv
// head (the folded MQA shape) a task is a split with every query head reading it; with Hkv > 1 a
// task is a split over all kv heads, so that it walks the split's key and value rows in address
// order (see forward_rows). Groups with several splits write (m, l, acc) partials (forward) or dq
// partials (backward) that a second parallel pass merges with the log-sum-exp merge math shared
// with the CUDA kernels. A task's work is four small matrix products over its key and value
// blocks (see "Inner loops"), written once against an ISA policy and compiled twice on x86-64:
// plain loops (baseline) and target("avx2,fma,f16c") with fp32 intrinsics, picked at run time.
// At large sizes the kernel is memory-bound, and three memory-side measures matter as much as the
// arithmetic: large outputs come from the bounded output cache (output_cache.h), so dk and dv
// reuse mapped pages instead of faulting in gigabytes of fresh ones on every call; outputs are
// advised to huge pages; and the backward streams its dk/dv rows past the cache.
// Accumulation: fp32 for fp32/fp16/bf16 (half blocks are widened once per task), fp64 for fp64.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../checks.h"
#include "dispatch.h"
#include "output_cache.h"
#include "inrflow/grouped_attention.h"

// Forced inlining, so that the AVX2 clones below compile these templates for their own ISA; and
// whether x86-64 code (intrinsics, target clones) may be compiled here at all.
#define INRFLOW_ATTN_INLINE INRFLOW_ALWAYS_INLINE
#define INRFLOW_ATTN_X86 INRFLOW_X86_DISPATCH

namespace inrflow {
namespace {

constexpr const char* kFwd = "inrflow::grouped_cross_attention_forward";
constexpr const char* kBwd = "inrflow::grouped_cross_attention_backward";

// ------------------------------------------------------------------------------------------------
// Split plan

struct CpuPlan {
  int64_t split = gattn::kMaxSplit;
  std::vector<int64_t> offsets;      // [G+1], int64
  std::vector<int64_t> split_off;    // [G+1]
  std::vector<int64_t> slot_off;     // [G+1]
  std::vector<int64_t> split_group;  // [splits]
  int64_t splits() const { return split_off.back(); }
  int64_t slots() const { return slot_off.back(); }
};

// Offsets are read on the host here, so their values are checked (never read out of bounds).
CpuPlan make_plan(const char* op, const at::Tensor& offsets, const AttentionDims& d) {
  CpuPlan p;
  const at::Tensor off = offsets.contiguous();
  p.offsets.resize(d.groups + 1);
  if (off.scalar_type() == at::kInt) {
    const int32_t* o = off.const_data_ptr<int32_t>();
    for (int64_t g = 0; g <= d.groups; ++g) p.offsets[g] = o[g];
  } else {
    const int64_t* o = off.const_data_ptr<int64_t>();
    std::copy(o, o + d.groups + 1, p.offsets.begin());
  }
  TORCH_CHECK(p.offsets[0] == 0, op, ": offsets[0] must be 0, got ", p.offsets[0]);
  for (int64_t g = 0; g < d.groups; ++g) {
    TORCH_CHECK(p.offsets[g + 1] >= p.offsets[g], op, ": offsets must be non-decreasing; offsets[",
                g, "] = ", p.offsets[g], " > offsets[", g + 1, "] = ", p.offsets[g + 1]);
  }
  TORCH_CHECK(p.offsets[d.groups] == d.tokens, op, ": offsets[-1] must equal T = ", d.tokens,
              ", got ", p.offsets[d.groups]);
  p.split_off.assign(d.groups + 1, 0);
  p.slot_off.assign(d.groups + 1, 0);
  for (int64_t g = 0; g < d.groups; ++g) {
    const int64_t n = gattn::num_splits(p.offsets[g + 1] - p.offsets[g], p.split);
    p.split_off[g + 1] = p.split_off[g] + n;
    p.slot_off[g + 1] = p.slot_off[g] + (n >= 2 ? n : 0);
  }
  p.split_group.resize(p.splits());
  for (int64_t g = 0; g < d.groups; ++g) {
    for (int64_t s = p.split_off[g]; s < p.split_off[g + 1]; ++s) p.split_group[s] = g;
  }
  return p;
}

// ------------------------------------------------------------------------------------------------
// Inner loops
//
// One task is a split of `len` <= split keys of one kv head with the `rep` query heads reading it.
// Its work is four small matrix products over the split's key block K [len, D] and value block
// V [len, Dv] (rows `ld` elements apart in k / v, so a block is read in place, with no copy):
//   scores  S = Q K^T                [rep, len]  (dot products: `dots`)
//   output  O = P V                  [rep, Dv]   (weighted row sums: `combine`)
//   backward dP = dO V^T, dV_j = sum_r P[r, j] dO_r, dK_j = sum_r dS[r, j] Q_r, dQ = dS K.
// S/P/dS live in a [rep, split] scratch (head-major, so every softmax row is contiguous). With
// Hkv > 1 the tasks cover all heads and go row by row instead (forward_rows, backward_rows:
// `dots_rows` for the scores of one key row, `axpy` into per-head accumulators; the backward
// takes P straight from the saved lse, so it needs one pass over the rows). The
// kernels are written once against an ISA policy: ScalarOps (plain loops, any Acc type) or, for
// fp32 on x86-64 with AVX2 + FMA, Avx2Ops (8-lane intrinsics, a polynomial exp, blocks of 4 dot
// products reduced together and 64-wide register accumulators). Half/bfloat16 blocks are widened
// to fp32 once per task.

template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Rows [count, n] of src (ld apart) as Acc: src itself for fp32/fp64, else widened into buf
// (then ld = n).
template <typename T, typename A>
INRFLOW_ATTN_INLINE const A* as_acc(const T* src, int64_t count, int64_t ld, int64_t n, A* buf,
                                    int64_t& ld_out) {
  if constexpr (std::is_same_v<T, A>) {
    ld_out = ld;
    return src;
  } else {
    for (int64_t i = 0; i < count; ++i) {
      for (int64_t e = 0; e < n; ++e) buf[i * n + e] = static_cast<A>(src[i * ld + e]);
    }
    ld_out = n;
    return buf;
  }
}

template <typename T, typename A>
INRFLOW_ATTN_INLINE void store_row(T* dst, const A* src, A factor, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i] * factor);
}

// Plain loops; the dot product keeps 16 independent accumulators (a fixed summation order that
// g++ may vectorise).
template <typename A>
struct ScalarOps {
  static INRFLOW_ATTN_INLINE A dot(const A* __restrict a, const A* __restrict b, int64_t n) {
    constexpr int kLanes = 16;
    A s[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int u = 0; u < kLanes; ++u) s[u] += a[i + u] * b[i + u];
    }
    A tail = A(0);
    for (; i < n; ++i) tail += a[i] * b[i];
    for (int w = kLanes / 2; w > 0; w /= 2) {
      for (int u = 0; u < w; ++u) s[u] += s[u + w];
    }
    return s[0] + tail;
  }

  // out[i * ostride] = rows_i . b for `count` rows `ld` apart.
  static INRFLOW_ATTN_INLINE void dots(const A* rows, int64_t ld, int64_t count, const A* b,
                                       int64_t n, A* out, int64_t ostride) {
    for (int64_t i = 0; i < count; ++i) out[i * ostride] = dot(rows + i * ld, b, n);
  }

  // out[i * ostride] = a_i . b_i for `count` pairs of rows, a_i lda and b_i ldb apart.
  static INRFLOW_ATTN_INLINE void dots_rows(const A* a, int64_t lda, const A* b, int64_t ldb,
                                            int64_t count, int64_t n, A* out, int64_t ostride) {
    for (int64_t i = 0; i < count; ++i) out[i * ostride] = dot(a + i * lda, b + i * ldb, n);
  }

  // y[0..n) += alpha x.
  static INRFLOW_ATTN_INLINE void axpy(A* __restrict y, A alpha, const A* __restrict x,
                                       int64_t n) {
    for (int64_t e = 0; e < n; ++e) y[e] += alpha * x[e];
  }

  // y[0..n) = factor * sum_i w[i] x_i for `count` rows x_i `ld` apart.
  static INRFLOW_ATTN_INLINE void combine(A* __restrict y, const A* w, const A* x, int64_t ld,
                                          int64_t count, int64_t n, A factor) {
    std::fill(y, y + n, A(0));
    for (int64_t i = 0; i < count; ++i) {
      const A wi = w[i];
      const A* xi = x + i * ld;
      for (int64_t e = 0; e < n; ++e) y[e] += wi * xi[e];
    }
    for (int64_t e = 0; e < n; ++e) y[e] *= factor;
  }

  // combine() for rows written once and not read again soon (dk, dv): the same here.
  static INRFLOW_ATTN_INLINE void combine_stream(A* __restrict y, const A* w, const A* x,
                                                 int64_t ld, int64_t count, int64_t n, A factor) {
    combine(y, w, x, ld, count, n, factor);
  }
  static INRFLOW_ATTN_INLINE void stream_fence() {}

  // row *= scale; returns the largest entry.
  static INRFLOW_ATTN_INLINE A scale_max(A* row, int64_t n, A scale) {
    A m = -std::numeric_limits<A>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      row[j] *= scale;
      m = std::max(m, row[j]);
    }
    return m;
  }

  // row = exp(row - shift); returns the sum.
  static INRFLOW_ATTN_INLINE A exp_shift(A* row, int64_t n, A shift) {
    A l = A(0);
    for (int64_t j = 0; j < n; ++j) {
      row[j] = std::exp(row[j] - shift);
      l += row[j];
    }
    return l;
  }

  // dp = p * (dp - delta): the softmax backward.
  static INRFLOW_ATTN_INLINE void softmax_grad(const A* p, A* dp, int64_t n, A delta) {
    for (int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - delta);
  }

  // Across n query heads of one key: s = exp(scale s - lse), then dp = s (dp - delta).
  static INRFLOW_ATTN_INLINE void softmax_grad_heads(A* s, A* dp, const A* lse, const A* delta,
                                                     A scale, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      s[i] = std::exp(s[i] * scale - lse[i]);
      dp[i] = s[i] * (dp[i] - delta[i]);
    }
  }
};

#if INRFLOW_ATTN_X86
// fp32 with AVX2 + FMA. Not always_inline: they inline into the target("avx2,...") entry points
// below, whose target matches (an always_inline call from the ISA-neutral templates would not
// compile).
#define INRFLOW_AVX2 __attribute__((target("avx2,fma,f16c"))) inline
struct Avx2Ops {
  using A = float;

  // Lanes [0, rem) set.
  static INRFLOW_AVX2 __m256i tail_mask(int64_t rem) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }

  static INRFLOW_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  static INRFLOW_AVX2 float dot(const float* a, const float* b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps();
    __m256 s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    }
    if (i < n) {
      const __m256i m = tail_mask(n - i);
      s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return hsum(_mm256_add_ps(s0, s1));
  }

  // Four dot products a_i . b, b loaded once per 8 lanes; the four sums reduced together.
  static INRFLOW_AVX2 __m128 dot4(const float* a0, const float* a1, const float* a2,
                                  const float* a3, const float* b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 bv = _mm256_loadu_ps(b + i);
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a0 + i), bv, s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a1 + i), bv, s1);
      s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a2 + i), bv, s2);
      s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a3 + i), bv, s3);
    }
    if (i < n) {
      const __m256i m = tail_mask(n - i);
      const __m256 bv = _mm256_maskload_ps(b + i, m);
      s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a0 + i, m), bv, s0);
      s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a1 + i, m), bv, s1);
      s2 = _mm256_fmadd_ps(_mm256_maskload_ps(a2 + i, m), bv, s2);
      s3 = _mm256_fmadd_ps(_mm256_maskload_ps(a3 + i, m), bv, s3);
    }
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  }

  static INRFLOW_AVX2 void dots(const float* rows, int64_t ld, int64_t count, const float* b,
                                int64_t n, float* out, int64_t ostride) {
    int64_t i = 0;
    for (; i + 4 <= count; i += 4) {
      const float* r = rows + i * ld;
      alignas(16) float s[4];
      _mm_store_ps(s, dot4(r, r + ld, r + 2 * ld, r + 3 * ld, b, n));
      for (int u = 0; u < 4; ++u) out[(i + u) * ostride] = s[u];
    }
    for (; i < count; ++i) out[i * ostride] = dot(rows + i * ld, b, n);
  }

  // Four dot products a_i . b_i; the four sums reduced together.
  static INRFLOW_AVX2 __m128 dot4_pairs(const float* a, int64_t lda, const float* b, int64_t ldb,
                                        int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + lda + i), _mm256_loadu_ps(b + ldb + i), s1);
      s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + 2 * lda + i), _mm256_loadu_ps(b + 2 * ldb + i), s2);
      s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + 3 * lda + i), _mm256_loadu_ps(b + 3 * ldb + i), s3);
    }
    if (i < n) {
      const __m256i m = tail_mask(n - i);
      s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s0);
      s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + lda + i, m),
                           _mm256_maskload_ps(b + ldb + i, m), s1);
      s2 = _mm256_fmadd_ps(_mm256_maskload_ps(a + 2 * lda + i, m),
                           _mm256_maskload_ps(b + 2 * ldb + i, m), s2);
      s3 = _mm256_fmadd_ps(_mm256_maskload_ps(a + 3 * lda + i, m),
                           _mm256_maskload_ps(b + 3 * ldb + i, m), s3);
    }
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  }

  static INRFLOW_AVX2 void dots_rows(const float* a, int64_t lda, const float* b, int64_t ldb,
                                     int64_t count, int64_t n, float* out, int64_t ostride) {
    int64_t i = 0;
    for (; i + 4 <= count; i += 4) {
      alignas(16) float s[4];
      _mm_store_ps(s, dot4_pairs(a + i * lda, lda, b + i * ldb, ldb, n));
      for (int u = 0; u < 4; ++u) out[(i + u) * ostride] = s[u];
    }
    for (; i < count; ++i) out[i * ostride] = dot(a + i * lda, b + i * ldb, n);
  }

  static INRFLOW_AVX2 void axpy(float* y, float alpha, const float* x, int64_t n) {
    const __m256 w = _mm256_set1_ps(alpha);
    int64_t e = 0;
    for (; e + 8 <= n; e += 8) {
      _mm256_storeu_ps(y + e, _mm256_fmadd_ps(w, _mm256_loadu_ps(x + e), _mm256_loadu_ps(y + e)));
    }
    if (e < n) {
      const __m256i m = tail_mask(n - e);
      _mm256_maskstore_ps(
          y + e, m, _mm256_fmadd_ps(w, _mm256_maskload_ps(x + e, m), _mm256_maskload_ps(y + e, m)));
    }
  }

  static INRFLOW_AVX2 void combine(float* y, const float* w, const float* x, int64_t ld,
                                   int64_t count, int64_t n, float factor) {
    const __m256 f = _mm256_set1_ps(factor);
    int64_t e = 0;
    for (; e + 64 <= n; e += 64) {  // 8 accumulators: the whole 64-wide block in registers
      __m256 acc[8];
      for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
      for (int64_t i = 0; i < count; ++i) {
        const __m256 wi = _mm256_set1_ps(w[i]);
        const float* xi = x + i * ld + e;
        for (int u = 0; u < 8; ++u) {
          acc[u] = _mm256_fmadd_ps(wi, _mm256_loadu_ps(xi + 8 * u), acc[u]);
        }
      }
      for (int u = 0; u < 8; ++u) _mm256_storeu_ps(y + e + 8 * u, _mm256_mul_ps(acc[u], f));
    }
    for (; e + 8 <= n; e += 8) {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 2 <= count; i += 2) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[i]), _mm256_loadu_ps(x + i * ld + e), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(w[i + 1]), _mm256_loadu_ps(x + (i + 1) * ld + e), a1);
      }
      if (i < count) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[i]), _mm256_loadu_ps(x + i * ld + e), a0);
      }
      _mm256_storeu_ps(y + e, _mm256_mul_ps(_mm256_add_ps(a0, a1), f));
    }
    if (e < n) {
      const __m256i m = tail_mask(n - e);
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t i = 0; i < count; ++i) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[i]), _mm256_maskload_ps(x + i * ld + e, m), a0);
      }
      _mm256_maskstore_ps(y + e, m, _mm256_mul_ps(a0, f));
    }
  }

  // combine() with non-temporal stores when y is 32-byte aligned and n a multiple of 8: the dk/dv
  // rows are written once and not read by this kernel, so they skip the read-for-ownership of
  // their cache lines (a third of the backward's DRAM traffic). stream_fence() orders them before
  // the task returns.
  static INRFLOW_AVX2 void combine_stream(float* y, const float* w, const float* x, int64_t ld,
                                          int64_t count, int64_t n, float factor) {
    if ((reinterpret_cast<uintptr_t>(y) & 31) != 0 || n % 8 != 0) {
      return combine(y, w, x, ld, count, n, factor);
    }
    const __m256 f = _mm256_set1_ps(factor);
    int64_t e = 0;
    for (; e + 32 <= n; e += 32) {
      __m256 acc[4];
      for (int u = 0; u < 4; ++u) acc[u] = _mm256_setzero_ps();
      for (int64_t i = 0; i < count; ++i) {
        const __m256 wi = _mm256_set1_ps(w[i]);
        const float* xi = x + i * ld + e;
        for (int u = 0; u < 4; ++u) {
          acc[u] = _mm256_fmadd_ps(wi, _mm256_loadu_ps(xi + 8 * u), acc[u]);
        }
      }
      for (int u = 0; u < 4; ++u) _mm256_stream_ps(y + e + 8 * u, _mm256_mul_ps(acc[u], f));
    }
    for (; e < n; e += 8) {
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t i = 0; i < count; ++i) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(w[i]), _mm256_loadu_ps(x + i * ld + e), a0);
      }
      _mm256_stream_ps(y + e, _mm256_mul_ps(a0, f));
    }
  }
  static INRFLOW_AVX2 void stream_fence() { _mm_sfence(); }

  // exp on 8 lanes: Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial,
  // 2^n through the exponent bits), a few ulp from std::exp. Below ln(FLT_MIN) it gives 0 and
  // NaN stays NaN.
  static INRFLOW_AVX2 __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3365447505531f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }

  static INRFLOW_AVX2 float scale_max(float* row, int64_t n, float scale) {
    const __m256 s = _mm256_set1_ps(scale);
    const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 m = ninf;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(row + j), s);
      _mm256_storeu_ps(row + j, x);
      m = _mm256_max_ps(m, x);
    }
    if (j < n) {
      const __m256i mask = tail_mask(n - j);
      const __m256 x = _mm256_mul_ps(_mm256_maskload_ps(row + j, mask), s);
      _mm256_maskstore_ps(row + j, mask, x);
      m = _mm256_max_ps(m, _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(mask)));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
  }

  static INRFLOW_AVX2 float exp_shift(float* row, int64_t n, float shift) {
    const __m256 sh = _mm256_set1_ps(shift);
    __m256 l = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), sh));
      _mm256_storeu_ps(row + j, p);
      l = _mm256_add_ps(l, p);
    }
    if (j < n) {
      const __m256i mask = tail_mask(n - j);
      const __m256 p = exp8(_mm256_sub_ps(_mm256_maskload_ps(row + j, mask), sh));
      _mm256_maskstore_ps(row + j, mask, p);
      l = _mm256_add_ps(l, _mm256_and_ps(p, _mm256_castsi256_ps(mask)));
    }
    return hsum(l);
  }

  static INRFLOW_AVX2 void softmax_grad(const float* p, float* dp, int64_t n, float delta) {
    const __m256 d = _mm256_set1_ps(delta);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      _mm256_storeu_ps(dp + j, _mm256_mul_ps(_mm256_loadu_ps(p + j),
                                             _mm256_sub_ps(_mm256_loadu_ps(dp + j), d)));
    }
    for (; j < n; ++j) dp[j] = p[j] * (dp[j] - delta);
  }

  static INRFLOW_AVX2 void softmax_grad_heads(float* s, float* dp, const float* lse,
                                              const float* delta, float scale, int64_t n) {
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t i = 0; i < n; i += 8) {
      const __m256i m = tail_mask(n - i);
      const __m256 x = _mm256_sub_ps(_mm256_mul_ps(_mm256_maskload_ps(s + i, m), sc),
                                     _mm256_maskload_ps(lse + i, m));
      const __m256 p = exp8(x);
      _mm256_maskstore_ps(s + i, m, p);
      const __m256 g = _mm256_sub_ps(_mm256_maskload_ps(dp + i, m), _mm256_maskload_ps(delta + i, m));
      _mm256_maskstore_ps(dp + i, m, _mm256_mul_ps(p, g));
    }
  }
};
#undef INRFLOW_AVX2
#endif

template <typename A>
INRFLOW_ATTN_INLINE void axpy(A* __restrict y, A alpha, const A* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <typename T>
struct FwdArgs {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  Acc<T>* lse;
  Acc<T>* part_ml;   // [slots, Hq, 2]
  Acc<T>* part_acc;  // [slots, Hq, Dv]
  const CpuPlan* plan;
  AttentionDims d;
  Acc<T> scale;
};

template <typename T>
struct BwdArgs {
  const T* grad_out;
  const T* q;
  const T* k;
  const T* v;
  const T* out;
  const Acc<T>* lse;
  T* dq;
  T* dk;
  T* dv;
  Acc<T>* part_dq;  // [slots, Hq, D]
  const CpuPlan* plan;
  AttentionDims d;
  Acc<T> scale;
};

struct SplitRange {
  int64_t group, index, count, slot, begin, end, head;
};

INRFLOW_ATTN_INLINE SplitRange locate(const CpuPlan& p, int64_t hkv, int64_t item) {
  SplitRange s;
  const int64_t c = item / hkv;
  s.head = item - c * hkv;
  s.group = p.split_group[c];
  s.index = c - p.split_off[s.group];
  s.count = p.split_off[s.group + 1] - p.split_off[s.group];
  s.slot = p.slot_off[s.group] + s.index;
  s.begin = p.offsets[s.group] + s.index * p.split;
  s.end = std::min(p.offsets[s.group + 1], s.begin + p.split);
  return s;
}

// S[r * split + j] = q_r . k_j for the rep query rows (D apart) and len key rows (ldk apart):
// 4 keys per pass against one query row, or 4 query rows per pass against one key row.
template <typename Ops, typename A>
INRFLOW_ATTN_INLINE void scores(const A* q, int64_t rep, const A* k, int64_t ldk, int64_t len,
                                int64_t dim, A* s, int64_t split) {
  if (rep < 4) {
    for (int64_t r = 0; r < rep; ++r) Ops::dots(k, ldk, len, q + r * dim, dim, s + r * split, 1);
  } else {
    for (int64_t j = 0; j < len; ++j) Ops::dots(q, dim, rep, k + j * ldk, dim, s + j, split);
  }
}

// y = factor * sum_i w[i] x_i written to dst of type T (through buf when T is not Acc);
// kStream: with Ops::combine_stream (rows the kernel will not read again).
template <typename Ops, bool kStream = false, typename T, typename A>
INRFLOW_ATTN_INLINE void combine_to(T* dst, const A* w, const A* x, int64_t ld, int64_t count,
                                    int64_t n, A factor, A* buf) {
  if constexpr (std::is_same_v<T, A> && kStream) {
    Ops::combine_stream(dst, w, x, ld, count, n, factor);
  } else if constexpr (std::is_same_v<T, A>) {
    Ops::combine(dst, w, x, ld, count, n, factor);
  } else {
    Ops::combine(buf, w, x, ld, count, n, factor);
    store_row(dst, buf, A(1), n);
  }
}

// Scratch of one parallel chunk (allocated once per chunk, reused by all its tasks).
template <typename A>
struct Scratch {
  std::vector<A> mem;
  A* take(int64_t n) {
    A* p = mem.data() + used;
    used += n;
    return p;
  }
  int64_t used = 0;
};

template <typename Ops, typename T>
INRFLOW_ATTN_INLINE void forward_items(const FwdArgs<T>& a, int64_t begin, int64_t end) {
  using A = Acc<T>;
  constexpr bool kWiden = !std::is_same_v<T, A>;
  const AttentionDims& d = a.d;
  const int64_t rep = d.hq / d.hkv;
  const int64_t split = a.plan->split;
  Scratch<A> sc;
  sc.mem.resize(rep * split + (kWiden ? rep * d.dim + split * (d.dim + d.dim_v) + d.dim_v : 0));
  A* s = sc.take(rep * split);
  A* qbuf = kWiden ? sc.take(rep * d.dim) : nullptr;
  A* kbuf = kWiden ? sc.take(split * d.dim) : nullptr;
  A* vbuf = kWiden ? sc.take(split * d.dim_v) : nullptr;
  A* obuf = kWiden ? sc.take(d.dim_v) : nullptr;
  const int64_t ldk = d.hkv * d.dim;
  const int64_t ldv = d.hkv * d.dim_v;
  for (int64_t item = begin; item < end; ++item) {
    const SplitRange sp = locate(*a.plan, d.hkv, item);
    const int64_t len = sp.end - sp.begin;
    const int64_t head0 = sp.group * d.hq + sp.head * rep;
    int64_t ld_q = 0, ld_k = 0, ld_v = 0;
    const A* q = as_acc(a.q + head0 * d.dim, rep, d.dim, d.dim, qbuf, ld_q);
    const A* k = as_acc(a.k + (sp.begin * d.hkv + sp.head) * d.dim, len, ldk, d.dim, kbuf, ld_k);
    const A* v =
        as_acc(a.v + (sp.begin * d.hkv + sp.head) * d.dim_v, len, ldv, d.dim_v, vbuf, ld_v);
    scores<Ops>(q, rep, k, ld_k, len, d.dim, s, split);
    for (int64_t r = 0; r < rep; ++r) {
      A* row = s + r * split;
      const A m = Ops::scale_max(row, len, a.scale);
      const A l = Ops::exp_shift(row, len, m);
      if (sp.count == 1) {
        combine_to<Ops>(a.out + (head0 + r) * d.dim_v, row, v, ld_v, len, d.dim_v, A(1) / l,
                        obuf);
        a.lse[head0 + r] = gattn::merged_lse(m, l);
      } else {
        const int64_t slot = sp.slot * d.hq + sp.head * rep + r;
        a.part_ml[2 * slot] = m;
        a.part_ml[2 * slot + 1] = l;
        Ops::combine(a.part_acc + slot * d.dim_v, row, v, ld_v, len, d.dim_v, A(1));
      }
    }
  }
}

template <typename Ops, typename T>
INRFLOW_ATTN_INLINE void backward_items(const BwdArgs<T>& a, int64_t begin, int64_t end) {
  using A = Acc<T>;
  constexpr bool kWiden = !std::is_same_v<T, A>;
  const AttentionDims& d = a.d;
  const int64_t rep = d.hq / d.hkv;
  const int64_t split = a.plan->split;
  const int64_t width = std::max(d.dim, d.dim_v);
  Scratch<A> sc;
  sc.mem.resize(2 * rep * split + 2 * rep + 2 * rep +
                (kWiden ? rep * (d.dim + 2 * d.dim_v) + split * (d.dim + d.dim_v) + width : 0));
  A* p = sc.take(rep * split);
  A* ds = sc.take(rep * split);
  A* col_p = sc.take(rep);
  A* col_ds = sc.take(rep);
  A* delta = sc.take(rep);
  A* lse = sc.take(rep);
  A* qbuf = kWiden ? sc.take(rep * d.dim) : nullptr;
  A* dobuf = kWiden ? sc.take(rep * d.dim_v) : nullptr;
  A* obuf = kWiden ? sc.take(rep * d.dim_v) : nullptr;
  A* kbuf = kWiden ? sc.take(split * d.dim) : nullptr;
  A* vbuf = kWiden ? sc.take(split * d.dim_v) : nullptr;
  A* rowbuf = kWiden ? sc.take(width) : nullptr;
  const int64_t ldk = d.hkv * d.dim;
  const int64_t ldv = d.hkv * d.dim_v;
  for (int64_t item = begin; item < end; ++item) {
    const SplitRange sp = locate(*a.plan, d.hkv, item);
    const int64_t len = sp.end - sp.begin;
    const int64_t head0 = sp.group * d.hq + sp.head * rep;
    const int64_t row0 = sp.begin * d.hkv + sp.head;
    int64_t ld_q = 0, ld_do = 0, ld_o = 0, ld_k = 0, ld_v = 0;
    const A* q = as_acc(a.q + head0 * d.dim, rep, d.dim, d.dim, qbuf, ld_q);
    const A* dout = as_acc(a.grad_out + head0 * d.dim_v, rep, d.dim_v, d.dim_v, dobuf, ld_do);
    const A* o = as_acc(a.out + head0 * d.dim_v, rep, d.dim_v, d.dim_v, obuf, ld_o);
    const A* k = as_acc(a.k + row0 * d.dim, len, ldk, d.dim, kbuf, ld_k);
    const A* v = as_acc(a.v + row0 * d.dim_v, len, ldv, d.dim_v, vbuf, ld_v);
    for (int64_t r = 0; r < rep; ++r) {
      delta[r] = Ops::dot(dout + r * d.dim_v, o + r * d.dim_v, d.dim_v);
      lse[r] = a.lse[head0 + r];
    }
    // p = exp(scale q.k - lse), ds = p (do.v - delta), both [rep, split]
    scores<Ops>(q, rep, k, ld_k, len, d.dim, p, split);
    scores<Ops>(dout, rep, v, ld_v, len, d.dim_v, ds, split);
    for (int64_t r = 0; r < rep; ++r) {
      Ops::scale_max(p + r * split, len, a.scale);
      Ops::exp_shift(p + r * split, len, lse[r]);
      Ops::softmax_grad(p + r * split, ds + r * split, len, delta[r]);
    }
    // dv_j = sum_r p[r, j] do_r, dk_j = scale sum_r ds[r, j] q_r: each key row written once
    for (int64_t j = 0; j < len; ++j) {
      const A* wp = p + j;
      const A* wds = ds + j;
      if (rep > 1) {
        for (int64_t r = 0; r < rep; ++r) {
          col_p[r] = p[r * split + j];
          col_ds[r] = ds[r * split + j];
        }
        wp = col_p;
        wds = col_ds;
      }
      const int64_t row = row0 + j * d.hkv;
      combine_to<Ops, true>(a.dv + row * d.dim_v, wp, dout, d.dim_v, rep, d.dim_v, A(1), rowbuf);
      combine_to<Ops, true>(a.dk + row * d.dim, wds, q, d.dim, rep, d.dim, a.scale, rowbuf);
    }
    // dq_r = scale sum_j ds[r, j] k_j
    for (int64_t r = 0; r < rep; ++r) {
      if (sp.count == 1) {
        combine_to<Ops>(a.dq + (head0 + r) * d.dim, ds + r * split, k, ld_k, len, d.dim, a.scale,
                        rowbuf);
      } else {
        A* dst = a.part_dq + (sp.slot * d.hq + sp.head * rep + r) * d.dim;
        Ops::combine(dst, ds + r * split, k, ld_k, len, d.dim, a.scale);
      }
    }
  }
  Ops::stream_fence();
}

// The same work with one task per split over *all* kv heads, for Hkv > 1. There a key row of one
// head is D elements out of every Hkv * D, so a per-head task reads its block in pieces of D
// elements, each on its own 4 KiB page at 12 heads x 64 (3 KB apart); here every pass walks the
// split's key and value rows in address order, all heads of a row at once, and the backward
// writes each dk/dv row (all heads) as one contiguous stream. Per-query-head accumulators
// ([Hq, Dv] and [Hq, D]) stay in L1. Measured at 1,024 groups x 64 keys, 12 heads x 64 on the
// 2-core VM: forward 33-38 ms against 58 ms per head (best of 20 calls; the backward, which also
// became one pass, 67-76 against 73-81 ms).
template <typename Ops, typename T>
INRFLOW_ATTN_INLINE void forward_rows(const FwdArgs<T>& a, int64_t begin, int64_t end) {
  using A = Acc<T>;
  constexpr bool kWiden = !std::is_same_v<T, A>;
  const AttentionDims& d = a.d;
  const int64_t rep = d.hq / d.hkv;
  const int64_t split = a.plan->split;
  const int64_t ldk = d.hkv * d.dim;
  const int64_t ldv = d.hkv * d.dim_v;
  Scratch<A> sc;
  sc.mem.resize(d.hq * split + d.hq * d.dim_v + 2 * d.hq +
                (kWiden ? d.hq * d.dim + split * (ldk + ldv) : 0));
  A* s = sc.take(d.hq * split);
  A* acc = sc.take(d.hq * d.dim_v);
  A* mrow = sc.take(d.hq);
  A* lrow = sc.take(d.hq);
  A* qbuf = kWiden ? sc.take(d.hq * d.dim) : nullptr;
  A* kbuf = kWiden ? sc.take(split * ldk) : nullptr;
  A* vbuf = kWiden ? sc.take(split * ldv) : nullptr;
  for (int64_t item = begin; item < end; ++item) {
    const SplitRange sp = locate(*a.plan, 1, item);
    const int64_t len = sp.end - sp.begin;
    const int64_t head0 = sp.group * d.hq;
    int64_t ld_q = 0, ld_k = 0, ld_v = 0;
    const A* q = as_acc(a.q + head0 * d.dim, d.hq, d.dim, d.dim, qbuf, ld_q);
    const A* k = as_acc(a.k + sp.begin * ldk, len, ldk, ldk, kbuf, ld_k);
    const A* v = as_acc(a.v + sp.begin * ldv, len, ldv, ldv, vbuf, ld_v);
    // s[i, j] = q_i . k_j,h(i), key rows in order
    for (int64_t j = 0; j < len; ++j) {
      const A* krow = k + j * ld_k;
      if (rep == 1) {
        Ops::dots_rows(q, d.dim, krow, d.dim, d.hkv, d.dim, s + j, split);
      } else {
        for (int64_t h = 0; h < d.hkv; ++h) {
          Ops::dots(q + h * rep * d.dim, d.dim, rep, krow + h * d.dim, d.dim,
                    s + h * rep * split + j, split);
        }
      }
    }
    for (int64_t i = 0; i < d.hq; ++i) {
      A* row = s + i * split;
      mrow[i] = Ops::scale_max(row, len, a.scale);
      lrow[i] = Ops::exp_shift(row, len, mrow[i]);
    }
    // acc_i = sum_j p[i, j] v_j,h(i), value rows in order
    std::fill(acc, acc + d.hq * d.dim_v, A(0));
    for (int64_t j = 0; j < len; ++j) {
      const A* vrow = v + j * ld_v;
      for (int64_t i = 0; i < d.hq; ++i) {
        Ops::axpy(acc + i * d.dim_v, s[i * split + j], vrow + (i / rep) * d.dim_v, d.dim_v);
      }
    }
    for (int64_t i = 0; i < d.hq; ++i) {
      if (sp.count == 1) {
        store_row(a.out + (head0 + i) * d.dim_v, acc + i * d.dim_v, A(1) / lrow[i], d.dim_v);
        a.lse[head0 + i] = gattn::merged_lse(mrow[i], lrow[i]);
      } else {
        const int64_t slot = sp.slot * d.hq + i;
        a.part_ml[2 * slot] = mrow[i];
        a.part_ml[2 * slot + 1] = lrow[i];
        std::copy(acc + i * d.dim_v, acc + (i + 1) * d.dim_v, a.part_acc + slot * d.dim_v);
      }
    }
  }
}

template <typename Ops, typename T>
INRFLOW_ATTN_INLINE void backward_rows(const BwdArgs<T>& a, int64_t begin, int64_t end) {
  using A = Acc<T>;
  constexpr bool kWiden = !std::is_same_v<T, A>;
  const AttentionDims& d = a.d;
  const int64_t rep = d.hq / d.hkv;
  const int64_t ldk = d.hkv * d.dim;
  const int64_t ldv = d.hkv * d.dim_v;
  const int64_t width = std::max(d.dim, d.dim_v);
  Scratch<A> sc;
  sc.mem.resize(d.hq * d.dim + 4 * d.hq +
                (kWiden ? d.hq * (d.dim + 2 * d.dim_v) + ldk + ldv + width : 0));
  A* dq = sc.take(d.hq * d.dim);
  A* delta = sc.take(d.hq);
  A* lse = sc.take(d.hq);
  A* p = sc.take(d.hq);
  A* ds = sc.take(d.hq);
  A* qbuf = kWiden ? sc.take(d.hq * d.dim) : nullptr;
  A* dobuf = kWiden ? sc.take(d.hq * d.dim_v) : nullptr;
  A* obuf = kWiden ? sc.take(d.hq * d.dim_v) : nullptr;
  A* kbuf = kWiden ? sc.take(ldk) : nullptr;
  A* vbuf = kWiden ? sc.take(ldv) : nullptr;
  A* rowbuf = kWiden ? sc.take(width) : nullptr;
  for (int64_t item = begin; item < end; ++item) {
    const SplitRange sp = locate(*a.plan, 1, item);
    const int64_t head0 = sp.group * d.hq;
    int64_t ld_q = 0, ld_do = 0, ld_o = 0, ld_unused = 0;
    const A* q = as_acc(a.q + head0 * d.dim, d.hq, d.dim, d.dim, qbuf, ld_q);
    const A* dout = as_acc(a.grad_out + head0 * d.dim_v, d.hq, d.dim_v, d.dim_v, dobuf, ld_do);
    const A* o = as_acc(a.out + head0 * d.dim_v, d.hq, d.dim_v, d.dim_v, obuf, ld_o);
    for (int64_t i = 0; i < d.hq; ++i) {
      delta[i] = Ops::dot(dout + i * d.dim_v, o + i * d.dim_v, d.dim_v);
      lse[i] = a.lse[head0 + i];
    }
    std::fill(dq, dq + d.hq * d.dim, A(0));
    // One pass over the split's rows: the probabilities come straight from the saved lse.
    for (int64_t row = sp.begin; row < sp.end; ++row) {
      const A* krow = as_acc(a.k + row * ldk, 1, ldk, ldk, kbuf, ld_unused);
      const A* vrow = as_acc(a.v + row * ldv, 1, ldv, ldv, vbuf, ld_unused);
      // p_i = q_i . k_h(i), dp_i = do_i . v_h(i)
      if (rep == 1) {
        Ops::dots_rows(q, d.dim, krow, d.dim, d.hkv, d.dim, p, 1);
        Ops::dots_rows(dout, d.dim_v, vrow, d.dim_v, d.hkv, d.dim_v, ds, 1);
      } else {
        for (int64_t h = 0; h < d.hkv; ++h) {
          Ops::dots(q + h * rep * d.dim, d.dim, rep, krow + h * d.dim, d.dim, p + h * rep, 1);
          Ops::dots(dout + h * rep * d.dim_v, d.dim_v, rep, vrow + h * d.dim_v, d.dim_v,
                    ds + h * rep, 1);
        }
      }
      Ops::softmax_grad_heads(p, ds, lse, delta, a.scale, d.hq);
      // dv_h = sum_r p_hr do_hr and dk_h = scale sum_r ds_hr q_hr, the row written once;
      // dq_i += ds_i k_h(i)
      for (int64_t h = 0; h < d.hkv; ++h) {
        const int64_t i0 = h * rep;
        combine_to<Ops, true>(a.dv + row * ldv + h * d.dim_v, p + i0, dout + i0 * d.dim_v,
                              d.dim_v, rep, d.dim_v, A(1), rowbuf);
        combine_to<Ops, true>(a.dk + row * ldk + h * d.dim, ds + i0, q + i0 * d.dim, d.dim, rep,
                              d.dim, a.scale, rowbuf);
        for (int64_t r = 0; r < rep; ++r) {
          Ops::axpy(dq + (i0 + r) * d.dim, ds[i0 + r], krow + h * d.dim, d.dim);
        }
      }
    }
    for (int64_t i = 0; i < d.hq; ++i) {
      if (sp.count == 1) {
        store_row(a.dq + (head0 + i) * d.dim, dq + i * d.dim, a.scale, d.dim);
      } else {
        A* dst = a.part_dq + (sp.slot * d.hq + i) * d.dim;
        for (int64_t e = 0; e < d.dim; ++e) dst[e] = a.scale * dq[i * d.dim + e];
      }
    }
  }
  Ops::stream_fence();
}

// Entry points per ISA: the AVX2 ones compile the same templates under target("avx2,fma,f16c"),
// with Avx2Ops for fp32 (ScalarOps, auto-vectorised, for the other types).
template <typename T>
void forward_items_baseline(const FwdArgs<T>& a, int64_t b, int64_t e) {
  if (a.d.hkv > 1) return forward_rows<ScalarOps<Acc<T>>, T>(a, b, e);
  forward_items<ScalarOps<Acc<T>>, T>(a, b, e);
}
template <typename T>
void backward_items_baseline(const BwdArgs<T>& a, int64_t b, int64_t e) {
  if (a.d.hkv > 1) return backward_rows<ScalarOps<Acc<T>>, T>(a, b, e);
  backward_items<ScalarOps<Acc<T>>, T>(a, b, e);
}

#if INRFLOW_ATTN_X86
template <typename T>
using Avx2OpsFor = std::conditional_t<std::is_same_v<Acc<T>, float>, Avx2Ops, ScalarOps<Acc<T>>>;
// flatten: the policy's intrinsics inline into the clone, whose target matches theirs.
#define INRFLOW_ATTN_FLATTEN __attribute__((flatten))
#else
template <typename T>
using Avx2OpsFor = ScalarOps<Acc<T>>;
#define INRFLOW_ATTN_FLATTEN
#endif

template <typename T>
INRFLOW_TARGET_AVX2_FMA INRFLOW_ATTN_FLATTEN void forward_items_avx2(const FwdArgs<T>& a, int64_t b,
                                                                     int64_t e) {
  if (a.d.hkv > 1) return forward_rows<Avx2OpsFor<T>, T>(a, b, e);
  forward_items<Avx2OpsFor<T>, T>(a, b, e);
}
template <typename T>
INRFLOW_TARGET_AVX2_FMA INRFLOW_ATTN_FLATTEN void backward_items_avx2(const BwdArgs<T>& a,
                                                                      int64_t b, int64_t e) {
  if (a.d.hkv > 1) return backward_rows<Avx2OpsFor<T>, T>(a, b, e);
  backward_items<Avx2OpsFor<T>, T>(a, b, e);
}

// Outputs are written once, in full (a block reused from the output cache holds old values):
// on Linux, back large ones by transparent huge pages where the system allows it on request (THP
// "madvise" mode), so that the first write of fresh memory faults in 2 MiB pages instead of
// 4 KiB ones (measured with the cache off at 8,192 groups: the backward took 1.2-1.7 s with the
// advice, 3.2 s without; once in a few calls 6 s when the OS had to compact memory for them).
// On a block reused from the cache the pages are already there. Advice only: ignored where
// unsupported.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto start = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (start + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (start + t.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// Tasks: one per split and kv head, or one per split (all heads) on the row-order path.
int64_t tasks(const AttentionDims& d, const CpuPlan& p) {
  return d.hkv > 1 ? p.splits() : p.splits() * d.hkv;
}

// Tasks per at::parallel_for chunk: about 64k multiply-adds each.
int64_t grain(const AttentionDims& d, const CpuPlan& p) {
  const int64_t keys = std::max<int64_t>(1, d.tokens / std::max<int64_t>(1, p.splits()));
  const int64_t heads = tasks(d, p) == p.splits() ? d.hq : d.hq / d.hkv;
  const int64_t work = keys * heads * (d.dim + d.dim_v);
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work));
}

template <typename T>
void forward_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const CpuPlan& plan, const AttentionDims& d, double scale, at::Tensor& out,
                   at::Tensor& lse) {
  using A = Acc<T>;
  advise_huge_pages(out);
  std::vector<A> part_ml(2 * plan.slots() * d.hq);
  std::vector<A> part_acc(plan.slots() * d.hq * d.dim_v);
  FwdArgs<T> a{q.const_data_ptr<T>(), k.const_data_ptr<T>(), v.const_data_ptr<T>(),
               out.mutable_data_ptr<T>(), lse.mutable_data_ptr<A>(), part_ml.data(),
               part_acc.data(), &plan, d, static_cast<A>(scale)};
  cpu::parallel_for_isa(
      cpu::Isa::kAvx2Fma, tasks(d, plan), grain(d, plan),
      [&](int64_t b, int64_t e) { forward_items_avx2<T>(a, b, e); },
      [&](int64_t b, int64_t e) { forward_items_baseline<T>(a, b, e); });
  // Empty groups and groups with several splits.
  at::parallel_for(0, d.groups, 64, [&](int64_t b, int64_t e) {
    std::vector<A> acc(d.dim_v);
    for (int64_t g = b; g < e; ++g) {
      const int64_t n = plan.split_off[g + 1] - plan.split_off[g];
      if (n == 1) continue;
      for (int64_t h = 0; h < d.hq; ++h) {
        T* dst = a.out + (g * d.hq + h) * d.dim_v;
        if (n == 0) {
          std::fill(dst, dst + d.dim_v, static_cast<T>(0));
          a.lse[g * d.hq + h] = -std::numeric_limits<A>::infinity();
          continue;
        }
        const A* ml = part_ml.data() + 2 * (plan.slot_off[g] * d.hq + h);
        const int64_t stride = 2 * d.hq;
        const A m = gattn::merge_max(ml, stride, n);
        const A l = gattn::merge_sum(ml, stride, n, m);
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t i = 0; i < n; ++i) {
          const int64_t slot = (plan.slot_off[g] + i) * d.hq + h;
          axpy(acc.data(), gattn::merge_weight(ml[i * stride], m), part_acc.data() + slot * d.dim_v,
               d.dim_v);
        }
        store_row(dst, acc.data(), A(1) / l, d.dim_v);
        a.lse[g * d.hq + h] = gattn::merged_lse(m, l);
      }
    }
  });
}

template <typename T>
void backward_typed(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    const CpuPlan& plan, const AttentionDims& d, double scale, at::Tensor& dq,
                    at::Tensor& dk, at::Tensor& dv) {
  using A = Acc<T>;
  for (const at::Tensor* t : {&dq, &dk, &dv}) advise_huge_pages(*t);
  std::vector<A> part_dq(plan.slots() * d.hq * d.dim);
  BwdArgs<T> a{grad_out.const_data_ptr<T>(), q.const_data_ptr<T>(), k.const_data_ptr<T>(),
               v.const_data_ptr<T>(), out.const_data_ptr<T>(), lse.const_data_ptr<A>(),
               dq.mutable_data_ptr<T>(), dk.mutable_data_ptr<T>(), dv.mutable_data_ptr<T>(),
               part_dq.data(), &plan, d, static_cast<A>(scale)};
  cpu::parallel_for_isa(
      cpu::Isa::kAvx2Fma, tasks(d, plan), grain(d, plan),
      [&](int64_t b, int64_t e) { backward_items_avx2<T>(a, b, e); },
      [&](int64_t b, int64_t e) { backward_items_baseline<T>(a, b, e); });
  const int64_t width = d.hq * d.dim;
  at::parallel_for(0, d.groups, 64, [&](int64_t b, int64_t e) {
    std::vector<A> acc(width);
    for (int64_t g = b; g < e; ++g) {
      const int64_t n = plan.split_off[g + 1] - plan.split_off[g];
      if (n == 1) continue;
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t i = 0; i < n; ++i) {
        axpy(acc.data(), A(1), part_dq.data() + (plan.slot_off[g] + i) * width, width);
      }
      store_row(a.dq + g * width, acc.data(), A(1), width);
    }
  });
}

template <typename F>
void dispatch_float(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      return f(float{});
    case at::kDouble:
      return f(double{});
    case at::kHalf:
      return f(c10::Half{});
    case at::kBFloat16:
      return f(c10::BFloat16{});
    default:
      TORCH_CHECK(false, "inrflow: unsupported dtype ", t);
  }
}

std::tuple<at::Tensor, at::Tensor> grouped_cross_attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
    double scale) {
  const AttentionDims d = check_attention(kFwd, q, k, v, offsets, scale);
  TORCH_CHECK(q.device().is_cpu(), kFwd, ": the CPU kernel got a tensor on ", q.device());
  const CpuPlan plan = make_plan(kFwd, offsets, d);
  const at::Tensor qc = q.contiguous();
  const at::Tensor kc = k.contiguous();
  const at::Tensor vc = v.contiguous();
  at::Tensor out = cpu::out_tensor({d.groups, d.hq, d.dim_v}, q.options());
  at::Tensor lse = at::empty({d.groups, d.hq}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (d.groups == 0) return {out, lse};
  dispatch_float(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    forward_typed<T>(qc, kc, vc, plan, d, scale, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_cross_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& offsets, const at::Tensor& out, const at::Tensor& lse, double scale) {
  const AttentionDims d = check_attention(kBwd, q, k, v, offsets, scale);
  check_attention_backward(kBwd, d, q, grad_out, out, lse);
  TORCH_CHECK(q.device().is_cpu(), kBwd, ": the CPU kernel got a tensor on ", q.device());
  const CpuPlan plan = make_plan(kBwd, offsets, d);
  at::Tensor dq = cpu::out_tensor({d.groups, d.hq, d.dim}, q.options());
  at::Tensor dk = cpu::out_tensor({d.tokens, d.hkv, d.dim}, q.options());
  at::Tensor dv = cpu::out_tensor({d.tokens, d.hkv, d.dim_v}, q.options());
  if (d.groups == 0) return {dq, dk, dv};
  const at::Tensor gc = grad_out.contiguous();
  const at::Tensor qc = q.contiguous();
  const at::Tensor kc = k.contiguous();
  const at::Tensor vc = v.contiguous();
  const at::Tensor oc = out.contiguous();
  const at::Tensor lc = lse.contiguous();
  dispatch_float(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    backward_typed<T>(gc, qc, kc, vc, oc, lc, plan, d, scale, dq, dk, dv);
  });
  return {dq, dk, dv};
}

at::Tensor grouped_cross_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& offsets,
                                       double scale) {
  return std::get<0>(grouped_cross_attention_forward_cpu(q, k, v, offsets, scale));
}

}  // namespace
}  // namespace inrflow

TORCH_LIBRARY_IMPL(inrflow, CPU, m) {
  m.impl("grouped_cross_attention", &inrflow::grouped_cross_attention_cpu);
  m.impl("grouped_cross_attention_forward", &inrflow::grouped_cross_attention_forward_cpu);
  m.impl("grouped_cross_attention_backward", &inrflow::grouped_cross_attention_backward_cpu);
}
