// Self-test kernels for the SIMT emulator (tests/test_simt_emulator.py). Plain CUDA C++: nvcc
// compiles this file unchanged, and so does g++ with tests/simt/prelude.h force-included.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "inrflow/launch.h"

namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// Sum of `in` per block, with a shared-memory tree that also handles non-power-of-two blocks.
__global__ void block_sum_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  __shared__ float partial[1024];
  const int tid = static_cast<int>(threadIdx.x);
  float acc = 0.0f;
  for (int i = static_cast<int>(blockIdx.x * blockDim.x) + tid; i < n;
       i += static_cast<int>(blockDim.x * gridDim.x)) {
    acc += in[i];
  }
  partial[tid] = acc;
  __syncthreads();
  for (int active = static_cast<int>(blockDim.x); active > 1;) {
    const int half = (active + 1) / 2;
    if (tid < active - half) partial[tid] += partial[tid + half];
    __syncthreads();
    active = half;
  }
  if (tid == 0) out[blockIdx.x] = partial[0];
}

// Warp collectives on each segment of `width` lanes:
//   xor_sum[i]  = segment sum seen by every lane (butterfly),
//   down_sum[i] = tree sum with __shfl_down_sync (valid in the first lane of each segment),
//   scan[i]     = inclusive prefix sum with __shfl_up_sync,
//   bcast[i]    = value of the segment's lane `src_lane` (__shfl_sync),
//   votes[i]    = {ballot of (x > 0), any(x > 0), all(x > 0), __popc(ballot)}.
__global__ void warp_ops_kernel(const float* __restrict__ in, float* __restrict__ xor_sum,
                                float* __restrict__ down_sum, float* __restrict__ scan,
                                float* __restrict__ bcast, unsigned* __restrict__ votes, int width,
                                int src_lane) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x % 32u;
  const float x = in[i];

  float v = x;
  for (int offset = width / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset, width);
  }
  xor_sum[i] = v;

  v = x;
  for (int offset = width / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(kFullMask, v, static_cast<unsigned>(offset), width);
  }
  down_sum[i] = v;

  v = x;
  for (int offset = 1; offset < width; offset *= 2) {
    const float up = __shfl_up_sync(kFullMask, v, static_cast<unsigned>(offset), width);
    if (static_cast<int>(lane % static_cast<unsigned>(width)) >= offset) v += up;
  }
  scan[i] = v;

  bcast[i] = __shfl_sync(kFullMask, x, src_lane, width);

  const unsigned ballot = __ballot_sync(kFullMask, x > 0.0f);
  votes[4 * i + 0] = ballot;
  votes[4 * i + 1] = static_cast<unsigned>(__any_sync(kFullMask, x > 0.0f));
  votes[4 * i + 2] = static_cast<unsigned>(__all_sync(kFullMask, x > 0.0f));
  votes[4 * i + 3] = static_cast<unsigned>(__popc(ballot));
}

// Reverses each block's slice through dynamic shared memory.
__global__ void reverse_kernel(const float* __restrict__ in, float* __restrict__ out, int n) {
  extern __shared__ float dyn_buf[];
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int tid = static_cast<int>(threadIdx.x);
  dyn_buf[tid] = i < n ? in[i] : 0.0f;
  __syncthreads();
  const int j = static_cast<int>(blockIdx.x * blockDim.x) + static_cast<int>(blockDim.x) - 1 - tid;
  if (j < n) out[j] = dyn_buf[tid];
}

// Copies the first `count` doubles of dynamic shared memory without writing them first.
__global__ void smem_probe_kernel(double* __restrict__ out, int count) {
  extern __shared__ double dyn_probe[];
  for (int i = static_cast<int>(threadIdx.x); i < count; i += static_cast<int>(blockDim.x)) {
    out[i] = dyn_probe[i];
  }
}

// Writes `count` floats starting at element `first` of dynamic shared memory.
__global__ void smem_write_kernel(int first, int count) {
  extern __shared__ float dyn_buf[];
  for (int i = static_cast<int>(threadIdx.x); i < count; i += static_cast<int>(blockDim.x)) {
    dyn_buf[first + i] = 1.0f;
  }
}

