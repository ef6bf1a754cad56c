// Grouped local cross-attention (one query per group), CUDA kernels and their torch-free C
// launchers. Compiled by nvcc into inrflow._C (called from csrc/cuda/attention_cuda.cpp) and
// unchanged by g++ with tests/simt/prelude.h into the emulated test library
// (tests/test_attention_kernels.py). Split plan and merge math: inrflow/grouped_attention.h.
//
// With one query per group, flash-attention's 64-128-row query tiles would be almost empty, so
// the kernels are shaped for the problem instead: one block of kThreads threads per (split, kv
// head) handles every query head sharing that kv head (MQA/GQA reuse each key row across them).
//   1. scores: a warp per key streams the key row (lanes over the head dim, so any D works with
//      no per-thread arrays), kRT query heads at a time, warp-shuffle reduction;
//   2. softmax of the split's scores per head (a warp per head) in shared memory;
//   3. weighted sum: threads over the value dim, kRT heads of accumulators in registers.
// Groups with one split write out/lse directly; longer groups write (m, l, acc) partials that
// the merge kernel combines, so one huge group is spread over many blocks. The backward
// recomputes p = exp(s - lse), forms ds = p (do.v - do.out), writes dk/dv rows (owned by the
// block) and dq (directly, or as partials summed by a reduce kernel). Accumulation is fp32 for
// fp32/fp16/bf16 and fp64 for fp64.
#include <cmath>
#include <cstdint>

#if !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "inrflow/common.h"
#include "inrflow/device_io.h"
#include "inrflow/grouped_attention.h"
#include "inrflow/launch.h"

namespace inrflow {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kScanThreads = 256;
constexpr int kScanShift = 8;  // log2(kScanThreads)
constexpr int64_t kMaxGrid = (int64_t{1} << 31) - 1;

using gattn::lse_exp;
using gattn::merged_lse;

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

template <typename A>
__device__ __forceinline__ A warp_max(A x) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const A y = __shfl_xor_sync(kFullMask, x, offset);
    x = y > x ? y : x;
  }
  return x;
}

__device__ __forceinline__ int64_t clamp_offset(int64_t o, int64_t tokens) {
  return o < 0 ? 0 : (o > tokens ? tokens : o);
}

// Where the block's split lies: group, split index within the group, number of splits of the
// group, its partial slot base and its key range. Offsets are clamped to [0, T] so that invalid
// offsets (not checked here) can never make a kernel read out of bounds.
struct SplitInfo {
  int64_t group;
  int64_t index;
  int64_t count;
  int64_t slot;
  int64_t begin;
  int64_t end;
};

__device__ __forceinline__ bool locate_split(const int64_t* __restrict__ offsets,
                                             const int64_t* __restrict__ split_off,
                                             const int64_t* __restrict__ slot_off, int64_t groups,
                                             int64_t tokens, int64_t split, int64_t c,
                                             SplitInfo& info) {
  if (c >= split_off[groups]) return false;
  int64_t lo = 0;
  int64_t hi = groups;  // split_off[lo] <= c < split_off[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (split_off[mid] <= c) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  info.group = lo;
  info.index = c - split_off[lo];
  info.count = split_off[lo + 1] - split_off[lo];
  info.slot = slot_off[lo] + info.index;
  const int64_t start = clamp_offset(offsets[lo], tokens);
  const int64_t stop = clamp_offset(offsets[lo + 1], tokens);
  info.begin = start + info.index * split;
  info.end = info.begin + split < stop ? info.begin + split : stop;
  return true;
}

