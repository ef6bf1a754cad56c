// Test-only SIMT emulation prelude: lets g++ compile the unchanged CUDA kernel files of
// csrc/kernels/*.cu so that pytest can run them on the CPU (see tests/simt/README.md). Use it as
//   g++ -x c++ -std=c++17 -O1 -fno-strict-aliasing -fno-extern-tls-init -fPIC
//       -include tests/simt/prelude.h -I csrc/include -I $CUDA_HOME/include kernel.cu ...
// and link tests/simt/runtime.cpp; tests/emulation.py does all of that, and also defines the
// symbols of `extern __shared__` arrays at link time.
//
// Every CUDA thread of a block is a user-level fiber on one OS thread; `__syncthreads` and the
// warp collectives are real rendezvous points implemented in runtime.cpp. Nothing here is ever
// compiled into the shipped extension.
#pragma once

#define INRFLOW_SIMT_EMULATION 1

// glibc's fortified longjmp refuses to jump between stacks, which is exactly what fibers do.
#ifdef _FORTIFY_SOURCE
#undef _FORTIFY_SOURCE
#endif

// Standard headers first: some of them spell attributes as __noinline__, which is redefined below.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>  // libstdc++'s wrapper puts std::isnan, abs(float), ... in the global namespace
#include <memory>
#include <new>
#include <stdlib.h>
#include <tuple>
#include <type_traits>
#include <utility>

// Real CUDA types from the toolkit's host-safe headers (dim3, cudaError_t, cudaStream_t,
// cudaLaunchConfig_t, __half, __nv_bfloat16 with their host conversion paths, ...).
#include <driver_types.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// The runtime headers are replaced by this file: make later includes of them no-ops.
#define __CUDA_RUNTIME_H__
#define __DEVICE_LAUNCH_PARAMETERS_H__
#define __DEVICE_ATOMIC_FUNCTIONS_H__

// ---------------------------------------------------------------------------------------------
// CUDA keywords for the host compiler.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __grid_constant__
#undef __launch_bounds__
#undef __noinline__
#undef __restrict__
#undef __align__
#undef __maxnreg__
#undef __cluster_dims__
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __cluster_dims__(...)
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
// Block-scope __shared__ arrays become static storage shared by every fiber of the block (one OS
// thread runs a whole block). `thread_local` rather than `static` so that `extern __shared__`
// (dynamic shared memory) still parses; tests/emulation.py defines those symbols at link time.
#define __shared__ thread_local
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#if !defined(__has_builtin) || !__has_builtin(__builtin_assume)
#define __builtin_assume(x) ((void)0)
#endif

#define SIMT_API __attribute__((visibility("hidden")))

// ---------------------------------------------------------------------------------------------
// Built-in index variables: plain globals that the scheduler rewrites before each fiber switch.
extern SIMT_API uint3 threadIdx;
extern SIMT_API uint3 blockIdx;
extern SIMT_API dim3 blockDim;
extern SIMT_API dim3 gridDim;
constexpr int warpSize = 32;

