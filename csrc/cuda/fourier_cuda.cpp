// CUDA registration of the Fourier-embedding ops: torch wrappers that validate inputs (the checks
// shared with the CPU path, csrc/checks.h), allocate outputs and call the torch-free launchers of
// csrc/kernels/fourier.cu on the current stream. Compiled by the host compiler (only in WITH_CUDA
// builds), so nvcc never sees torch headers.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>

#include "../checks.h"
#include "cuda_utils.h"
#include "inrflow/fourier.h"
#include "inrflow/nvtx.h"

namespace inrflow {
namespace {

at::Tensor fourier_embed_cuda(const at::Tensor& x, const at::Tensor& freqs, bool include_input) {
  INRFLOW_NVTX_RANGE("inrflow::fourier_embed (cuda)");
  const FourierDims d = check_fourier_forward(x, freqs, include_input);
  TORCH_CHECK(x.is_cuda(), "inrflow::fourier_embed: the CUDA kernel got a tensor on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor fc = freqs.contiguous();
  at::Tensor out = empty_fourier_output(x, d);
  if (out.numel() == 0) return out;
  const int32_t code = inrflow_fourier_embed_forward(
      static_cast<int32_t>(to_dtype(x.scalar_type())), xc.const_data_ptr(),
      fc.const_data_ptr<float>(), out.mutable_data_ptr(), d.rows, d.channels, d.num_freqs,
      include_input ? 1 : 0, c10::cuda::getCurrentCUDAStream().stream());
  check_launch("inrflow::fourier_embed", code);
  return out;
}

at::Tensor fourier_embed_backward_cuda(const at::Tensor& grad_out, const at::Tensor& out,
                                       const at::Tensor& freqs, bool include_input) {
  INRFLOW_NVTX_RANGE("inrflow::fourier_embed_backward (cuda)");
  const FourierDims d = check_fourier_backward(grad_out, out, freqs, include_input);
  TORCH_CHECK(out.is_cuda(), "inrflow::fourier_embed_backward: the CUDA kernel got a tensor on ",
              out.device());
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor gc = grad_out.contiguous();
  const at::Tensor oc = out.contiguous();
  const at::Tensor fc = freqs.contiguous();
  at::Tensor grad_x = empty_fourier_grad(out, d);
  if (grad_x.numel() == 0) return grad_x;
  const int32_t code = inrflow_fourier_embed_backward(
      static_cast<int32_t>(to_dtype(out.scalar_type())), gc.const_data_ptr(), oc.const_data_ptr(),
      fc.const_data_ptr<float>(), grad_x.mutable_data_ptr(), d.rows, d.channels, d.num_freqs,
      include_input ? 1 : 0, c10::cuda::getCurrentCUDAStream().stream());
  check_launch("inrflow::fourier_embed_backward", code);
  return grad_x;
}

}  // namespace
}  // namespace inrflow

TORCH_LIBRARY_IMPL(inrflow, CUDA, m) {
  m.impl("fourier_embed", &inrflow::fourier_embed_cuda);
  m.impl("fourier_embed_backward", &inrflow::fourier_embed_backward_cuda);
}