// split_off[g] / slot_off[g]: exclusive prefix sums of each group's split count and partial slot
// count (its split count when >= 2, else 0). One block; each thread scans a contiguous range.
__global__ void __launch_bounds__(kScanThreads, 1)
    plan_kernel(const int64_t* __restrict__ offsets, int64_t* __restrict__ split_off,
                int64_t* __restrict__ slot_off, int64_t groups, int64_t tokens,
                int32_t split_shift) {
  __shared__ int64_t s_split[kScanThreads];
  __shared__ int64_t s_slot[kScanThreads];
  const int64_t per = (groups + kScanThreads - 1) >> kScanShift;
  const int64_t g0 = static_cast<int64_t>(threadIdx.x) * per;
  const int64_t g1 = g0 + per < groups ? g0 + per : groups;
  int64_t n_split = 0;
  int64_t n_slot = 0;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t len = clamp_offset(offsets[g + 1], tokens) - clamp_offset(offsets[g], tokens);
    const int64_t n = (len + (int64_t{1} << split_shift) - 1) >> split_shift;  // power-of-two split
    n_split += n;
    n_slot += n >= 2 ? n : 0;
  }
  s_split[threadIdx.x] = n_split;
  s_slot[threadIdx.x] = n_slot;
  __syncthreads();
  for (int stride = 1; stride < kScanThreads; stride <<= 1) {  // Hillis-Steele inclusive scan
    int64_t a = 0;
    int64_t b = 0;
    if (static_cast<int>(threadIdx.x) >= stride) {
      a = s_split[threadIdx.x - stride];
      b = s_slot[threadIdx.x - stride];
    }
    __syncthreads();
    s_split[threadIdx.x] += a;
    s_slot[threadIdx.x] += b;
    __syncthreads();
  }
  int64_t run_split = s_split[threadIdx.x] - n_split;
  int64_t run_slot = s_slot[threadIdx.x] - n_slot;
  if (threadIdx.x == 0) {
    split_off[0] = 0;
    slot_off[0] = 0;
  }
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t len = clamp_offset(offsets[g + 1], tokens) - clamp_offset(offsets[g], tokens);
    const int64_t n = (len + (int64_t{1} << split_shift) - 1) >> split_shift;
    run_split += n;
    run_slot += n >= 2 ? n : 0;
    split_off[g + 1] = run_split;
    slot_off[g + 1] = run_slot;
  }
}

