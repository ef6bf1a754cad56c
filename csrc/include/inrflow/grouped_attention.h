// Grouped local cross-attention (one query per group): the split plan shared by the CPU kernels
// (g++), the CUDA kernels (nvcc) and the emulated test build, the partial-merge math, and the C
// ABI of the CUDA launchers. Torch-free.
//
// Problem: query g (heads [Hq]) attends to the keys offsets[g] .. offsets[g+1] of its group;
// query head h reads kv head h / (Hq / Hkv). Every group is cut into *splits* of at most `split`
// keys. A split is one unit of parallel work (CPU task, CUDA block) over all query heads that
// share one kv head, so cost follows the token count, not the largest group. A group with one
// split writes its output directly; a group with several writes per-split partials
// (max m, sum l = sum exp(s - m), acc = sum exp(s - m) v) that a second pass merges:
//   M = max m_i, L = sum l_i exp(m_i - M), out = sum acc_i exp(m_i - M) / L, lse = M + log L.
// The backward recomputes p = exp(s - lse) from the saved lse; its dq partials are summed.
#pragma once

#include <cmath>
#include <cstdint>

#include "inrflow/common.h"

namespace inrflow {
namespace gattn {

// Largest number of keys per split; smaller when the per-split scratch would not fit.
constexpr int64_t kMaxSplit = 256;
// Shared-memory budget of one CUDA block's scratch (below the 48 KiB default limit).
constexpr int64_t kSmemBudget = 40 * 1024;

// Number of splits of a group of `len` keys (0 for an empty group).
INRFLOW_HD int64_t num_splits(int64_t len, int64_t split) {
  return len <= 0 ? 0 : (len + split - 1) / split;
}

// Upper bound of the total number of splits over all groups: each group adds at most one split
// beyond len / split.
INRFLOW_HD int64_t max_total_splits(int64_t groups, int64_t tokens, int64_t split) {
  return groups + (tokens + split - 1) / split;
}

// Upper bound of the number of partial slots (splits of groups with at least two splits): such a
// group has len > split, so its n < len / split + 1 < 2 len / split.
INRFLOW_HD int64_t max_partial_slots(int64_t tokens, int64_t split) {
  return 2 * tokens / split + 1;
}

// Largest power-of-two split <= kMaxSplit (and <= max_split when max_split > 0) whose scratch of
// `per_key` accumulator elements per key plus `fixed` elements fits `budget_elems`; 0 if none.
INRFLOW_HD int64_t choose_split(int64_t per_key, int64_t fixed, int64_t budget_elems,
                                int64_t max_split) {
  int64_t split = kMaxSplit;
  while (split > 1 && (split > max_split && max_split > 0)) split >>= 1;
  while (split >= 1 && split * per_key + fixed > budget_elems) split >>= 1;
  return split;
}

// ---- Log-sum-exp merge of split partials (the CPU merge pass and the CUDA merge kernel) ----
// A split of one query head leaves m_i = max score and l_i = sum exp(s - m_i) (and an unnormalised
// accumulator). The n partials of a head lie `stride` elements apart in part_ml as (m_i, l_i)
// pairs (stride = 2 Hq: slot-major [slots, Hq, 2]).

INRFLOW_HD float lse_exp(float x) { return expf(x); }
INRFLOW_HD double lse_exp(double x) { return exp(x); }
INRFLOW_HD float lse_log(float x) { return logf(x); }
INRFLOW_HD double lse_log(double x) { return log(x); }

// M = max_i m_i (-inf for n = 0).
template <typename A>
INRFLOW_HD A merge_max(const A* part_ml, int64_t stride, int64_t n) {
  A m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = part_ml[i * stride] > m ? part_ml[i * stride] : m;
  return m;
}

// Weight exp(m_i - M) of partial i in the merged result.
template <typename A>
INRFLOW_HD A merge_weight(A m_i, A m) {
  return lse_exp(m_i - m);
}

// L = sum_i l_i exp(m_i - M).
template <typename A>
INRFLOW_HD A merge_sum(const A* part_ml, int64_t stride, int64_t n, A m) {
  A l = A(0);
  for (int64_t i = 0; i < n; ++i) {
    l += part_ml[i * stride + 1] * merge_weight(part_ml[i * stride], m);
  }
  return l;
}

// The head's log-sum-exp M + log L (also of a single split: m + log l).
template <typename A>
INRFLOW_HD A merged_lse(A m, A l) {
  return m + lse_log(l);
}

}  // namespace gattn
}  // namespace inrflow

// C ABI of the CUDA launchers (csrc/kernels/grouped_attention.cu). dtype is an inrflow::DType
// code; tensors are contiguous: q [G, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], offsets int64
// [G+1], out/grad_out [G, Hq, Dv], lse [G, Hq] (float32; float64 for Float64 inputs), dq like q,
// dk like k, dv like v. `workspace` holds inrflow_grouped_attention_workspace_bytes() bytes
// (256-byte aligned). max_split > 0 caps the split size (tests use it to force many splits);
// 0 picks the default. Return a cudaError_t code. Declared only where a cudaStream_t exists.
#if defined(__CUDACC__) || defined(INRFLOW_SIMT_EMULATION) || defined(WITH_CUDA)
#if !defined(__CUDACC__) && !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_runtime_api.h>
#endif
extern "C" {
int64_t inrflow_grouped_attention_workspace_bytes(int32_t dtype, int32_t backward, int64_t groups,
                                                  int64_t tokens, int64_t hq, int64_t hkv,
                                                  int64_t dim, int64_t dim_v, int64_t max_split);
int32_t inrflow_grouped_attention_forward(int32_t dtype, const void* q, const void* k,
                                          const void* v, const int64_t* offsets, void* out,
                                          void* lse, void* workspace, int64_t groups,
                                          int64_t tokens, int64_t hq, int64_t hkv, int64_t dim,
                                          int64_t dim_v, double scale, int64_t max_split,
                                          cudaStream_t stream);
int32_t inrflow_grouped_attention_backward(int32_t dtype, const void* grad_out, const void* q,
                                           const void* k, const void* v, const int64_t* offsets,
                                           const void* out, const void* lse, void* dq, void* dk,
                                           void* dv, void* workspace, int64_t groups,
                                           int64_t tokens, int64_t hq, int64_t hkv, int64_t dim,
                                           int64_t dim_v, double scale, int64_t max_split,
                                           cudaStream_t stream);
}
#endif
