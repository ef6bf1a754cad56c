// Torch-free definitions shared by the CUDA kernels (nvcc), the CPU kernels (g++) and the
// emulated kernel test build (g++ + tests/simt/prelude.h).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(INRFLOW_SIMT_EMULATION)
#define INRFLOW_HD __host__ __device__ __forceinline__
#else
#define INRFLOW_HD inline
#endif

namespace inrflow {

// Element types understood by the torch-free launchers. Values are part of the C ABI used by
// the emulated-kernel tests (ctypes), so never renumber them.
enum class DType : int32_t { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

}  // namespace inrflow