// Forward over one split and kv head. Dynamic shared memory: scores [rep][split], then m and l
// [rep] each (all Acc).
template <typename T, int kRT>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const int64_t* __restrict__ offsets, const int64_t* __restrict__ split_off,
                   const int64_t* __restrict__ slot_off, T* __restrict__ out,
                   typename Io<T>::Acc* __restrict__ lse, typename Io<T>::Acc* __restrict__ part_ml,
                   typename Io<T>::Acc* __restrict__ part_acc, int64_t groups, int64_t tokens,
                   int32_t hq, int32_t hkv, int32_t dim, int32_t dim_v,
                   typename Io<T>::Acc scale, int32_t split) {
  using A = typename Io<T>::Acc;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* s_p = reinterpret_cast<A*>(smem_raw);
  const int rep = hq / hkv;
  A* s_m = s_p + static_cast<int64_t>(rep) * split;
  A* s_l = s_m + rep;

  SplitInfo info;
  if (!locate_split(offsets, split_off, slot_off, groups, tokens, split, blockIdx.x, info)) {
    return;  // the whole block: no barrier is skipped by part of it
  }
  const int h = static_cast<int>(blockIdx.y);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int len = static_cast<int>(info.end - info.begin);
  const T* q_g = q + (info.group * hq + static_cast<int64_t>(h) * rep) * dim;

  // 1. scores
  for (int j = warp; j < len; j += kWarps) {
    const T* k_row = k + ((info.begin + j) * hkv + h) * static_cast<int64_t>(dim);
    for (int r0 = 0; r0 < rep; r0 += kRT) {
      A acc[kRT];
#pragma unroll
      for (int i = 0; i < kRT; ++i) acc[i] = A(0);
      for (int d = lane; d < dim; d += 32) {
        const A kk = Io<T>::load_ro(k_row + d);
#pragma unroll
        for (int i = 0; i < kRT; ++i) {
          if (r0 + i < rep) {
            acc[i] += Io<T>::load_ro(q_g + static_cast<int64_t>(r0 + i) * dim + d) * kk;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kRT; ++i) {
        const A s = warp_sum(acc[i]);
        if (lane == 0 && r0 + i < rep) s_p[(r0 + i) * split + j] = s * scale;
      }
    }
  }
  __syncthreads();

  // 2. softmax per head (unnormalised p; l kept for the output)
  for (int r = warp; r < rep; r += kWarps) {
    A* row = s_p + r * split;
    A m = -INFINITY;
    for (int j = lane; j < len; j += 32) m = row[j] > m ? row[j] : m;
    m = warp_max(m);
    A l = A(0);
    for (int j = lane; j < len; j += 32) {
      const A p = lse_exp(row[j] - m);
      row[j] = p;
      l += p;
    }
    l = warp_sum(l);
    if (lane == 0) {
      s_m[r] = m;
      s_l[r] = l;
      const int64_t head = info.group * hq + static_cast<int64_t>(h) * rep + r;
      if (info.count == 1) {
        lse[head] = merged_lse(m, l);
      } else {
        const int64_t slot = info.slot * hq + static_cast<int64_t>(h) * rep + r;
        part_ml[2 * slot] = m;
        part_ml[2 * slot + 1] = l;
      }
    }
  }
  __syncthreads();

  // 3. weighted sum of the values
  for (int e = static_cast<int>(threadIdx.x); e < dim_v; e += kThreads) {
    for (int r0 = 0; r0 < rep; r0 += kRT) {
      A acc[kRT];
#pragma unroll
      for (int i = 0; i < kRT; ++i) acc[i] = A(0);
      for (int j = 0; j < len; ++j) {
        const int64_t row = (info.begin + j) * hkv + h;
        const A vv = Io<T>::load_ro(v + row * dim_v + e);
#pragma unroll
        for (int i = 0; i < kRT; ++i) {
          if (r0 + i < rep) acc[i] += s_p[(r0 + i) * split + j] * vv;
        }
      }
#pragma unroll
      for (int i = 0; i < kRT; ++i) {
        const int r = r0 + i;
        if (r >= rep) break;
        const int64_t head = static_cast<int64_t>(h) * rep + r;
        if (info.count == 1) {
          Io<T>::store(out + (info.group * hq + head) * dim_v + e, acc[i] / s_l[r]);
        } else {
          part_acc[(info.slot * hq + head) * dim_v + e] = acc[i];
        }
      }
    }
  }
}

// One block per group: zero output for empty groups, merge of the partials of split groups.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    merge_kernel(const int64_t* __restrict__ split_off, const int64_t* __restrict__ slot_off,
                 const typename Io<T>::Acc* __restrict__ part_ml,
                 const typename Io<T>::Acc* __restrict__ part_acc, T* __restrict__ out,
                 typename Io<T>::Acc* __restrict__ lse, int32_t hq, int32_t dim_v) {
  using A = typename Io<T>::Acc;
  const int64_t g = blockIdx.x;
  const int64_t n = split_off[g + 1] - split_off[g];
  if (n == 1) return;
  const int64_t slot0 = slot_off[g];
  for (int64_t head = 0; head < hq; ++head) {
    T* dst = out + (g * hq + head) * dim_v;
    if (n == 0) {
      for (int e = static_cast<int>(threadIdx.x); e < dim_v; e += kThreads) {
        Io<T>::store(dst + e, A(0));
      }
      if (threadIdx.x == 0) lse[g * hq + head] = -INFINITY;
      continue;
    }
    const A* ml = part_ml + 2 * (slot0 * hq + head);
    const int64_t stride = 2 * static_cast<int64_t>(hq);
    const A m = gattn::merge_max(ml, stride, n);
    const A l = gattn::merge_sum(ml, stride, n, m);
    if (threadIdx.x == 0) lse[g * hq + head] = merged_lse(m, l);
    for (int e = static_cast<int>(threadIdx.x); e < dim_v; e += kThreads) {
      A acc = A(0);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t s = (slot0 + i) * hq + head;
        acc += part_acc[s * dim_v + e] * gattn::merge_weight(ml[i * stride], m);
      }
      Io<T>::store(dst + e, acc / l);
    }
  }
}

