// Torch-facing API of the assignment ops: validation shared by the CPU registrations
// (csrc/cpu/assign_cpu.cpp, which also defines the schemas) and the CUDA ones
// (csrc/cuda/assign_cuda.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <tuple>

#include "inrflow/assign.h"

namespace inrflow {

// Sizes of one nearest_assign call; a 2-D argument is shared by the batch (batch stride 0).
struct NearestDims {
  int64_t batch;
  int64_t n;
  int64_t k;
  int64_t d;
  int64_t points_batch_stride;   // elements
  int64_t centers_batch_stride;  // elements
  bool batched;                  // output [B, N] rather than [N]
};

// TORCH_CHECKs of nearest_assign(points, centers): same float dtype and device, ranks 2 or 3,
// 1 <= d <= kMaxDim equal in both, K >= 1, equal batch sizes when both are batched.
NearestDims check_nearest_assign(const at::Tensor& points, const at::Tensor& centers);

// TORCH_CHECKs of grid_assign(points, grid_shape, low, high) and the resulting GridSpec (the
// axis_offset fields index the table built by grid_axis_table).
assign::GridSpec check_grid_assign(const at::Tensor& points, c10::IntArrayRef grid_shape,
                                   c10::ArrayRef<double> low, c10::ArrayRef<double> high);

// Cell centres of every axis, concatenated, built with the very tensor ops of
// reference._axis_centers (fp64, rounded to points' dtype) and then cast to the accumulation type
// (fp32, fp64 for fp64 points), on points' device.
at::Tensor grid_axis_table(const at::Tensor& points, const assign::GridSpec& spec);

// TORCH_CHECKs of group_layout(assign, num_groups); returns (batch, n).
std::tuple<int64_t, int64_t> check_group_layout(const at::Tensor& assign, int64_t num_groups);

// Output shape of nearest_assign / grid_assign: points' shape without the last dimension, or
// [B, N] when only the centres are batched.
std::vector<int64_t> assign_output_shape(const at::Tensor& points, const NearestDims& dims);

}  // namespace inrflow
