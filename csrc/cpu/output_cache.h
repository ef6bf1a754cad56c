// A small, bounded cache of large CPU output buffers, reused across calls of the CPU kernels.
//
// Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap
// and unmaps it on free, so a kernel whose outputs are gigabytes (the grouped attention's dk and
// dv) makes the OS fault in and zero-fill every page again on every call. Measured on a 2-core VM:
// writing 3.2 GB of fresh memory took 0.7-2.9 s on 4 KiB pages (1.7-6.9 s when advised to huge
// pages, which then need compaction), against 0.08-0.45 s for memory already mapped, while the
// kernel itself needs well under a second. Like the CUDA caching allocator, the cache keeps the
// blocks of freed outputs and hands them to the next output of a similar size.
//
// Scope and bounds: only outputs of the kernels that ask for it (out_tensor below) and only those
// of at least kMinBytes; idle (freed, cached) bytes never exceed the limit, oldest evicted first;
// blocks in use are the caller's and are not counted. The limit is
// INRFLOW_CPU_OUTPUT_CACHE_MB (read once; 0 disables the cache), by default
// min(4 GiB, a quarter of physical memory), and can be changed at run time with the
// inrflow::cpu_output_cache_limit op (inrflow.ops.cpu_output_cache in Python). The process's
// allocator itself is untouched: everything else still goes through at::empty.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>

namespace inrflow {
namespace cpu {

// Outputs smaller than this go to at::empty (glibc reuses such blocks itself).
constexpr int64_t kOutputCacheMinBytes = int64_t{1} << 21;

// An uninitialised contiguous CPU tensor, from the cache when it is enabled and the tensor is
// large enough, else from at::empty. Its storage is resizable; freeing it returns the block.
at::Tensor out_tensor(at::IntArrayRef sizes, const at::TensorOptions& options);

// Counters of the cache, for tests and benchmarks.
struct OutputCacheStats {
  int64_t limit_bytes;   // bound on idle bytes (0: disabled)
  int64_t idle_bytes;    // freed blocks kept for reuse
  int64_t live_bytes;    // blocks held by tensors now
  int64_t hits;          // allocations served from an idle block
  int64_t misses;        // allocations that mapped a new block
};
OutputCacheStats output_cache_stats();

// Sets the bound on idle bytes (0 disables the cache and unmaps every idle block); returns the
// previous bound. Negative: leaves it unchanged.
int64_t set_output_cache_limit(int64_t limit_bytes);

}  // namespace cpu
}  // namespace inrflow