namespace simt {

// Warp collective kinds understood by warp_collective() in runtime.cpp.
enum Op : int {
  kShflIdx = 0,
  kShflUp,
  kShflDown,
  kShflXor,
  kBallot,
  kAny,
  kAll,
  kUni,
  kSyncWarp,
  kMatchAny,
  kMatchAll,
  kReduceAdd,
  kReduceMinU,
  kReduceMaxU,
  kReduceMinS,
  kReduceMaxS,
  kReduceAnd,
  kReduceOr,
  kReduceXor,
  kNumOps
};

// Block barrier kinds (__syncthreads and its reducing variants).
enum BarrierKind : int { kBarrierPlain = 0, kBarrierCount, kBarrierAnd, kBarrierOr };

SIMT_API int barrier(const char* file, int line, int kind, int predicate);
SIMT_API uint64_t warp_collective(int op, unsigned mask, uint64_t value, int arg, int width,
                                  const char* file, int line);
SIMT_API unsigned activemask(const char* file, int line);
SIMT_API void yield();
SIMT_API long long clock_ticks();
[[noreturn]] SIMT_API void trap(const char* what, const char* file, int line);
SIMT_API cudaError_t launch(const cudaLaunchConfig_t* config, const void* kernel,
                            void (*body)(void*), void* ctx);

template <class T>
inline uint64_t to_bits(const T& v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp collectives move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <class T>
inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <class To, class From>
inline To bit_cast(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

}  // namespace simt

// ---------------------------------------------------------------------------------------------
// Barriers and warp collectives. Call sites are recorded for error messages.
#define __syncthreads() ::simt::barrier(__FILE__, __LINE__, ::simt::kBarrierPlain, 1)
#define __syncthreads_count(p) ::simt::barrier(__FILE__, __LINE__, ::simt::kBarrierCount, (p))
#define __syncthreads_and(p) ::simt::barrier(__FILE__, __LINE__, ::simt::kBarrierAnd, (p))
#define __syncthreads_or(p) ::simt::barrier(__FILE__, __LINE__, ::simt::kBarrierOr, (p))
#define __trap() ::simt::trap("__trap()", __FILE__, __LINE__)
#define __brkpt() ::simt::trap("__brkpt()", __FILE__, __LINE__)

#define SIMT_LOC const char *simt_file = __builtin_FILE(), int simt_line = __builtin_LINE()

inline void __syncwarp(unsigned mask = 0xffffffffu, SIMT_LOC) {
  ::simt::warp_collective(::simt::kSyncWarp, mask, 0, 0, 32, simt_file, simt_line);
}

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, SIMT_LOC) {
  return ::simt::from_bits<T>(::simt::warp_collective(::simt::kShflIdx, mask,
                                                      ::simt::to_bits(var), srcLane, width,
                                                      simt_file, simt_line));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, SIMT_LOC) {
  return ::simt::from_bits<T>(::simt::warp_collective(::simt::kShflUp, mask,
                                                      ::simt::to_bits(var),
                                                      static_cast<int>(delta), width,
                                                      simt_file, simt_line));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, SIMT_LOC) {
  return ::simt::from_bits<T>(::simt::warp_collective(::simt::kShflDown, mask,
                                                      ::simt::to_bits(var),
                                                      static_cast<int>(delta), width,
                                                      simt_file, simt_line));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize, SIMT_LOC) {
  return ::simt::from_bits<T>(::simt::warp_collective(::simt::kShflXor, mask,
                                                      ::simt::to_bits(var), laneMask, width,
                                                      simt_file, simt_line));
}

inline unsigned __ballot_sync(unsigned mask, int predicate, SIMT_LOC) {
  return static_cast<unsigned>(::simt::warp_collective(::simt::kBallot, mask, predicate != 0, 0,
                                                       32, simt_file, simt_line));
}
inline int __any_sync(unsigned mask, int predicate, SIMT_LOC) {
  return static_cast<int>(::simt::warp_collective(::simt::kAny, mask, predicate != 0, 0, 32,
                                                  simt_file, simt_line));
}
inline int __all_sync(unsigned mask, int predicate, SIMT_LOC) {
  return static_cast<int>(::simt::warp_collective(::simt::kAll, mask, predicate != 0, 0, 32,
                                                  simt_file, simt_line));
}
inline int __uni_sync(unsigned mask, int predicate, SIMT_LOC) {
  return static_cast<int>(::simt::warp_collective(::simt::kUni, mask, predicate != 0, 0, 32,
                                                  simt_file, simt_line));
}
// Lanes of the warp that reached this same call site (the emulator's notion of "converged").
inline unsigned __activemask(SIMT_LOC) { return ::simt::activemask(simt_file, simt_line); }

template <class T>
inline unsigned __match_any_sync(unsigned mask, T value, SIMT_LOC) {
  return static_cast<unsigned>(::simt::warp_collective(::simt::kMatchAny, mask,
                                                       ::simt::to_bits(value), 0, 32, simt_file,
                                                       simt_line));
}
template <class T>
inline unsigned __match_all_sync(unsigned mask, T value, int* pred, SIMT_LOC) {
  const uint64_t r = ::simt::warp_collective(::simt::kMatchAll, mask, ::simt::to_bits(value), 0,
                                             32, simt_file, simt_line);
  *pred = static_cast<int>(r >> 32);
  return static_cast<unsigned>(r);
}

#define SIMT_WARP_REDUCE(name, T, op)                                                     \
  inline T name(unsigned mask, T value, SIMT_LOC) {                                       \
    return static_cast<T>(::simt::warp_collective(op, mask, static_cast<uint32_t>(value), \
                                                  0, 32, simt_file, simt_line));          \
  }
SIMT_WARP_REDUCE(__reduce_add_sync, unsigned, ::simt::kReduceAdd)
SIMT_WARP_REDUCE(__reduce_add_sync, int, ::simt::kReduceAdd)
SIMT_WARP_REDUCE(__reduce_min_sync, unsigned, ::simt::kReduceMinU)
SIMT_WARP_REDUCE(__reduce_min_sync, int, ::simt::kReduceMinS)
SIMT_WARP_REDUCE(__reduce_max_sync, unsigned, ::simt::kReduceMaxU)
SIMT_WARP_REDUCE(__reduce_max_sync, int, ::simt::kReduceMaxS)
SIMT_WARP_REDUCE(__reduce_and_sync, unsigned, ::simt::kReduceAnd)
SIMT_WARP_REDUCE(__reduce_or_sync, unsigned, ::simt::kReduceOr)
SIMT_WARP_REDUCE(__reduce_xor_sync, unsigned, ::simt::kReduceXor)
#undef SIMT_WARP_REDUCE

// Fibers are never preempted and blocks run one after another, so fences are no-ops.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
// A spin-wait with __nanosleep lets the other fibers of the block run.
inline void __nanosleep(unsigned) { ::simt::yield(); }
inline long long clock64() { return ::simt::clock_ticks(); }

// ---------------------------------------------------------------------------------------------
// Atomics: plain read-modify-writes (one OS thread, fibers switch only at rendezvous points).
#define SIMT_ATOMIC(name, T, expr)                                  \
  inline T name(T* address, T val) {                                \
    T old = *address;                                               \
    *address = (expr);                                              \
    return old;                                                     \
  }                                                                 \
  inline T name##_block(T* address, T val) { return name(address, val); } \
  inline T name##_system(T* address, T val) { return name(address, val); }

SIMT_ATOMIC(atomicAdd, int, old + val)
SIMT_ATOMIC(atomicAdd, unsigned int, old + val)
SIMT_ATOMIC(atomicAdd, unsigned long long int, old + val)
SIMT_ATOMIC(atomicAdd, float, old + val)
SIMT_ATOMIC(atomicAdd, double, old + val)
SIMT_ATOMIC(atomicAdd, __half, __float2half_rn(__half2float(old) + __half2float(val)))
SIMT_ATOMIC(atomicAdd, __half2,
            __floats2half2_rn(__low2float(old) + __low2float(val),
                              __high2float(old) + __high2float(val)))
SIMT_ATOMIC(atomicAdd, __nv_bfloat16,
            __float2bfloat16_rn(__bfloat162float(old) + __bfloat162float(val)))
SIMT_ATOMIC(atomicAdd, __nv_bfloat162,
            __floats2bfloat162_rn(__low2float(old) + __low2float(val),
                                  __high2float(old) + __high2float(val)))
SIMT_ATOMIC(atomicAdd, float2, make_float2(old.x + val.x, old.y + val.y))
SIMT_ATOMIC(atomicAdd, float4, make_float4(old.x + val.x, old.y + val.y, old.z + val.z,
                                           old.w + val.w))
SIMT_ATOMIC(atomicSub, int, old - val)
SIMT_ATOMIC(atomicSub, unsigned int, old - val)
SIMT_ATOMIC(atomicExch, int, val)
SIMT_ATOMIC(atomicExch, unsigned int, val)
SIMT_ATOMIC(atomicExch, unsigned long long int, val)
SIMT_ATOMIC(atomicExch, float, val)
SIMT_ATOMIC(atomicMin, int, val < old ? val : old)
SIMT_ATOMIC(atomicMin, unsigned int, val < old ? val : old)
SIMT_ATOMIC(atomicMin, long long int, val < old ? val : old)
SIMT_ATOMIC(atomicMin, unsigned long long int, val < old ? val : old)
SIMT_ATOMIC(atomicMax, int, val > old ? val : old)
SIMT_ATOMIC(atomicMax, unsigned int, val > old ? val : old)
SIMT_ATOMIC(atomicMax, long long int, val > old ? val : old)
SIMT_ATOMIC(atomicMax, unsigned long long int, val > old ? val : old)
SIMT_ATOMIC(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
SIMT_ATOMIC(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)
SIMT_ATOMIC(atomicAnd, int, old & val)
SIMT_ATOMIC(atomicAnd, unsigned int, old & val)
SIMT_ATOMIC(atomicAnd, unsigned long long int, old & val)
SIMT_ATOMIC(atomicOr, int, old | val)
SIMT_ATOMIC(atomicOr, unsigned int, old | val)
SIMT_ATOMIC(atomicOr, unsigned long long int, old | val)
SIMT_ATOMIC(atomicXor, int, old ^ val)
SIMT_ATOMIC(atomicXor, unsigned int, old ^ val)
SIMT_ATOMIC(atomicXor, unsigned long long int, old ^ val)
#undef SIMT_ATOMIC

#define SIMT_ATOMIC_CAS(T)                                                              \
  inline T atomicCAS(T* address, T compare, T val) {                                   \
    T old = *address;                                                                   \
    if (old == compare) *address = val;                                                 \
    return old;                                                                         \
  }                                                                                     \
  inline T atomicCAS_block(T* a, T c, T v) { return atomicCAS(a, c, v); }              \
  inline T atomicCAS_system(T* a, T c, T v) { return atomicCAS(a, c, v); }
SIMT_ATOMIC_CAS(int)
SIMT_ATOMIC_CAS(unsigned int)
SIMT_ATOMIC_CAS(unsigned long long int)
SIMT_ATOMIC_CAS(unsigned short int)
#undef SIMT_ATOMIC_CAS

// ---------------------------------------------------------------------------------------------
// Cache-hinted loads and stores are plain memory accesses.
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------------------
// Float intrinsics mapped to libm. Fast-math approximations become the accurate functions and
// directed-rounding variants round to nearest: compare against references with a tolerance.
inline float __expf(float x) { return ::expf(x); }
inline float __exp10f(float x) { return ::exp10f(x); }
inline float __logf(float x) { return ::logf(x); }
inline float __log2f(float x) { return ::log2f(x); }
inline float __log10f(float x) { return ::log10f(x); }
inline float __sinf(float x) { return ::sinf(x); }
inline float __cosf(float x) { return ::cosf(x); }
inline float __tanf(float x) { return ::tanf(x); }
inline float __powf(float x, float y) { return ::powf(x, y); }
inline void __sincosf(float x, float* s, float* c) { ::sincosf(x, s, c); }
inline float __tanhf(float x) { return ::tanhf(x); }
inline float sinpif(float x) { return ::sinf(static_cast<float>(M_PI) * x); }
inline float cospif(float x) { return ::cosf(static_cast<float>(M_PI) * x); }
inline void sincospif(float x, float* s, float* c) { ::sincosf(static_cast<float>(M_PI) * x, s, c); }
inline double sinpi(double x) { return ::sin(M_PI * x); }
inline double cospi(double x) { return ::cos(M_PI * x); }
inline void sincospi(double x, double* s, double* c) { ::sincos(M_PI * x, s, c); }
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / ::cbrtf(x); }
inline double rcbrt(double x) { return 1.0 / ::cbrt(x); }
inline float fdividef(float x, float y) { return x / y; }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
#define SIMT_ROUNDING_VARIANTS(base, params, expr)                   \
  inline float base##_rn params { return expr; }                     \
  inline float base##_rz params { return expr; }                     \
  inline float base##_ru params { return expr; }                     \
  inline float base##_rd params { return expr; }
SIMT_ROUNDING_VARIANTS(__fadd, (float a, float b), a + b)
SIMT_ROUNDING_VARIANTS(__fsub, (float a, float b), a - b)
SIMT_ROUNDING_VARIANTS(__fmul, (float a, float b), a * b)
SIMT_ROUNDING_VARIANTS(__fdiv, (float a, float b), a / b)
SIMT_ROUNDING_VARIANTS(__fmaf, (float a, float b, float c), ::fmaf(a, b, c))
SIMT_ROUNDING_VARIANTS(__frcp, (float a), 1.0f / a)
SIMT_ROUNDING_VARIANTS(__fsqrt, (float a), ::sqrtf(a))
#undef SIMT_ROUNDING_VARIANTS
inline float __fmaf_ieee_rn(float a, float b, float c) { return ::fmaf(a, b, c); }
inline float __frsqrt_rn(float x) { return 1.0f / ::sqrtf(x); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __dsqrt_rn(double a) { return ::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return ::fma(a, b, c); }

// Conversions and reinterpretations.
inline int __float2int_rn(float x) { return static_cast<int>(::lrintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(::floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(::ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(::llrintf(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline unsigned __float2uint_rd(float x) { return static_cast<unsigned>(::floorf(x)); }
inline unsigned __float2uint_ru(float x) { return static_cast<unsigned>(::ceilf(x)); }
inline long long __float2ll_rn(float x) { return ::llrintf(x); }
inline long long __float2ll_rz(float x) { return static_cast<long long>(x); }
inline int __double2int_rn(double x) { return static_cast<int>(::lrint(x)); }
inline int __double2int_rz(double x) { return static_cast<int>(x); }
inline long long __double2ll_rn(double x) { return ::llrint(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }
inline float __double2float_rz(double x) { return static_cast<float>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline double __int2double_rn(int x) { return static_cast<double>(x); }
inline double __ll2double_rn(long long x) { return static_cast<double>(x); }
inline int __float_as_int(float x) { return simt::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return simt::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return simt::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return simt::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return simt::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return simt::bit_cast<double>(x); }
inline int __double2hiint(double x) { return static_cast<int>(__double_as_longlong(x) >> 32); }
inline int __double2loint(double x) { return static_cast<int>(__double_as_longlong(x)); }
inline double __hiloint2double(int hi, int lo) {
  return __longlong_as_double(static_cast<long long>(
      (static_cast<unsigned long long>(static_cast<unsigned>(hi)) << 32) |
      static_cast<unsigned>(lo)));
}

// Integer intrinsics.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) |
         __brev(static_cast<unsigned>(x >> 32));
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}
inline int __mul24(int a, int b) { return ((a << 8) >> 8) * ((b << 8) >> 8); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) {
  return static_cast<int>((static_cast<long long>(a) * b) >> 32);
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) {
  return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline int __hadd(int a, int b) { return static_cast<int>((static_cast<long long>(a) + b) >> 1); }
inline int __rhadd(int a, int b) {
  return static_cast<int>((static_cast<long long>(a) + b + 1) >> 1);
}
inline unsigned __uhadd(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) + b) >> 1);
}
inline unsigned __urhadd(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) + b + 1) >> 1);
}
inline unsigned __sad(int a, int b, unsigned c) {
  return c + static_cast<unsigned>(a > b ? static_cast<long long>(a) - b
                                         : static_cast<long long>(b) - a);
}
inline unsigned __usad(unsigned a, unsigned b, unsigned c) { return c + (a > b ? a - b : b - a); }
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>((v << (shift & 31u)) >> 32);
}
inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>((v << (shift > 32u ? 32u : shift)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>(v >> (shift & 31u));
}
inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned shift) {
  const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>(v >> (shift > 32u ? 32u : shift));
}

// min/max overloads with the same set of signatures as CUDA's math_functions.h.
#define SIMT_MINMAX(R, A, B)                                                   \
  inline R min(const A a, const B b) {                                         \
    return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); \
  }                                                                            \
  inline R max(const A a, const B b) {                                         \
    return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); \
  }
SIMT_MINMAX(int, int, int)
SIMT_MINMAX(unsigned int, unsigned int, unsigned int)
SIMT_MINMAX(unsigned int, int, unsigned int)
SIMT_MINMAX(unsigned int, unsigned int, int)
SIMT_MINMAX(long int, long int, long int)
SIMT_MINMAX(unsigned long int, unsigned long int, unsigned long int)
SIMT_MINMAX(unsigned long int, long int, unsigned long int)
SIMT_MINMAX(unsigned long int, unsigned long int, long int)
SIMT_MINMAX(long long int, long long int, long long int)
SIMT_MINMAX(unsigned long long int, unsigned long long int, unsigned long long int)
SIMT_MINMAX(unsigned long long int, long long int, unsigned long long int)
SIMT_MINMAX(unsigned long long int, unsigned long long int, long long int)
#undef SIMT_MINMAX
inline float min(const float a, const float b) { return ::fminf(a, b); }
inline float max(const float a, const float b) { return ::fmaxf(a, b); }
inline double min(const double a, const double b) { return ::fmin(a, b); }
inline double max(const double a, const double b) { return ::fmax(a, b); }
inline double min(const float a, const double b) { return ::fmin(a, b); }
inline double max(const float a, const double b) { return ::fmax(a, b); }
inline double min(const double a, const float b) { return ::fmin(a, b); }
inline double max(const double a, const float b) { return ::fmax(a, b); }

// Half / bfloat16 functions that cuda_fp16.h and cuda_bf16.h declare for device code only.
#define SIMT_HALF_UNARY(hname, h2name, expr)                                              \
  inline __half hname(const __half a) {                                                   \
    const float x = __half2float(a);                                                      \
    return __float2half_rn(expr);                                                         \
  }                                                                                       \
  inline __nv_bfloat16 hname(const __nv_bfloat16 a) {                                     \
    const float x = __bfloat162float(a);                                                  \
    return __float2bfloat16_rn(expr);                                                     \
  }                                                                                       \
  inline __half2 h2name(const __half2 a) {                                                \
    return __halves2half2(hname(__low2half(a)), hname(__high2half(a)));                   \
  }                                                                                       \
  inline __nv_bfloat162 h2name(const __nv_bfloat162 a) {                                  \
    return __halves2bfloat162(hname(__low2bfloat16(a)), hname(__high2bfloat16(a)));      \
  }
SIMT_HALF_UNARY(hexp, h2exp, ::expf(x))
SIMT_HALF_UNARY(hexp2, h2exp2, ::exp2f(x))
SIMT_HALF_UNARY(hexp10, h2exp10, ::exp10f(x))
SIMT_HALF_UNARY(hlog, h2log, ::logf(x))
SIMT_HALF_UNARY(hlog2, h2log2, ::log2f(x))
SIMT_HALF_UNARY(hlog10, h2log10, ::log10f(x))
SIMT_HALF_UNARY(hsqrt, h2sqrt, ::sqrtf(x))
SIMT_HALF_UNARY(hrsqrt, h2rsqrt, 1.0f / ::sqrtf(x))
SIMT_HALF_UNARY(hrcp, h2rcp, 1.0f / x)
SIMT_HALF_UNARY(hsin, h2sin, ::sinf(x))
SIMT_HALF_UNARY(hcos, h2cos, ::cosf(x))
SIMT_HALF_UNARY(htanh, h2tanh, ::tanhf(x))
SIMT_HALF_UNARY(hceil, h2ceil, ::ceilf(x))
SIMT_HALF_UNARY(hfloor, h2floor, ::floorf(x))
SIMT_HALF_UNARY(hrint, h2rint, ::rintf(x))
SIMT_HALF_UNARY(htrunc, h2trunc, ::truncf(x))
#undef SIMT_HALF_UNARY

#define SIMT_HALF_FMA(name, name2, expr)                                                   \
  inline __half name(const __half a, const __half b, const __half c) {                    \
    const float x = ::fmaf(__half2float(a), __half2float(b), __half2float(c));            \
    return __float2half_rn(expr);                                                          \
  }                                                                                        \
  inline __nv_bfloat16 name(const __nv_bfloat16 a, const __nv_bfloat16 b,                 \
                            const __nv_bfloat16 c) {                                       \
    const float x = ::fmaf(__bfloat162float(a), __bfloat162float(b), __bfloat162float(c)); \
    return __float2bfloat16_rn(expr);                                                      \
  }                                                                                        \
  inline __half2 name2(const __half2 a, const __half2 b, const __half2 c) {               \
    return __halves2half2(name(__low2half(a), __low2half(b), __low2half(c)),               \
                          name(__high2half(a), __high2half(b), __high2half(c)));           \
  }                                                                                        \
  inline __nv_bfloat162 name2(const __nv_bfloat162 a, const __nv_bfloat162 b,             \
                              const __nv_bfloat162 c) {                                    \
    return __halves2bfloat162(                                                             \
        name(__low2bfloat16(a), __low2bfloat16(b), __low2bfloat16(c)),                     \
        name(__high2bfloat16(a), __high2bfloat16(b), __high2bfloat16(c)));                 \
  }
SIMT_HALF_FMA(__hfma, __hfma2, x)
SIMT_HALF_FMA(__hfma_relu, __hfma2_relu, x > 0.0f ? x : 0.0f)
SIMT_HALF_FMA(__hfma_sat, __hfma2_sat, x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x))
#undef SIMT_HALF_FMA

