// Grouped local cross-attention on the CPU: the at::parallel_for kernels and their registration
// (the schemas are in csrc/ops.cpp, the argument checks in csrc/checks.cpp).
//
// Work is cut as in the CUDA kernels (inrflow/grouped_attention.h): a task is one split of at most
// kMaxSplit keys of one group for one kv head, over all query heads that share it, so Zipf-sized
// groups parallelise like uniform ones. Groups with several splits write (m, l, acc) partials
// (forward) or dq partials (backward) that a second parallel pass merges. Inner loops are dot
// products with independent accumulators and axpys over the head dim, which g++ vectorises; they
// are compiled twice on x86-64 (baseline and target("avx2,fma,f16c")), picked at run time.
// Accumulation: fp32 for fp32/fp16/bf16 (half rows are widened once per use), fp64 for fp64.
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

#include "../checks.h"
#include "dispatch.h"
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

template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Row p[0..n) as Acc: the row itself for fp32/fp64, else widened into buf.
template <typename T, typename A>
INRFLOW_ATTN_INLINE const A* as_acc(const T* p, int64_t n, A* buf) {
  if constexpr (std::is_same_v<T, A>) {
    return p;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(p[i]);
    return buf;
  }
}

template <typename T, typename A>
INRFLOW_ATTN_INLINE void store_row(T* dst, const A* src, A factor, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i] * factor);
}