// Backward over one split and kv head. Dynamic shared memory: p and ds [rep][split] each, then
// delta = do . out and lse [rep] each (all Acc).
template <typename T, int kRT>
__global__ void __launch_bounds__(kThreads, 1)
    backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ q,
                    const T* __restrict__ k, const T* __restrict__ v,
                    const int64_t* __restrict__ offsets, const int64_t* __restrict__ split_off,
                    const int64_t* __restrict__ slot_off, const T* __restrict__ out,
                    const typename Io<T>::Acc* __restrict__ lse, T* __restrict__ dq,
                    T* __restrict__ dk, T* __restrict__ dv,
                    typename Io<T>::Acc* __restrict__ part_dq, int64_t groups, int64_t tokens,
                    int32_t hq, int32_t hkv, int32_t dim, int32_t dim_v,
                    typename Io<T>::Acc scale, int32_t split) {
  using A = typename Io<T>::Acc;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* s_p = reinterpret_cast<A*>(smem_raw);
  const int rep = hq / hkv;
  A* s_ds = s_p + static_cast<int64_t>(rep) * split;
  A* s_delta = s_ds + static_cast<int64_t>(rep) * split;
  A* s_lse = s_delta + rep;

  SplitInfo info;
  if (!locate_split(offsets, split_off, slot_off, groups, tokens, split, blockIdx.x, info)) {
    return;
  }
  const int h = static_cast<int>(blockIdx.y);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int len = static_cast<int>(info.end - info.begin);
  const int64_t head0 = info.group * hq + static_cast<int64_t>(h) * rep;  // first query head
  const T* q_g = q + head0 * dim;
  const T* do_g = grad_out + head0 * dim_v;
  const T* o_g = out + head0 * dim_v;

  // 0. delta = do . out per head
  for (int r = warp; r < rep; r += kWarps) {
    A acc = A(0);
    for (int e = lane; e < dim_v; e += 32) {
      acc += Io<T>::load_ro(do_g + static_cast<int64_t>(r) * dim_v + e) *
             Io<T>::load_ro(o_g + static_cast<int64_t>(r) * dim_v + e);
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      s_delta[r] = acc;
      s_lse[r] = lse[head0 + r];
    }
  }
  __syncthreads();

  // 1. p = exp(s - lse), ds = p (do . v - delta)
  for (int j = warp; j < len; j += kWarps) {
    const int64_t tok = (info.begin + j) * hkv + h;
    const T* k_row = k + tok * dim;
    const T* v_row = v + tok * dim_v;
    for (int r0 = 0; r0 < rep; r0 += kRT) {
      A acc_s[kRT];
      A acc_p[kRT];
#pragma unroll
      for (int i = 0; i < kRT; ++i) {
        acc_s[i] = A(0);
        acc_p[i] = A(0);
      }
      for (int d = lane; d < dim; d += 32) {
        const A kk = Io<T>::load_ro(k_row + d);
#pragma unroll
        for (int i = 0; i < kRT; ++i) {
          if (r0 + i < rep) {
            acc_s[i] += Io<T>::load_ro(q_g + static_cast<int64_t>(r0 + i) * dim + d) * kk;
          }
        }
      }
      for (int e = lane; e < dim_v; e += 32) {
        const A vv = Io<T>::load_ro(v_row + e);
#pragma unroll
        for (int i = 0; i < kRT; ++i) {
          if (r0 + i < rep) {
            acc_p[i] += Io<T>::load_ro(do_g + static_cast<int64_t>(r0 + i) * dim_v + e) * vv;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kRT; ++i) {
        const A s = warp_sum(acc_s[i]);
        const A dp = warp_sum(acc_p[i]);
        const int r = r0 + i;
        if (lane == 0 && r < rep) {
          const A p = lse_exp(s * scale - s_lse[r]);
          s_p[r * split + j] = p;
          s_ds[r * split + j] = p * (dp - s_delta[r]);
        }
      }
    }
  }
  __syncthreads();

  // 2. dk = scale sum_r ds q_r, dv = sum_r p do_r for the split's key rows (owned by this block)
  // len * max(D, Dv) < 2^31 (make_plan), so the flattened index and its division are 32-bit.
  const int n_k = len * dim;
  for (int t = static_cast<int>(threadIdx.x); t < n_k; t += kThreads) {
    const int j = t / dim;
    const int d = t - j * dim;
    A acc = A(0);
    for (int r = 0; r < rep; ++r) {
      acc += s_ds[r * split + j] * Io<T>::load_ro(q_g + static_cast<int64_t>(r) * dim + d);
    }
    Io<T>::store(dk + ((info.begin + j) * hkv + h) * dim + d, acc * scale);
  }
  const int n_v = len * dim_v;
  for (int t = static_cast<int>(threadIdx.x); t < n_v; t += kThreads) {
    const int j = t / dim_v;
    const int e = t - j * dim_v;
    A acc = A(0);
    for (int r = 0; r < rep; ++r) {
      acc += s_p[r * split + j] * Io<T>::load_ro(do_g + static_cast<int64_t>(r) * dim_v + e);
    }
    Io<T>::store(dv + ((info.begin + j) * hkv + h) * dim_v + e, acc);
  }

  // 3. dq_r = scale sum_j ds_rj k_j
  for (int d = static_cast<int>(threadIdx.x); d < dim; d += kThreads) {
    for (int r0 = 0; r0 < rep; r0 += kRT) {
      A acc[kRT];
#pragma unroll
      for (int i = 0; i < kRT; ++i) acc[i] = A(0);
      for (int j = 0; j < len; ++j) {
        const A kk = Io<T>::load_ro(k + ((info.begin + j) * hkv + h) * static_cast<int64_t>(dim) + d);
#pragma unroll
        for (int i = 0; i < kRT; ++i) {
          if (r0 + i < rep) acc[i] += s_ds[(r0 + i) * split + j] * kk;
        }
      }
#pragma unroll
      for (int i = 0; i < kRT; ++i) {
        const int r = r0 + i;
        if (r >= rep) break;
        if (info.count == 1) {
          Io<T>::store(dq + (head0 + r) * dim + d, acc[i] * scale);
        } else {
          part_dq[(info.slot * hq + static_cast<int64_t>(h) * rep + r) * dim + d] = acc[i] * scale;
        }
      }
    }
  }
}

// One block per group: zero dq of empty groups, sum the dq partials of split groups.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    dq_reduce_kernel(const int64_t* __restrict__ split_off, const int64_t* __restrict__ slot_off,
                     const typename Io<T>::Acc* __restrict__ part_dq, T* __restrict__ dq,
                     int32_t hq, int32_t dim) {
  using A = typename Io<T>::Acc;
  const int64_t g = blockIdx.x;
  const int64_t n = split_off[g + 1] - split_off[g];
  if (n == 1) return;
  const int64_t slot0 = slot_off[g];
  const int64_t width = static_cast<int64_t>(hq) * dim;
  for (int64_t t = threadIdx.x; t < width; t += kThreads) {
    A acc = A(0);
    for (int64_t i = 0; i < n; ++i) acc += part_dq[(slot0 + i) * width + t];
    Io<T>::store(dq + g * width + t, acc);
  }
}

// ------------------------------------------------------------------------------------------------
// Launch plan

constexpr int64_t kAlign = 256;

int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

int64_t acc_size(int32_t dtype) {
  return static_cast<DType>(dtype) == DType::Float64 ? 8 : 4;
}

struct Plan {
  int64_t split = 0;
  int32_t split_shift = 0;  // split == 1 << split_shift
  int64_t smem = 0;        // dynamic shared memory bytes per block
  int64_t blocks = 0;      // grid.x (upper bound of the split count)
  int64_t slots = 0;       // partial slots
  int64_t off_bytes = 0;   // split_off and slot_off
  int64_t part_bytes = 0;  // partials
  int64_t total() const { return off_bytes + part_bytes; }
};

bool valid_dtype(int32_t dtype) { return dtype >= 0 && dtype <= 3; }

bool make_plan(int32_t dtype, bool backward, int64_t groups, int64_t tokens, int64_t hq,
               int64_t hkv, int64_t dim, int64_t dim_v, int64_t max_split, Plan& plan) {
  if (!valid_dtype(dtype) || groups < 0 || tokens < 0 || hq < 1 || hkv < 1 || hq % hkv != 0 ||
      dim < 1 || dim_v < 1 || max_split < 0) {
    return false;
  }
  if (hq > (int64_t{1} << 30) || dim > (int64_t{1} << 30) || dim_v > (int64_t{1} << 30) ||
      hkv > 65535) {
    return false;
  }
  const int64_t rep = hq / hkv;
  const int64_t a = acc_size(dtype);
  const int64_t per_key = (backward ? 2 : 1) * rep;
  plan.split = gattn::choose_split(per_key, 2 * rep, gattn::kSmemBudget / a, max_split);
  if (plan.split < 1) return false;
  while ((int64_t{1} << plan.split_shift) < plan.split) ++plan.split_shift;
  // Flattened (key, dim) indices of a split stay 32-bit in the kernels.
  if (plan.split * (dim > dim_v ? dim : dim_v) >= (int64_t{1} << 31)) return false;
  plan.smem = (plan.split * per_key + 2 * rep) * a;
  plan.blocks = gattn::max_total_splits(groups, tokens, plan.split);
  if (plan.blocks > kMaxGrid || groups > kMaxGrid) return false;
  plan.slots = gattn::max_partial_slots(tokens, plan.split);
  plan.off_bytes = 2 * align_up((groups + 1) * 8);
  const int64_t width = backward ? hq * dim : hq * (dim_v + 2);
  plan.part_bytes = align_up(plan.slots * width * a);
  return true;
}

template <int kRT, typename T>
cudaError_t launch_forward_rt(const Plan& p, const T* q, const T* k, const T* v,
                              const int64_t* offsets, const int64_t* split_off,
                              const int64_t* slot_off, T* out, typename Io<T>::Acc* lse,
                              typename Io<T>::Acc* part_ml, typename Io<T>::Acc* part_acc,
                              int64_t groups, int64_t tokens, int64_t hq, int64_t hkv,
                              int64_t dim, int64_t dim_v, double scale, cudaStream_t stream) {
  return launch_kernel(forward_kernel<T, kRT>, dim3(static_cast<unsigned>(p.blocks),
                                                    static_cast<unsigned>(hkv)),
                       dim3(kThreads), static_cast<size_t>(p.smem), stream, q, k, v, offsets,
                       split_off, slot_off, out, lse, part_ml, part_acc, groups, tokens,
                       static_cast<int32_t>(hq), static_cast<int32_t>(hkv),
                       static_cast<int32_t>(dim), static_cast<int32_t>(dim_v),
                       static_cast<typename Io<T>::Acc>(scale), static_cast<int32_t>(p.split));
}

template <typename T>
cudaError_t launch_forward(const void* q_, const void* k_, const void* v_,
                           const int64_t* offsets, void* out_, void* lse_, void* workspace,
                           int64_t groups, int64_t tokens, int64_t hq, int64_t hkv, int64_t dim,
                           int64_t dim_v, double scale, const Plan& p, cudaStream_t stream) {
  using A = typename Io<T>::Acc;
  auto* base = static_cast<unsigned char*>(workspace);
  auto* split_off = reinterpret_cast<int64_t*>(base);
  auto* slot_off = reinterpret_cast<int64_t*>(base + p.off_bytes / 2);
  auto* part_ml = reinterpret_cast<A*>(base + p.off_bytes);
  A* part_acc = part_ml + 2 * p.slots * hq;
  const T* q = static_cast<const T*>(q_);
  const T* k = static_cast<const T*>(k_);
  const T* v = static_cast<const T*>(v_);
  T* out = static_cast<T*>(out_);
  A* lse = static_cast<A*>(lse_);
  cudaError_t err = launch_kernel(plan_kernel, dim3(1), dim3(kScanThreads), 0, stream, offsets,
                                  split_off, slot_off, groups, tokens, p.split_shift);
  if (err != cudaSuccess) return err;
  const int64_t rep = hq / hkv;
  if (rep == 1) {
    err = launch_forward_rt<1>(p, q, k, v, offsets, split_off, slot_off, out, lse, part_ml,
                               part_acc, groups, tokens, hq, hkv, dim, dim_v, scale, stream);
  } else if (rep <= 4) {
    err = launch_forward_rt<4>(p, q, k, v, offsets, split_off, slot_off, out, lse, part_ml,
                               part_acc, groups, tokens, hq, hkv, dim, dim_v, scale, stream);
  } else {
    err = launch_forward_rt<8>(p, q, k, v, offsets, split_off, slot_off, out, lse, part_ml,
                               part_acc, groups, tokens, hq, hkv, dim, dim_v, scale, stream);
  }
  if (err != cudaSuccess) return err;
  return launch_kernel(merge_kernel<T>, dim3(static_cast<unsigned>(groups)), dim3(kThreads), 0,
                       stream, split_off, slot_off, part_ml, part_acc, out, lse,
                       static_cast<int32_t>(hq), static_cast<int32_t>(dim_v));
}

template <int kRT, typename T>
cudaError_t launch_backward_rt(const Plan& p, const T* grad_out, const T* q, const T* k,
                               const T* v, const int64_t* offsets, const int64_t* split_off,
                               const int64_t* slot_off, const T* out,
                               const typename Io<T>::Acc* lse, T* dq, T* dk, T* dv,
                               typename Io<T>::Acc* part_dq, int64_t groups, int64_t tokens,
                               int64_t hq, int64_t hkv, int64_t dim, int64_t dim_v, double scale,
                               cudaStream_t stream) {
  return launch_kernel(backward_kernel<T, kRT>,
                       dim3(static_cast<unsigned>(p.blocks), static_cast<unsigned>(hkv)),
                       dim3(kThreads), static_cast<size_t>(p.smem), stream, grad_out, q, k, v,
                       offsets, split_off, slot_off, out, lse, dq, dk, dv, part_dq, groups,
                       tokens, static_cast<int32_t>(hq), static_cast<int32_t>(hkv),
                       static_cast<int32_t>(dim), static_cast<int32_t>(dim_v),
                       static_cast<typename Io<T>::Acc>(scale), static_cast<int32_t>(p.split));
}

template <typename T>
cudaError_t launch_backward(const void* grad_out_, const void* q_, const void* k_,
                            const void* v_, const int64_t* offsets, const void* out_,
                            const void* lse_, void* dq_, void* dk_, void* dv_, void* workspace,
                            int64_t groups, int64_t tokens, int64_t hq, int64_t hkv, int64_t dim,
                            int64_t dim_v, double scale, const Plan& p, cudaStream_t stream) {
  using A = typename Io<T>::Acc;
  auto* base = static_cast<unsigned char*>(workspace);
  auto* split_off = reinterpret_cast<int64_t*>(base);
  auto* slot_off = reinterpret_cast<int64_t*>(base + p.off_bytes / 2);
  auto* part_dq = reinterpret_cast<A*>(base + p.off_bytes);
  const T* grad_out = static_cast<const T*>(grad_out_);
  const T* q = static_cast<const T*>(q_);
  const T* k = static_cast<const T*>(k_);
  const T* v = static_cast<const T*>(v_);
  const T* out = static_cast<const T*>(out_);
  const A* lse = static_cast<const A*>(lse_);
  T* dq = static_cast<T*>(dq_);
  T* dk = static_cast<T*>(dk_);
  T* dv = static_cast<T*>(dv_);
  cudaError_t err = launch_kernel(plan_kernel, dim3(1), dim3(kScanThreads), 0, stream, offsets,
                                  split_off, slot_off, groups, tokens, p.split_shift);
  if (err != cudaSuccess) return err;
  const int64_t rep = hq / hkv;
  if (rep == 1) {
    err = launch_backward_rt<1>(p, grad_out, q, k, v, offsets, split_off, slot_off, out, lse, dq,
                                dk, dv, part_dq, groups, tokens, hq, hkv, dim, dim_v, scale,
                                stream);
  } else if (rep <= 4) {
    err = launch_backward_rt<4>(p, grad_out, q, k, v, offsets, split_off, slot_off, out, lse, dq,
                                dk, dv, part_dq, groups, tokens, hq, hkv, dim, dim_v, scale,
                                stream);
  } else {
    err = launch_backward_rt<8>(p, grad_out, q, k, v, offsets, split_off, slot_off, out, lse, dq,
                                dk, dv, part_dq, groups, tokens, hq, hkv, dim, dim_v, scale,
                                stream);
  }
  if (err != cudaSuccess) return err;
  return launch_kernel(dq_reduce_kernel<T>, dim3(static_cast<unsigned>(groups)), dim3(kThreads),
                       0, stream, split_off, slot_off, part_dq, dq, static_cast<int32_t>(hq),
                       static_cast<int32_t>(dim));
}

}  // namespace
}  // namespace inrflow

