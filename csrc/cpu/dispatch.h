// Run-time ISA choice and the at::parallel_for loop shared by the CPU kernels (csrc/cpu/*.cpp).
//
// The build cannot assume AVX2 (the extension must load on any x86-64), so each hot loop is
// compiled twice on x86-64 with GCC/Clang: a baseline entry point, and a clone marked
// INRFLOW_TARGET_AVX2 or INRFLOW_TARGET_AVX2_FMA that inlines the same INRFLOW_ALWAYS_INLINE
// templates, so they vectorise 8-wide there. parallel_for_isa then runs one of the two per task.
// Elsewhere the target macros are empty, isa_available() is false and the baseline always runs.
#pragma once

#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

// With ATen's OpenMP backend, at::parallel_for is a header template that only runs in parallel
// in translation units compiled with OpenMP; without it every kernel uses one thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#warning "inrflow: compile with -fopenmp (ATen's parallel backend is OpenMP), or at::parallel_for runs serially"
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define INRFLOW_X86_DISPATCH 1
#define INRFLOW_ALWAYS_INLINE inline __attribute__((always_inline))
// AVX2 without FMA: for loops whose rounding must match the reference step by step.
#define INRFLOW_TARGET_AVX2 __attribute__((target("avx2")))
#define INRFLOW_TARGET_AVX2_FMA __attribute__((target("avx2,fma,f16c")))
#else
#define INRFLOW_X86_DISPATCH 0
#define INRFLOW_ALWAYS_INLINE inline
#define INRFLOW_TARGET_AVX2
#define INRFLOW_TARGET_AVX2_FMA
#endif

namespace inrflow {
namespace cpu {

// Instruction sets a clone may be compiled for.
enum class Isa {
  kAvx2,     // INRFLOW_TARGET_AVX2
  kAvx2Fma,  // INRFLOW_TARGET_AVX2_FMA: AVX2, FMA and F16C
};

// Whether clones compiled for `isa` may run on this CPU. INRFLOW_CPU_DISPATCH=baseline (read once
// per process) answers false, so that tests cover the baseline loops on AVX2 machines too.
inline bool isa_available(Isa isa) {
#if INRFLOW_X86_DISPATCH
  static const bool forced_baseline = [] {
    const char* forced = std::getenv("INRFLOW_CPU_DISPATCH");
    return forced != nullptr && std::strcmp(forced, "baseline") == 0;
  }();
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  static const bool fma_f16c = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma") != 0 && __builtin_cpu_supports("f16c") != 0;
  }();
  if (forced_baseline || !avx2) return false;
  return isa == Isa::kAvx2 || fma_f16c;
#else
  (void)isa;
  return false;
#endif
}

// at::parallel_for over [0, end) in chunks of at least `grain`, each chunk handed to
// fast(begin, end) when `isa` is available and to baseline(begin, end) otherwise.
template <typename Fast, typename Baseline>
void parallel_for_isa(Isa isa, int64_t end, int64_t grain, const Fast& fast,
                      const Baseline& baseline) {
  const bool use_fast = isa_available(isa);
  at::parallel_for(0, end, grain, [&](int64_t b, int64_t e) {
    if (use_fast) {
      fast(b, e);
    } else {
      baseline(b, e);
    }
  });
}

}  // namespace cpu
}  // namespace inrflow