// Dot product with 16 independent accumulators (a fixed summation order g++ can vectorise).
template <typename A>
INRFLOW_ATTN_INLINE A dot(const A* __restrict a, const A* __restrict b, int64_t n) {
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

template <typename T>
INRFLOW_ATTN_INLINE void forward_items(const FwdArgs<T>& a, int64_t begin, int64_t end) {
  using A = Acc<T>;
  const AttentionDims& d = a.d;
  const int64_t rep = d.hq / d.hkv;
  const int64_t split = a.plan->split;
  std::vector<A> buf(rep * d.dim + d.dim + d.dim_v + rep * split + rep * d.dim_v + 2 * rep);
  A* qbuf = buf.data();
  A* kbuf = qbuf + rep * d.dim;
  A* vbuf = kbuf + d.dim;
  A* score = vbuf + d.dim_v;
  A* acc = score + rep * split;
  A* ml = acc + rep * d.dim_v;
  for (int64_t item = begin; item < end; ++item) {
    const SplitRange s = locate(*a.plan, d.hkv, item);
    const int64_t len = s.end - s.begin;
    const int64_t head0 = s.group * d.hq + s.head * rep;
    const A* qr = as_acc(a.q + head0 * d.dim, rep * d.dim, qbuf);
    for (int64_t j = 0; j < len; ++j) {
      const A* kr = as_acc(a.k + ((s.begin + j) * d.hkv + s.head) * d.dim, d.dim, kbuf);
      for (int64_t r = 0; r < rep; ++r) score[r * split + j] = dot(qr + r * d.dim, kr, d.dim);
    }
    for (int64_t r = 0; r < rep; ++r) {
      A* row = score + r * split;
      A m = -std::numeric_limits<A>::infinity();
      for (int64_t j = 0; j < len; ++j) m = std::max(m, row[j] * a.scale);
      A l = A(0);
      for (int64_t j = 0; j < len; ++j) {
        row[j] = std::exp(row[j] * a.scale - m);
        l += row[j];
      }
      ml[2 * r] = m;
      ml[2 * r + 1] = l;
    }
    std::fill(acc, acc + rep * d.dim_v, A(0));
    for (int64_t j = 0; j < len; ++j) {
      const A* vr = as_acc(a.v + ((s.begin + j) * d.hkv + s.head) * d.dim_v, d.dim_v, vbuf);
      for (int64_t r = 0; r < rep; ++r) axpy(acc + r * d.dim_v, score[r * split + j], vr, d.dim_v);
    }
    for (int64_t r = 0; r < rep; ++r) {
      if (s.count == 1) {
        store_row(a.out + (head0 + r) * d.dim_v, acc + r * d.dim_v, A(1) / ml[2 * r + 1],
                  d.dim_v);
        a.lse[head0 + r] = ml[2 * r] + std::log(ml[2 * r + 1]);
      } else {
        const int64_t slot = s.slot * d.hq + s.head * rep + r;
        a.part_ml[2 * slot] = ml[2 * r];
        a.part_ml[2 * slot + 1] = ml[2 * r + 1];
        std::copy(acc + r * d.dim_v, acc + (r + 1) * d.dim_v, a.part_acc + slot * d.dim_v);
      }
    }
  }
}

template <typename T>
INRFLOW_ATTN_INLINE void backward_items(const BwdArgs<T>& a, int64_t begin, int64_t end) {
  using A = Acc<T>;
  const AttentionDims& d = a.d;
  const int64_t rep = d.hq / d.hkv;
  std::vector<A> buf(2 * rep * d.dim + 2 * rep * d.dim_v + 2 * (d.dim + d.dim_v) + 4 * rep);
  A* qbuf = buf.data();
  A* dqacc = qbuf + rep * d.dim;
  A* dobuf = dqacc + rep * d.dim;
  A* obuf = dobuf + rep * d.dim_v;
  A* kbuf = obuf + rep * d.dim_v;
  A* vbuf = kbuf + d.dim;
  A* dkrow = vbuf + d.dim_v;
  A* dvrow = dkrow + d.dim;
  A* delta = dvrow + d.dim_v;
  A* lse = delta + rep;
  A* p = lse + rep;
  A* ds = p + rep;
  for (int64_t item = begin; item < end; ++item) {
    const SplitRange s = locate(*a.plan, d.hkv, item);
    const int64_t len = s.end - s.begin;
    const int64_t head0 = s.group * d.hq + s.head * rep;
    const A* qr = as_acc(a.q + head0 * d.dim, rep * d.dim, qbuf);
    const A* dor = as_acc(a.grad_out + head0 * d.dim_v, rep * d.dim_v, dobuf);
    const A* orr = as_acc(a.out + head0 * d.dim_v, rep * d.dim_v, obuf);
    for (int64_t r = 0; r < rep; ++r) {
      delta[r] = dot(dor + r * d.dim_v, orr + r * d.dim_v, d.dim_v);
      lse[r] = a.lse[head0 + r];
    }
    std::fill(dqacc, dqacc + rep * d.dim, A(0));
    for (int64_t j = 0; j < len; ++j) {
      const int64_t row = (s.begin + j) * d.hkv + s.head;
      const A* kr = as_acc(a.k + row * d.dim, d.dim, kbuf);
      const A* vr = as_acc(a.v + row * d.dim_v, d.dim_v, vbuf);
      for (int64_t r = 0; r < rep; ++r) {
        p[r] = std::exp(dot(qr + r * d.dim, kr, d.dim) * a.scale - lse[r]);
        ds[r] = p[r] * (dot(dor + r * d.dim_v, vr, d.dim_v) - delta[r]);
      }
      std::fill(dkrow, dkrow + d.dim, A(0));
      std::fill(dvrow, dvrow + d.dim_v, A(0));
      for (int64_t r = 0; r < rep; ++r) {
        axpy(dkrow, ds[r], qr + r * d.dim, d.dim);
        axpy(dvrow, p[r], dor + r * d.dim_v, d.dim_v);
        axpy(dqacc + r * d.dim, ds[r], kr, d.dim);
      }
      store_row(a.dk + row * d.dim, dkrow, a.scale, d.dim);
      store_row(a.dv + row * d.dim_v, dvrow, A(1), d.dim_v);
    }
    if (s.count == 1) {
      store_row(a.dq + head0 * d.dim, dqacc, a.scale, rep * d.dim);
    } else {
      A* dst = a.part_dq + (s.slot * d.hq + s.head * rep) * d.dim;
      for (int64_t i = 0; i < rep * d.dim; ++i) dst[i] = dqacc[i] * a.scale;
    }
  }
}

// Entry points per ISA: the AVX2 clones inline the same templates under target("avx2,fma,f16c").
template <typename T>
void forward_items_baseline(const FwdArgs<T>& a, int64_t b, int64_t e) {
  forward_items<T>(a, b, e);
}
template <typename T>
void backward_items_baseline(const BwdArgs<T>& a, int64_t b, int64_t e) {
  backward_items<T>(a, b, e);
}

template <typename T>
INRFLOW_TARGET_AVX2_FMA void forward_items_avx2(const FwdArgs<T>& a, int64_t b, int64_t e) {
  forward_items<T>(a, b, e);
}
template <typename T>
INRFLOW_TARGET_AVX2_FMA void backward_items_avx2(const BwdArgs<T>& a, int64_t b, int64_t e) {
  backward_items<T>(a, b, e);
}

// Tasks per at::parallel_for chunk: about 64k multiply-adds each.
int64_t grain(const AttentionDims& d, const CpuPlan& p) {
  const int64_t keys = std::max<int64_t>(1, d.tokens / std::max<int64_t>(1, p.splits()));
  const int64_t work = keys * (d.hq / d.hkv) * (d.dim + d.dim_v);
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work));
}