extern "C" int64_t inrflow_grouped_attention_workspace_bytes(int32_t dtype, int32_t backward,
                                                             int64_t groups, int64_t tokens,
                                                             int64_t hq, int64_t hkv, int64_t dim,
                                                             int64_t dim_v, int64_t max_split) {
  inrflow::Plan p;
  if (!inrflow::make_plan(dtype, backward != 0, groups, tokens, hq, hkv, dim, dim_v, max_split,
                          p)) {
    return -1;
  }
  return p.total();
}

extern "C" int32_t inrflow_grouped_attention_forward(
    int32_t dtype, const void* q, const void* k, const void* v, const int64_t* offsets,
    void* out, void* lse, void* workspace, int64_t groups, int64_t tokens, int64_t hq,
    int64_t hkv, int64_t dim, int64_t dim_v, double scale, int64_t max_split,
    cudaStream_t stream) {
  using inrflow::DType;
  inrflow::Plan p;
  if (!inrflow::make_plan(dtype, false, groups, tokens, hq, hkv, dim, dim_v, max_split, p)) {
    return cudaErrorInvalidValue;
  }
  if (groups == 0) return cudaSuccess;
  if (q == nullptr || offsets == nullptr || out == nullptr || lse == nullptr ||
      workspace == nullptr || (tokens > 0 && (k == nullptr || v == nullptr))) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaErrorInvalidValue;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      err = inrflow::launch_forward<float>(q, k, v, offsets, out, lse, workspace, groups, tokens,
                                           hq, hkv, dim, dim_v, scale, p, stream);
      break;
    case DType::Float16:
      err = inrflow::launch_forward<__half>(q, k, v, offsets, out, lse, workspace, groups, tokens,
                                            hq, hkv, dim, dim_v, scale, p, stream);
      break;
    case DType::BFloat16:
      err = inrflow::launch_forward<__nv_bfloat16>(q, k, v, offsets, out, lse, workspace, groups,
                                                   tokens, hq, hkv, dim, dim_v, scale, p, stream);
      break;
    case DType::Float64:
      err = inrflow::launch_forward<double>(q, k, v, offsets, out, lse, workspace, groups, tokens,
                                            hq, hkv, dim, dim_v, scale, p, stream);
      break;
  }
  return static_cast<int32_t>(err);
}

