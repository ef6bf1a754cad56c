// Torch-facing API of the fused Fourier embedding: argument validation shared by the CPU and CUDA
// registrations, and the CPU implementations registered in csrc/ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace inrflow {

// Sizes of one embedding call, with all leading dimensions of x flattened into `rows`.
struct FourierDims {
  int64_t rows;
  int64_t channels;
  int64_t num_freqs;
  bool include_input;
  int64_t width() const { return channels * (2 * num_freqs + (include_input ? 1 : 0)); }
};

// TORCH_CHECKs of fourier_embed(x, freqs, include_input): x floating (fp32/fp16/bf16/fp64) with
// at least one dimension, freqs a non-empty 1-D float32 tensor on x's device, and an output row
// width the kernels can index.
FourierDims check_fourier_forward(const at::Tensor& x, const at::Tensor& freqs,
                                  bool include_input);

// TORCH_CHECKs of fourier_embed_backward(grad_out, out, freqs, include_input): grad_out and out
// of equal shape and dtype on freqs' device, out.size(-1) a multiple of 2F (+1).
FourierDims check_fourier_backward(const at::Tensor& grad_out, const at::Tensor& out,
                                   const at::Tensor& freqs, bool include_input);

// Empty output of the forward ([..., width]) and of the backward ([..., channels]).
at::Tensor empty_fourier_output(const at::Tensor& x, const FourierDims& dims);
at::Tensor empty_fourier_grad(const at::Tensor& out, const FourierDims& dims);

at::Tensor fourier_embed_cpu(const at::Tensor& x, const at::Tensor& freqs, bool include_input);
at::Tensor fourier_embed_backward_cpu(const at::Tensor& grad_out, const at::Tensor& out,
                                      const at::Tensor& freqs, bool include_input);

}  // namespace inrflow