template <typename T>
void forward_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const CpuPlan& plan, const AttentionDims& d, double scale, at::Tensor& out,
                   at::Tensor& lse) {
  using A = Acc<T>;
  std::vector<A> part_ml(2 * plan.slots() * d.hq);
  std::vector<A> part_acc(plan.slots() * d.hq * d.dim_v);
  FwdArgs<T> a{q.const_data_ptr<T>(), k.const_data_ptr<T>(), v.const_data_ptr<T>(),
               out.mutable_data_ptr<T>(), lse.mutable_data_ptr<A>(), part_ml.data(),
               part_acc.data(), &plan, d, static_cast<A>(scale)};
  cpu::parallel_for_isa(
      cpu::Isa::kAvx2Fma, plan.splits() * d.hkv, grain(d, plan),
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
        A m = -std::numeric_limits<A>::infinity();
        for (int64_t i = 0; i < n; ++i) {
          m = std::max(m, part_ml[2 * ((plan.slot_off[g] + i) * d.hq + h)]);
        }
        A l = A(0);
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t i = 0; i < n; ++i) {
          const int64_t slot = (plan.slot_off[g] + i) * d.hq + h;
          const A w = std::exp(part_ml[2 * slot] - m);
          l += part_ml[2 * slot + 1] * w;
          axpy(acc.data(), w, part_acc.data() + slot * d.dim_v, d.dim_v);
        }
        store_row(dst, acc.data(), A(1) / l, d.dim_v);
        a.lse[g * d.hq + h] = m + std::log(l);
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
  std::vector<A> part_dq(plan.slots() * d.hq * d.dim);
  BwdArgs<T> a{grad_out.const_data_ptr<T>(), q.const_data_ptr<T>(), k.const_data_ptr<T>(),
               v.const_data_ptr<T>(), out.const_data_ptr<T>(), lse.const_data_ptr<A>(),
               dq.mutable_data_ptr<T>(), dk.mutable_data_ptr<T>(), dv.mutable_data_ptr<T>(),
               part_dq.data(), &plan, d, static_cast<A>(scale)};
  cpu::parallel_for_isa(
      cpu::Isa::kAvx2Fma, plan.splits() * d.hkv, grain(d, plan),
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
  at::Tensor out = at::empty({d.groups, d.hq, d.dim_v}, q.options());
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
  at::Tensor dq = at::empty({d.groups, d.hq, d.dim}, q.options());
  at::Tensor dk = at::empty({d.tokens, d.hkv, d.dim}, q.options());
  at::Tensor dv = at::empty({d.tokens, d.hkv, d.dim_v}, q.options());
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