// Round trips through __half and __nv_bfloat16, plus a little half arithmetic.
__global__ void convert_kernel(const float* __restrict__ in, float* __restrict__ as_half,
                               float* __restrict__ as_bf16, float* __restrict__ half_math,
                               __half* __restrict__ raw_half, __nv_bfloat16* __restrict__ raw_bf16,
                               int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  const __half h = __float2half_rn(in[i]);
  const __nv_bfloat16 b = __float2bfloat16_rn(in[i]);
  raw_half[i] = h;
  raw_bf16[i] = b;
  as_half[i] = __half2float(h);
  as_bf16[i] = __bfloat162float(b);
  half_math[i] = __half2float(__hadd(h, __hmul(h, h)));
}

// Global sum and element count with atomics from every thread of every block.
__global__ void atomic_kernel(const float* __restrict__ in, float* __restrict__ total,
                              unsigned* __restrict__ count, int* __restrict__ max_index, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  atomicAdd(total, in[i]);
  atomicAdd(count, 1u);
  atomicMax(max_index, i);
}

// Transposes a rows x cols matrix through a padded shared tile with 2-D blocks.
constexpr int kTile = 16;
__global__ void transpose_kernel(const float* __restrict__ in, float* __restrict__ out, int rows,
                                 int cols) {
  __shared__ float tile[kTile][kTile + 1];
  const int x = static_cast<int>(blockIdx.x) * kTile + static_cast<int>(threadIdx.x);
  for (int dy = static_cast<int>(threadIdx.y); dy < kTile; dy += static_cast<int>(blockDim.y)) {
    const int y = static_cast<int>(blockIdx.y) * kTile + dy;
    if (x < cols && y < rows) tile[dy][threadIdx.x] = in[y * cols + x];
  }
  __syncthreads();
  const int ox = static_cast<int>(blockIdx.y) * kTile + static_cast<int>(threadIdx.x);
  for (int dy = static_cast<int>(threadIdx.y); dy < kTile; dy += static_cast<int>(blockDim.y)) {
    const int oy = static_cast<int>(blockIdx.x) * kTile + dy;
    if (ox < rows && oy < cols) out[oy * rows + ox] = tile[threadIdx.x][dy];
  }
}

// Barrier reductions, __activemask, __syncwarp, __match_any_sync, __reduce_*_sync and shuffles
// of 8- and 2-byte types; out holds 8 words per thread.
__global__ void misc_collectives_kernel(const int* __restrict__ in, unsigned* __restrict__ out,
                                        double* __restrict__ shuffled_double,
                                        float* __restrict__ shuffled_half) {
  const unsigned tid = threadIdx.x;
  const unsigned lane = tid % 32u;
  const int x = in[blockIdx.x * blockDim.x + tid];
  unsigned* o = out + 8u * (blockIdx.x * blockDim.x + tid);
  o[0] = static_cast<unsigned>(__syncthreads_count(x > 0));
  o[1] = static_cast<unsigned>(__syncthreads_and(x > -100));
  o[2] = static_cast<unsigned>(__syncthreads_or(x > 5));
  unsigned active = 0;
  if (lane % 3u == 0u) active = __activemask();
  __syncwarp();
  o[3] = active;
  o[4] = __match_any_sync(kFullMask, x & 3);
  o[5] = __reduce_add_sync(kFullMask, static_cast<unsigned>(x & 0xff));
  o[6] = static_cast<unsigned>(__reduce_max_sync(kFullMask, x));
  o[7] = static_cast<unsigned>(__reduce_min_sync(kFullMask, x));
  const unsigned i = blockIdx.x * blockDim.x + tid;
  shuffled_double[i] = __shfl_xor_sync(kFullMask, 0.5 * static_cast<double>(x), 1);
  const __half h = __shfl_down_sync(kFullMask, __float2half(static_cast<float>(x)), 1u);
  shuffled_half[i] = __half2float(h);
}

}  // namespace

