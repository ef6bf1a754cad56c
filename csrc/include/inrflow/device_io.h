// Element loads and stores of the CUDA kernels: storage type T <-> accumulation type Io<T>::Acc
// (fp32 for fp32/fp16/bf16, fp64 for fp64). Device code only; shared by csrc/kernels/*.cu and
// usable under the SIMT emulation prelude.
#pragma once

#if !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace inrflow {

// load(p): a plain load. load_ro(p): through the read-only data cache (__ldg) where the type has
// one, for inputs that no thread of the kernel writes.
template <typename T>
struct Io;

template <>
struct Io<float> {
  using Acc = float;
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  static __device__ __forceinline__ float load_ro(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};

template <>
struct Io<double> {
  using Acc = double;
  static __device__ __forceinline__ double load(const double* p) { return *p; }
  static __device__ __forceinline__ double load_ro(const double* p) { return __ldg(p); }
  static __device__ __forceinline__ void store(double* p, double v) { *p = v; }
};

template <>
struct Io<__half> {
  using Acc = float;
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ float load_ro(const __half* p) { return load(p); }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
};

template <>
struct Io<__nv_bfloat16> {
  using Acc = float;
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) {
    return __bfloat162float(*p);
  }
  static __device__ __forceinline__ float load_ro(const __nv_bfloat16* p) { return load(p); }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) {
    *p = __float2bfloat16_rn(v);
  }
};

}  // namespace inrflow
