// Torch-free math of the assignment ops (nearest_assign, grid_assign, group_layout), shared by the
// CUDA kernels (csrc/kernels/assign.cu), the CPU kernels (csrc/cpu/assign_cpu.cpp) and the
// emulated test build, plus the C launchers of assign.cu.
//
// Bit-identity with inrflow/ops/reference.py: a squared distance is
//   acc = (p_0 - c_0)^2;  acc = acc + (p_j - c_j)^2  for j = 1..d-1,
// every step rounded to the accumulation type (fp32, fp64 for fp64 inputs) and never contracted
// to a fused multiply-add. On the device the _rn intrinsics forbid contraction; host code is
// compiled as ISO C++ (g++ then defaults to -ffp-contract=off) and the CPU kernels' AVX2 clones
// do not enable FMA. Ties go to the lowest index (strict `<` over increasing indices).
#pragma once

#include <cmath>
#include <cstdint>

#include "inrflow/common.h"

namespace inrflow {
namespace assign {

// Largest coordinate dimension of nearest_assign / grid_assign kernels.
constexpr int kMaxDim = 8;

// Rounded arithmetic that the compiler may not fuse (see the file comment).
INRFLOW_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
INRFLOW_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
INRFLOW_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
INRFLOW_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
INRFLOW_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
INRFLOW_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// (p - c)^2, rounded after the subtraction and after the product.
template <typename Acc>
INRFLOW_HD Acc sq_diff(Acc p, Acc c) {
  const Acc diff = sub_rn(p, c);
  return mul_rn(diff, diff);
}

// Squared distance of a point to a centre, D known at compile time (0: runtime d <= kMaxDim).
// `c` is strided so that the same code reads AoS (stride 1) and SoA (stride K) centres.
template <int D, typename Acc>
INRFLOW_HD Acc sq_dist(const Acc* p, const Acc* c, int64_t c_stride, int d) {
  const int dims = D > 0 ? D : d;
  Acc acc = sq_diff(p[0], c[0]);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int j = 1; j < (D > 0 ? D : kMaxDim); ++j) {
    if (j < dims) acc = add_rn(acc, sq_diff(p[j], c[j * c_stride]));
  }
  return acc;
}

// The lexicographic order of (distance, index): true when (d, i) beats (best_d, best_i).
template <typename Acc>
INRFLOW_HD bool better(Acc d, int64_t i, Acc best_d, int64_t best_i) {
  return d < best_d || (d == best_d && i < best_i);
}

// Grid description passed by value to grid_assign kernels. Axis j has shape[j] cells starting at
// `low[j]` of width `step[j] = (high[j] - low[j]) / shape[j]` (computed in double, as Python
// does); the cell centres of axis j are axis_centers[axis_offset[j] + i], computed by the caller
// exactly like reference._axis_centers (fp64, rounded to the input dtype, then to Acc).
struct GridSpec {
  int32_t dims;
  int64_t shape[kMaxDim];
  int64_t axis_offset[kMaxDim];
  double low[kMaxDim];
  double step[kMaxDim];
};

// floor(clamp((p - low) / step, -1, n)) of one axis, in the reference's precision: Python
// scalars meet an Acc tensor, so low and step are first rounded to Acc.
template <typename Acc>
INRFLOW_HD int64_t grid_base_cell(Acc p, double low, double step, int64_t n) {
  Acc t = static_cast<Acc>(sub_rn(p, static_cast<Acc>(low)) / static_cast<Acc>(step));
  const Acc lo = static_cast<Acc>(-1.0);
  const Acc hi = static_cast<Acc>(n);
  // clamp as torch.clamp: NaN stays NaN (the op wrappers reject NaN before this point)
  t = t < lo ? lo : (t > hi ? hi : t);
  if (!(t == t)) return 0;
  const int64_t trunc = static_cast<int64_t>(t);  // t in [-1, n]: exact floor below
  return (static_cast<Acc>(trunc) > t) ? trunc - 1 : trunc;
}

// Nearest cell of one point: the lexicographic minimum of (distance, flat index) over the 3^d
// cells around the base cell (indices clamped into the grid), exactly the reference's search.
// `p` holds the point in Acc; `axes` the axis-centre table.
template <typename Acc>
INRFLOW_HD int64_t grid_nearest(const Acc* p, const Acc* axes, const GridSpec& g) {
  int64_t base[kMaxDim];
  for (int j = 0; j < g.dims; ++j) base[j] = grid_base_cell(p[j], g.low[j], g.step[j], g.shape[j]);
  int64_t total = 1;
  for (int j = 0; j < g.dims; ++j) total *= 3;
  Acc best_d = Acc(0);
  int64_t best_i = -1;
  for (int64_t s = 0; s < total; ++s) {
    int64_t code = s;
    int64_t digits[kMaxDim];
    for (int j = g.dims - 1; j >= 0; --j) {
      digits[j] = code % 3;
      code /= 3;
    }
    Acc dist = Acc(0);
    int64_t flat = 0;
    for (int j = 0; j < g.dims; ++j) {
      int64_t i = base[j] + digits[j] - 1;
      i = i < 0 ? 0 : (i > g.shape[j] - 1 ? g.shape[j] - 1 : i);
      const Acc sq = sq_diff(p[j], axes[g.axis_offset[j] + i]);
      dist = j == 0 ? sq : add_rn(dist, sq);
      flat = flat * g.shape[j] + i;
    }
    if (best_i < 0 || better(dist, flat, best_d, best_i)) {
      best_d = dist;
      best_i = flat;
    }
  }
  return best_i;
}

// group_layout tiling shared by both backends: a row of n tokens is cut into tiles of
// `tile` tokens; counts are laid out [(b * K + k) * tiles + t] so that one exclusive scan in
// memory order yields each (sample, group, tile)'s first output slot, in stable order.
INRFLOW_HD int64_t group_tile_size(int64_t num_groups, int64_t min_tile) {
  int64_t t = num_groups > min_tile ? num_groups : min_tile;
  return (t + 31) / 32 * 32;
}

INRFLOW_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace assign
}  // namespace inrflow

