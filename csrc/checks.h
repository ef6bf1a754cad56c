// Preconditions of every inrflow::* op, shared by the CPU wrappers (csrc/cpu/*.cpp) and the CUDA
// ones (csrc/cuda/*.cpp), and the output shapes that follow from them.
//
// Device-neutral on purpose: a check lives here once, so both devices raise the same
// TORCH_CHECK message for the same bad input (the tests match those messages). Each device
// wrapper then only adds its own "the <device> kernel got a tensor on ..." check. Checks of tensor
// *values* (CSR offsets, index ranges) are not here: reading values needs the host, so the CPU
// kernels do them where they read the data, and the CUDA kernels clamp instead.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "inrflow/assign.h"

namespace inrflow {

// ------------------------------------------------------------------------------------------------
// fourier_embed, fourier_embed_backward

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

// Empty contiguous output of the forward ([..., width]) and of the backward ([..., channels]).
at::Tensor empty_fourier_output(const at::Tensor& x, const FourierDims& dims);
at::Tensor empty_fourier_grad(const at::Tensor& out, const FourierDims& dims);

// ------------------------------------------------------------------------------------------------
// nearest_assign, grid_assign, group_layout

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

// Output shape of nearest_assign: [N], or [B, N] when either argument is batched.
std::vector<int64_t> assign_output_shape(const NearestDims& dims);

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

// ------------------------------------------------------------------------------------------------
// grouped_cross_attention, grouped_cross_attention_forward, grouped_cross_attention_backward

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

}  // namespace inrflow
