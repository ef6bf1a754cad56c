// Deliberately broken kernels: tests/test_simt_emulator.py checks that the SIMT emulator catches
// each bug. Plain CUDA C++ (nvcc compiles it too); the "SEEDED-BUG" comments mark the lines that
// the emulator's reports must name.
#include <cassert>
#include <cstdint>

#include "inrflow/launch.h"

namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// (1) Missing __syncthreads between the shared-memory store and the tree reduction that reads
// other threads' slots.
template <bool kSyncAfterStore>
__global__ void reduce_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  __shared__ float partial[256];
  const int tid = static_cast<int>(threadIdx.x);
  const int i = static_cast<int>(blockIdx.x * blockDim.x) + tid;
  partial[tid] = i < n ? in[i] : 0.0f;
  if (kSyncAfterStore) __syncthreads();
  for (int half = static_cast<int>(blockDim.x) / 2; half > 0; half /= 2) {
    if (tid < half) partial[tid] += partial[tid + half];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = partial[0];
}

// (2) Early return before a barrier: threads past `n` leave, the others wait at __syncthreads.
__global__ void early_return_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  __shared__ float buf[256];
  const int tid = static_cast<int>(threadIdx.x);
  if (tid >= n) return;
  buf[tid] = in[tid];
  __syncthreads();  // SEEDED-BUG: early-return barrier
  out[tid] = buf[n - 1 - tid];
}

// (3a) Lanes 16..31 return, then lanes 0..15 shuffle with a full mask that names them.
__global__ void shuffle_exited_full_mask_kernel(const float* __restrict__ in,
                                                float* __restrict__ out) {
  const unsigned lane = threadIdx.x % 32u;
  if (lane >= 16) return;
  float v = in[threadIdx.x];
  v += __shfl_xor_sync(kFullMask, v, 8);  // SEEDED-BUG: full mask names exited lanes
  out[threadIdx.x] = v;
}

// (3b) Lanes 16..31 return; the mask is right but the shuffle reads 16 lanes down, i.e. the
// exited lanes.
__global__ void shuffle_reads_exited_lane_kernel(const float* __restrict__ in,
                                                 float* __restrict__ out) {
  const unsigned lane = threadIdx.x % 32u;
  if (lane >= 16) return;
  float v = in[threadIdx.x];
  v += __shfl_down_sync(0x0000ffffu, v, 16u);  // SEEDED-BUG: reads an exited lane
  out[threadIdx.x] = v;
}

// (4) Full-mask shuffle in divergent code: lanes 16..31 never reach it (they wait at the block
// barrier instead), so the warp deadlocks.
__global__ void divergent_shuffle_kernel(const float* __restrict__ in, float* __restrict__ out) {
  float v = in[threadIdx.x];
  if (threadIdx.x % 32u < 16u) {
    v += __shfl_xor_sync(kFullMask, v, 1);  // SEEDED-BUG: divergent full-mask shuffle
  }
  __syncthreads();  // SEEDED-BUG: deadlock partner
  out[threadIdx.x] = v;
}

// (5) __syncthreads in both branches of a divergent if: different barriers.
__global__ void split_barrier_kernel(float* __restrict__ out) {
  if (threadIdx.x < 8u) {
    out[threadIdx.x] = 1.0f;
    __syncthreads();  // SEEDED-BUG: split barrier A
  } else {
    out[threadIdx.x] = 2.0f;
    __syncthreads();  // SEEDED-BUG: split barrier B
  }
}

// (6) Device-side assert and __trap.
__global__ void assert_kernel(const float* __restrict__ in, int n) {
  const int i = static_cast<int>(threadIdx.x);
  if (i < n) assert(in[i] >= 0.0f);  // SEEDED-BUG: device assert
}

__global__ void trap_kernel(int trap_thread) {
  if (static_cast<int>(threadIdx.x) == trap_thread) __trap();  // SEEDED-BUG: trap
}

