// Portable kernel launch used by every .cu file in csrc/kernels.
//
// g++ cannot parse `kernel<<<grid, block, smem, stream>>>(...)`, so kernels are launched through
// the typed variadic `cudaLaunchKernelEx` template of the CUDA runtime. nvcc gets it from
// cuda_runtime.h; the test-only emulation prelude (tests/simt/prelude.h) provides the same
// template, which runs the kernel on the CPU with one fiber per CUDA thread.
#pragma once

#include <cstddef>
#include <utility>

#if !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_runtime.h>
#endif

namespace inrflow {

template <typename... KernelArgs, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                                 size_t dynamic_smem_bytes, cudaStream_t stream, Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return cudaSuccess;  // nothing to do
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = dynamic_smem_bytes;
  config.stream = stream;
  config.attrs = nullptr;
  config.numAttrs = 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace inrflow