extern "C" int32_t inrflow_grouped_attention_backward(
    int32_t dtype, const void* grad_out, const void* q, const void* k, const void* v,
    const int64_t* offsets, const void* out, const void* lse, void* dq, void* dk, void* dv,
    void* workspace, int64_t groups, int64_t tokens, int64_t hq, int64_t hkv, int64_t dim,
    int64_t dim_v, double scale, int64_t max_split, cudaStream_t stream) {
  using inrflow::DType;
  inrflow::Plan p;
  if (!inrflow::make_plan(dtype, true, groups, tokens, hq, hkv, dim, dim_v, max_split, p)) {
    return cudaErrorInvalidValue;
  }
  if (groups == 0) return cudaSuccess;
  if (grad_out == nullptr || q == nullptr || offsets == nullptr || out == nullptr ||
      lse == nullptr || dq == nullptr || workspace == nullptr ||
      (tokens > 0 && (k == nullptr || v == nullptr || dk == nullptr || dv == nullptr))) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaErrorInvalidValue;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      err = inrflow::launch_backward<float>(grad_out, q, k, v, offsets, out, lse, dq, dk, dv,
                                            workspace, groups, tokens, hq, hkv, dim, dim_v, scale,
                                            p, stream);
      break;
    case DType::Float16:
      err = inrflow::launch_backward<__half>(grad_out, q, k, v, offsets, out, lse, dq, dk, dv,
                                             workspace, groups, tokens, hq, hkv, dim, dim_v,
                                             scale, p, stream);
      break;
    case DType::BFloat16:
      err = inrflow::launch_backward<__nv_bfloat16>(grad_out, q, k, v, offsets, out, lse, dq, dk,
                                                    dv, workspace, groups, tokens, hq, hkv, dim,
                                                    dim_v, scale, p, stream);
      break;
    case DType::Float64:
      err = inrflow::launch_backward<double>(grad_out, q, k, v, offsets, out, lse, dq, dk, dv,
                                             workspace, groups, tokens, hq, hkv, dim, dim_v,
                                             scale, p, stream);
      break;
  }
  return static_cast<int32_t>(err);
}
