// Grouped one-query attention, the shape of INRFlow's spatial-aware encoder: latent g attends
// to the keys of its group, out[g] = softmax(scale * q[g] . K_g^T) V_g. A SIMT-emulator self-test
// and timing probe (tests/test_simt_emulator.py) that mixes shared and dynamic shared memory,
// __syncthreads, warp shuffles and atomics. Plain CUDA C++: nvcc compiles it unchanged.
#include <cmath>
#include <cstdint>

#include "inrflow/launch.h"

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxDim = 256;

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

// Block-wide reduction through one float per warp in `red`; every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float x, float* red) {
  const int lane = static_cast<int>(threadIdx.x % 32u);
  const int warp = static_cast<int>(threadIdx.x / 32u);
  const int nwarps = static_cast<int>((blockDim.x + 31u) / 32u);
  x = kMax ? warp_max(x) : warp_sum(x);
  if (lane == 0) red[warp] = x;
  __syncthreads();
  if (warp == 0) {
    const float identity = kMax ? -INFINITY : 0.0f;
    float y = lane < nwarps ? red[lane] : identity;
    y = kMax ? warp_max(y) : warp_sum(y);
    if (lane == 0) red[0] = y;
  }
  __syncthreads();
  const float result = red[0];
  __syncthreads();  // `red` is reused by the next reduction
  return result;
}

// One block per group; blockDim.x must be a multiple of 32; dim <= kMaxDim; dynamic shared
// memory holds max_keys scores.
__global__ void group_attention_kernel(const float* __restrict__ q, const float* __restrict__ k,
                                       const float* __restrict__ v,
                                       const int32_t* __restrict__ offsets,
                                       float* __restrict__ out, float* __restrict__ lse,
                                       float* __restrict__ key_count, int dim, float scale) {
  extern __shared__ float scores[];
  __shared__ float q_s[kMaxDim];
  __shared__ float red[32];
  const int g = static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int nwarps = static_cast<int>(blockDim.x / 32u);
  const int start = offsets[g];
  const int nk = offsets[g + 1] - start;

  for (int d = tid; d < dim; d += static_cast<int>(blockDim.x)) q_s[d] = q[g * dim + d];
  __syncthreads();

  // One warp per key: lanes split the feature dimension.
  for (int j = warp; j < nk; j += nwarps) {
    const float* key = k + static_cast<int64_t>(start + j) * dim;
    float s = 0.0f;
    for (int d = lane; d < dim; d += 32) s += q_s[d] * __ldg(key + d);
    s = warp_sum(s);
    if (lane == 0) scores[j] = s * scale;
  }
  __syncthreads();

  float m = -INFINITY;
  for (int j = tid; j < nk; j += static_cast<int>(blockDim.x)) m = fmaxf(m, scores[j]);
  m = block_reduce<true>(m, red);
  float sum = 0.0f;
  for (int j = tid; j < nk; j += static_cast<int>(blockDim.x)) {
    const float e = __expf(scores[j] - m);
    scores[j] = e;
    sum += e;
  }
  sum = block_reduce<false>(sum, red);  // its barriers also publish the exponentials

  const float inv = 1.0f / sum;
  for (int d = tid; d < dim; d += static_cast<int>(blockDim.x)) {
    float acc = 0.0f;
    for (int j = 0; j < nk; ++j) acc += scores[j] * v[static_cast<int64_t>(start + j) * dim + d];
    out[g * dim + d] = acc * inv;
  }
  if (tid == 0) {
    lse[g] = m + __logf(sum);
    atomicAdd(key_count, static_cast<float>(nk));
  }
}

}  // namespace

extern "C" int32_t simt_test_group_attention(const float* q, const float* k, const float* v,
                                             const int32_t* offsets, float* out, float* lse,
                                             float* key_count, int32_t groups, int32_t max_keys,
                                             int32_t dim, int32_t threads) {
  if (dim > kMaxDim || threads % 32 != 0) return cudaErrorInvalidValue;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  return inrflow::launch_kernel(group_attention_kernel, dim3(static_cast<unsigned>(groups)),
                                dim3(static_cast<unsigned>(threads)),
                                sizeof(float) * static_cast<size_t>(max_keys), nullptr, q, k, v,
                                offsets, out, lse, key_count, dim, scale);
}