inline int __half2int_rn(const __half h) { return __float2int_rn(__half2float(h)); }
inline int __half2int_rd(const __half h) { return __float2int_rd(__half2float(h)); }
inline int __half2int_ru(const __half h) { return __float2int_ru(__half2float(h)); }
inline int __bfloat162int_rn(const __nv_bfloat16 h) { return __float2int_rn(__bfloat162float(h)); }
inline int __bfloat162int_rd(const __nv_bfloat16 h) { return __float2int_rd(__bfloat162float(h)); }
inline int __bfloat162int_ru(const __nv_bfloat16 h) { return __float2int_ru(__bfloat162float(h)); }

// ---------------------------------------------------------------------------------------------
// Runtime API shim (the functions declared by cuda_runtime_api.h that the emulator implements
// live in runtime.cpp: cudaGetLastError, cudaPeekAtLastError, cudaGetErrorString/Name,
// cudaMemcpy(Async), cudaMemset(Async), cudaFuncSetAttribute, cudaDeviceGetAttribute,
// cudaGetDevice, cudaStreamSynchronize, cudaDeviceSynchronize).

// Same shape as the runtime's typed variadic template: arguments are converted to the kernel's
// parameter types at the call, then every fiber calls the kernel with its own copies.
template <typename... ExpTypes, typename... ActTypes>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config,
                                      void (*kernel)(ExpTypes...), ActTypes&&... args) {
  using Args = std::tuple<typename std::decay<ExpTypes>::type...>;
  Args coerced(std::forward<ActTypes>(args)...);
  struct Closure {
    void (*kernel)(ExpTypes...);
    Args* args;
  } closure{kernel, &coerced};
  auto body = [](void* p) {
    Closure* c = static_cast<Closure*>(p);
    std::apply(c->kernel, *c->args);
  };
  return ::simt::launch(config, reinterpret_cast<const void*>(kernel), +body, &closure);
}

template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

template <class T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, T,
                                                                 int block_size,
                                                                 size_t dynamic_smem_bytes) {
  (void)dynamic_smem_bytes;
  const int blocks = block_size > 0 ? 2048 / block_size : 0;
  *num_blocks = blocks < 1 ? 1 : (blocks > 32 ? 32 : blocks);
  return cudaSuccess;
}

template <class T>
inline cudaError_t cudaMemcpyToSymbol(const T& symbol, const void* src, size_t count,
                                      size_t offset = 0,
                                      cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
  (void)kind;
  std::memcpy(reinterpret_cast<char*>(const_cast<T*>(&symbol)) + offset, src, count);
  return cudaSuccess;
}

template <class T>
inline cudaError_t cudaMemcpyToSymbolAsync(const T& symbol, const void* src, size_t count,
                                           size_t offset = 0,
                                           cudaMemcpyKind kind = cudaMemcpyHostToDevice,
                                           cudaStream_t stream = nullptr) {
  (void)stream;
  return cudaMemcpyToSymbol(symbol, src, count, offset, kind);
}

#undef SIMT_LOC