// C launchers of csrc/kernels/assign.cu (return a cudaError_t code). Pointers are device
// pointers; all tensors contiguous. Declared only where a cudaStream_t exists: nvcc, the emulated
// build (its prelude defines the runtime types) and the host-side CUDA registrations (WITH_CUDA).
#if defined(__CUDACC__) || defined(INRFLOW_SIMT_EMULATION) || defined(WITH_CUDA)
#if !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_runtime_api.h>
#endif

extern "C" {

// out[b, n] = nearest centre of points[b, n] (int64). Points at points + b * points_batch_stride
// (elements; 0 = shared by every sample), centres likewise. dtype is an inrflow::DType code.
int32_t inrflow_nearest_assign(int32_t dtype, const void* points, const void* centers,
                               int64_t* out, int64_t batch, int64_t n, int64_t k, int64_t d,
                               int64_t points_batch_stride, int64_t centers_batch_stride,
                               cudaStream_t stream);

// out[r] = nearest grid cell of points[r] for `rows` points; `axis_centers` is the centre table
// of the GridSpec in the accumulation type (float for fp32/fp16/bf16 inputs, double for fp64).
int32_t inrflow_grid_assign(int32_t dtype, const void* points, const void* axis_centers,
                            inrflow::assign::GridSpec spec, int64_t* out, int64_t rows,
                            cudaStream_t stream);

// int32 elements of the workspace group_layout needs for these sizes.
int64_t inrflow_group_layout_workspace(int64_t batch, int64_t n, int64_t num_groups);

// perm [batch, n] (stable argsort of each row of assign) and offsets [batch * num_groups + 1].
// assign is int32 (index_bytes = 4) or int64 (8) with values in [0, num_groups).
int32_t inrflow_group_layout(int32_t index_bytes, const void* assign, int64_t batch, int64_t n,
                             int64_t num_groups, int64_t* perm, int32_t* offsets,
                             int32_t* workspace, int64_t workspace_elems, cudaStream_t stream);

}  // extern "C"
#endif
