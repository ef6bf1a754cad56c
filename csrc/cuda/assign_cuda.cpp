// CUDA registration of the assignment ops: torch wrappers that validate inputs (the checks shared
// with the CPU path, csrc/checks.h), allocate outputs and workspace and call the torch-free
// launchers of csrc/kernels/assign.cu on the current stream. Host code (WITH_CUDA builds only).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "cuda_utils.h"
#include "inrflow/assign.h"
#include "inrflow/nvtx.h"

namespace inrflow {
namespace {

at::Tensor nearest_assign_cuda(const at::Tensor& points, const at::Tensor& centers) {
  INRFLOW_NVTX_RANGE("inrflow::nearest_assign (cuda)");
  const NearestDims dims = check_nearest_assign(points, centers);
  TORCH_CHECK(points.is_cuda(), "inrflow::nearest_assign: the CUDA kernel got a tensor on ",
              points.device());
  const c10::cuda::CUDAGuard guard(points.device());
  const at::Tensor pc = points.contiguous();
  const at::Tensor cc = centers.contiguous();
  at::Tensor out = at::empty(assign_output_shape(dims), points.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const int32_t code = inrflow_nearest_assign(
      static_cast<int32_t>(to_dtype(points.scalar_type())), pc.const_data_ptr(),
      cc.const_data_ptr(), out.mutable_data_ptr<int64_t>(), dims.batch, dims.n, dims.k, dims.d,
      dims.points_batch_stride, dims.centers_batch_stride,
      c10::cuda::getCurrentCUDAStream().stream());
  check_launch("inrflow::nearest_assign", code);
  return out;
}

at::Tensor grid_assign_cuda(const at::Tensor& points, c10::IntArrayRef grid_shape,
                            c10::ArrayRef<double> low, c10::ArrayRef<double> high) {
  INRFLOW_NVTX_RANGE("inrflow::grid_assign (cuda)");
  const assign::GridSpec spec = check_grid_assign(points, grid_shape, low, high);
  TORCH_CHECK(points.is_cuda(), "inrflow::grid_assign: the CUDA kernel got a tensor on ",
              points.device());
  const c10::cuda::CUDAGuard guard(points.device());
  const at::Tensor pc = points.contiguous();
  std::vector<int64_t> shape(points.sizes().begin(), points.sizes().end() - 1);
  at::Tensor out = at::empty(shape, points.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const at::Tensor table = grid_axis_table(points, spec);
  const int32_t code = inrflow_grid_assign(
      static_cast<int32_t>(to_dtype(points.scalar_type())), pc.const_data_ptr(),
      table.const_data_ptr(), spec, out.mutable_data_ptr<int64_t>(), out.numel(),
      c10::cuda::getCurrentCUDAStream().stream());
  check_launch("inrflow::grid_assign", code);
  return out;
}

std::tuple<at::Tensor, at::Tensor> group_layout_cuda(const at::Tensor& assign,
                                                     int64_t num_groups) {
  INRFLOW_NVTX_RANGE("inrflow::group_layout (cuda)");
  const auto [batch, n] = check_group_layout(assign, num_groups);
  TORCH_CHECK(assign.is_cuda(), "inrflow::group_layout: the CUDA kernel got a tensor on ",
              assign.device());
  const c10::cuda::CUDAGuard guard(assign.device());
  const at::Tensor ac = assign.contiguous();
  at::Tensor perm = at::empty(assign.sizes(), assign.options().dtype(at::kLong));
  at::Tensor offsets = at::empty({batch * num_groups + 1}, assign.options().dtype(at::kInt));
  const int64_t slots = inrflow_group_layout_workspace(batch, n, num_groups);
  TORCH_CHECK(slots >= 0, "inrflow::group_layout: bad sizes");
  at::Tensor workspace = at::empty({slots}, assign.options().dtype(at::kInt));
  const int32_t code = inrflow_group_layout(
      static_cast<int32_t>(assign.element_size()), ac.const_data_ptr(), batch, n, num_groups,
      perm.mutable_data_ptr<int64_t>(), offsets.mutable_data_ptr<int32_t>(),
      workspace.mutable_data_ptr<int32_t>(), slots, c10::cuda::getCurrentCUDAStream().stream());
  check_launch("inrflow::group_layout", code);
  return {perm, offsets};
}

}  // namespace
}  // namespace inrflow

TORCH_LIBRARY_IMPL(inrflow, CUDA, m) {
  m.impl("nearest_assign", &inrflow::nearest_assign_cuda);
  m.impl("grid_assign", &inrflow::grid_assign_cuda);
  m.impl("group_layout", &inrflow::group_layout_cuda);
}
