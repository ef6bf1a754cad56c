// Torch-facing API of grouped local cross-attention: argument checks shared by the CPU and CUDA
// registrations, and the CPU implementations (csrc/cpu/attention_cpu.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace inrflow {

// Sizes of one call: q [G, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], offsets [G+1].
struct AttentionDims {
  int64_t groups;
  int64_t tokens;
  int64_t hq;
  int64_t hkv;
  int64_t dim;
  int64_t dim_v;
};

// TORCH_CHECKs shared by every grouped_cross_attention op: ranks, shapes, Hq % Hkv == 0, one
// float dtype (fp32/fp16/bf16/fp64) for q, k, v, int32/int64 offsets of G + 1 entries, one
// device, finite scale.
AttentionDims check_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& offsets, double scale);

// Additional checks of the backward: grad_out and out [G, Hq, Dv] in q's dtype, lse [G, Hq] in
// the accumulation dtype (float32; float64 for fp64 inputs), all on q's device.
void check_attention_backward(const char* op, const AttentionDims& d, const at::Tensor& q,
                              const at::Tensor& grad_out, const at::Tensor& out,
                              const at::Tensor& lse);

// dtype of the saved log-sum-exp: float64 for fp64 inputs, else float32.
at::ScalarType lse_dtype(at::ScalarType t);

std::tuple<at::Tensor, at::Tensor> grouped_cross_attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
    double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_cross_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& offsets, const at::Tensor& out, const at::Tensor& lse, double scale);

}  // namespace inrflow
