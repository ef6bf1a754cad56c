// Helpers shared by the CUDA registrations in csrc/cuda/*.cpp (host code, WITH_CUDA builds only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "inrflow/common.h"

namespace inrflow {

// The torch-free launchers take the dtype as an inrflow::DType code.
inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::Float32;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    case at::kDouble:
      return DType::Float64;
    default:
      TORCH_CHECK(false, "inrflow: unsupported dtype ", t);  // the op checks reject it first
  }
}

// Launchers return a cudaError_t code (0 = success); turn a failure into a Python exception.
inline void check_launch(const char* op, int32_t code) {
  TORCH_CHECK(code == 0, op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(code)));
}

}  // namespace inrflow
