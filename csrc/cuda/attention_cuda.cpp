// CUDA registration of the grouped cross-attention ops: torch wrappers that validate inputs (the
// checks shared with the CPU path, csrc/checks.h), allocate outputs and workspace, and call the
// torch-free launchers of csrc/kernels/grouped_attention.cu on the current stream. Host code,
// compiled only in WITH_CUDA builds, so nvcc never sees torch headers. Offset *values* are not
// checked here (that needs a device sync; the Python wrapper does it unless validate=False): the
// kernels clamp them, so invalid offsets give unspecified results but never out-of-bounds
// accesses.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "../checks.h"
#include "cuda_utils.h"
#include "inrflow/grouped_attention.h"
#include "inrflow/nvtx.h"

namespace inrflow {
namespace {

constexpr const char* kFwd = "inrflow::grouped_cross_attention_forward";
constexpr const char* kBwd = "inrflow::grouped_cross_attention_backward";

at::Tensor workspace(const char* op, const at::Tensor& like, int64_t nbytes) {
  TORCH_CHECK(nbytes >= 0, op, ": shapes not supported by the CUDA kernels (too many heads for "
              "the shared-memory scratch, or more than 65535 kv heads)");
  return at::empty({nbytes > 0 ? nbytes : 1}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& offsets,
                                                double scale) {
  INRFLOW_NVTX_RANGE("inrflow::grouped_cross_attention_forward (cuda)");
  const AttentionDims d = check_attention(kFwd, q, k, v, offsets, scale);
  TORCH_CHECK(q.is_cuda(), kFwd, ": the CUDA kernel got a tensor on ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({d.groups, d.hq, d.dim_v}, q.options());
  at::Tensor lse = at::empty({d.groups, d.hq}, q.options().dtype(lse_dtype(q.scalar_type())));
  if (d.groups == 0) return {out, lse};
  const at::Tensor qc = q.contiguous();
  const at::Tensor kc = k.contiguous();
  const at::Tensor vc = v.contiguous();
  const at::Tensor oc = offsets.to(at::kLong).contiguous();
  const int32_t dtype = static_cast<int32_t>(to_dtype(q.scalar_type()));
  const at::Tensor ws = workspace(
      kFwd, q,
      inrflow_grouped_attention_workspace_bytes(dtype, 0, d.groups, d.tokens, d.hq, d.hkv, d.dim,
                                                d.dim_v, 0));
  const int32_t code = inrflow_grouped_attention_forward(
      dtype, qc.const_data_ptr(), kc.const_data_ptr(), vc.const_data_ptr(),
      oc.const_data_ptr<int64_t>(), out.mutable_data_ptr(), lse.mutable_data_ptr(),
      ws.mutable_data_ptr(), d.groups, d.tokens, d.hq, d.hkv, d.dim, d.dim_v, scale, 0,
      c10::cuda::getCurrentCUDAStream().stream());
  check_launch(kFwd, code);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& offsets, const at::Tensor& out, const at::Tensor& lse, double scale) {
  INRFLOW_NVTX_RANGE("inrflow::grouped_cross_attention_backward (cuda)");
  const AttentionDims d = check_attention(kBwd, q, k, v, offsets, scale);
  check_attention_backward(kBwd, d, q, grad_out, out, lse);
  TORCH_CHECK(q.is_cuda(), kBwd, ": the CUDA kernel got a tensor on ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty({d.groups, d.hq, d.dim}, q.options());
  at::Tensor dk = at::empty({d.tokens, d.hkv, d.dim}, q.options());
  at::Tensor dv = at::empty({d.tokens, d.hkv, d.dim_v}, q.options());
  if (d.groups == 0) return {dq, dk, dv};
  const at::Tensor gc = grad_out.contiguous();
  const at::Tensor qc = q.contiguous();
  const at::Tensor kc = k.contiguous();
  const at::Tensor vc = v.contiguous();
  const at::Tensor outc = out.contiguous();
  const at::Tensor lc = lse.contiguous();
  const at::Tensor oc = offsets.to(at::kLong).contiguous();
  const int32_t dtype = static_cast<int32_t>(to_dtype(q.scalar_type()));
  const at::Tensor ws = workspace(
      kBwd, q,
      inrflow_grouped_attention_workspace_bytes(dtype, 1, d.groups, d.tokens, d.hq, d.hkv, d.dim,
                                                d.dim_v, 0));
  const int32_t code = inrflow_grouped_attention_backward(
      dtype, gc.const_data_ptr(), qc.const_data_ptr(), kc.const_data_ptr(), vc.const_data_ptr(),
      oc.const_data_ptr<int64_t>(), outc.const_data_ptr(), lc.const_data_ptr(),
      dq.mutable_data_ptr(), dk.mutable_data_ptr(), dv.mutable_data_ptr(), ws.mutable_data_ptr(),
      d.groups, d.tokens, d.hq, d.hkv, d.dim, d.dim_v, scale, 0,
      c10::cuda::getCurrentCUDAStream().stream());
  check_launch(kBwd, code);
  return {dq, dk, dv};
}

at::Tensor public_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& offsets, double scale) {
  return std::get<0>(forward_cuda(q, k, v, offsets, scale));
}

}  // namespace
}  // namespace inrflow

TORCH_LIBRARY_IMPL(inrflow, CUDA, m) {
  m.impl("grouped_cross_attention", &inrflow::public_cuda);
  m.impl("grouped_cross_attention_forward", &inrflow::forward_cuda);
  m.impl("grouped_cross_attention_backward", &inrflow::backward_cuda);
}