extern "C" {

int32_t simt_test_misc_collectives(const int32_t* in, unsigned* out, double* shuffled_double,
                                   float* shuffled_half, int32_t blocks, int32_t threads) {
  return inrflow::launch_kernel(misc_collectives_kernel, dim3(static_cast<unsigned>(blocks)),
                                dim3(static_cast<unsigned>(threads)), 0, nullptr, in, out,
                                shuffled_double, shuffled_half);
}

int32_t simt_test_block_sum(const float* in, float* out, int32_t n, int32_t blocks,
                            int32_t threads) {
  return inrflow::launch_kernel(block_sum_kernel, dim3(static_cast<unsigned>(blocks)),
                                dim3(static_cast<unsigned>(threads)), 0, nullptr, in, out, n);
}

int32_t simt_test_warp_ops(const float* in, float* xor_sum, float* down_sum, float* scan,
                           float* bcast, unsigned* votes, int32_t blocks, int32_t threads,
                           int32_t width, int32_t src_lane) {
  return inrflow::launch_kernel(warp_ops_kernel, dim3(static_cast<unsigned>(blocks)),
                                dim3(static_cast<unsigned>(threads)), 0, nullptr, in, xor_sum,
                                down_sum, scan, bcast, votes, width, src_lane);
}

int32_t simt_test_reverse(const float* in, float* out, int32_t n, int32_t threads) {
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  return inrflow::launch_kernel(reverse_kernel, dim3(blocks), dim3(static_cast<unsigned>(threads)),
                                sizeof(float) * static_cast<size_t>(threads), nullptr, in, out, n);
}

int32_t simt_test_smem_probe(double* out, int32_t count, int64_t smem_bytes,
                             int32_t set_attribute) {
  if (set_attribute) {
    const cudaError_t err = cudaFuncSetAttribute(
        smem_probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  return inrflow::launch_kernel(smem_probe_kernel, dim3(1), dim3(64),
                                static_cast<size_t>(smem_bytes), nullptr, out, count);
}

int32_t simt_test_smem_write(int32_t first, int32_t count, int64_t smem_bytes) {
  return inrflow::launch_kernel(smem_write_kernel, dim3(2), dim3(32),
                                static_cast<size_t>(smem_bytes), nullptr, first, count);
}

int32_t simt_test_convert(const float* in, float* as_half, float* as_bf16, float* half_math,
                          void* raw_half, void* raw_bf16, int32_t n) {
  const unsigned threads = 64;
  const unsigned blocks = (static_cast<unsigned>(n) + threads - 1) / threads;
  return inrflow::launch_kernel(convert_kernel, dim3(blocks), dim3(threads), 0, nullptr, in,
                                as_half, as_bf16, half_math, static_cast<__half*>(raw_half),
                                static_cast<__nv_bfloat16*>(raw_bf16), n);
}

int32_t simt_test_atomics(const float* in, float* total, unsigned* count, int32_t* max_index,
                          int32_t n, int32_t threads) {
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  return inrflow::launch_kernel(atomic_kernel, dim3(blocks), dim3(static_cast<unsigned>(threads)),
                                0, nullptr, in, total, count, max_index, n);
}

int32_t simt_test_transpose(const float* in, float* out, int32_t rows, int32_t cols,
                            int32_t block_y) {
  const dim3 grid(static_cast<unsigned>((cols + kTile - 1) / kTile),
                  static_cast<unsigned>((rows + kTile - 1) / kTile));
  return inrflow::launch_kernel(transpose_kernel, grid, dim3(kTile, static_cast<unsigned>(block_y)),
                                0, nullptr, in, out, rows, cols);
}

int32_t simt_test_bad_block(int32_t threads) {
  return inrflow::launch_kernel(smem_write_kernel, dim3(1), dim3(static_cast<unsigned>(threads)),
                                0, nullptr, 0, 0);
}

}  // extern "C"