// (7) A per-thread array that does not fit a small fiber stack.
__global__ void big_stack_kernel(float* __restrict__ out, int n) {
  volatile float scratch[8192];
  for (int i = 0; i < n && i < 8192; ++i) scratch[i] = static_cast<float>(i);
  out[threadIdx.x] = scratch[n - 1];
}

// (8) Shuffle with a mask that names lanes absent from a partial warp.
__global__ void partial_warp_full_mask_kernel(const float* __restrict__ in,
                                              float* __restrict__ out) {
  float v = in[threadIdx.x];
  v += __shfl_down_sync(kFullMask, v, 1u);  // SEEDED-BUG: absent lanes
  out[threadIdx.x] = v;
}

// (9) A wild pointer and an integer division by zero.
__global__ void wild_read_kernel(const float* __restrict__ in, float* __restrict__ out) {
  out[threadIdx.x] = in[threadIdx.x];
}

__global__ void int_div_kernel(const int* __restrict__ in, int* __restrict__ out, int divisor) {
  out[threadIdx.x] = in[threadIdx.x] / divisor;
}

}  // namespace

extern "C" {

int32_t simt_bug_reduce(const float* in, float* out, int32_t n, int32_t threads,
                        int32_t with_sync) {
  const dim3 grid(static_cast<unsigned>((n + threads - 1) / threads));
  const dim3 block(static_cast<unsigned>(threads));
  if (with_sync) return inrflow::launch_kernel(reduce_kernel<true>, grid, block, 0, nullptr, in, out, n);
  return inrflow::launch_kernel(reduce_kernel<false>, grid, block, 0, nullptr, in, out, n);
}

int32_t simt_bug_early_return(const float* in, float* out, int32_t n, int32_t threads) {
  return inrflow::launch_kernel(early_return_kernel, dim3(1), dim3(static_cast<unsigned>(threads)),
                                0, nullptr, in, out, n);
}

int32_t simt_bug_shuffle_exited_full_mask(const float* in, float* out) {
  return inrflow::launch_kernel(shuffle_exited_full_mask_kernel, dim3(1), dim3(64), 0, nullptr,
                                in, out);
}

int32_t simt_bug_shuffle_reads_exited_lane(const float* in, float* out) {
  return inrflow::launch_kernel(shuffle_reads_exited_lane_kernel, dim3(1), dim3(64), 0, nullptr,
                                in, out);
}

int32_t simt_bug_divergent_shuffle(const float* in, float* out) {
  return inrflow::launch_kernel(divergent_shuffle_kernel, dim3(1), dim3(64), 0, nullptr, in, out);
}

int32_t simt_bug_split_barrier(float* out) {
  return inrflow::launch_kernel(split_barrier_kernel, dim3(1), dim3(32), 0, nullptr, out);
}

int32_t simt_bug_assert(const float* in, int32_t n) {
  return inrflow::launch_kernel(assert_kernel, dim3(1), dim3(32), 0, nullptr, in, n);
}

int32_t simt_bug_trap(int32_t trap_thread) {
  return inrflow::launch_kernel(trap_kernel, dim3(1), dim3(32), 0, nullptr, trap_thread);
}

int32_t simt_bug_big_stack(float* out, int32_t n) {
  return inrflow::launch_kernel(big_stack_kernel, dim3(1), dim3(4), 0, nullptr, out, n);
}

int32_t simt_bug_partial_warp_full_mask(const float* in, float* out, int32_t threads) {
  return inrflow::launch_kernel(partial_warp_full_mask_kernel, dim3(1),
                                dim3(static_cast<unsigned>(threads)), 0, nullptr, in, out);
}

int32_t simt_bug_wild_read(const float* in, float* out) {
  return inrflow::launch_kernel(wild_read_kernel, dim3(1), dim3(32), 0, nullptr, in, out);
}

int32_t simt_bug_int_div(const int32_t* in, int32_t* out, int32_t divisor) {
  return inrflow::launch_kernel(int_div_kernel, dim3(1), dim3(32), 0, nullptr, in, out, divisor);
}

}  // extern "C"
