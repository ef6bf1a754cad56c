// Assignment ops, CUDA kernels and their torch-free C launchers.
//
// Compiled by nvcc into inrflow._C (called from csrc/cuda/assign_cuda.cpp), and unchanged by g++
// with tests/simt/prelude.h into the emulated test library (tests/test_assign_kernels.py).
//
// nearest_assign: one thread per point, a block of 256 points; the centres are staged in shared
// memory in tiles of 256 (AoS, every thread reads the same centre: a broadcast), specialised for
// d = 2 and d = 3 and general up to d = 8. Distances use the reference's rounded operations
// (inrflow/assign.h) and strict `<` over increasing indices, so ties go to the lowest index and
// results are bit-identical to inrflow.ops.reference. No N x K buffer.
// grid_assign: one thread per point, the header's O(3^d) neighbourhood search.
// group_layout: counting sort with a stable scatter. Each row is cut into tiles of >= 1024 tokens
// (and >= K) and each tile is owned by one warp, which walks it 32 tokens at a time in order:
//   1. histogram: per-tile counts at [(b*K + k)*T + t] (lanes with equal keys are found with
//      ballots, one per key bit; the lowest such lane adds their number);
//   2. one exclusive scan (single block) over the counts in memory order gives each
//      (sample, group, tile) its first output slot, sample-major, then group, then tile;
//   3. offsets[b*K + k] = slot of tile 0; offsets[B*K] = B*N;
//   4. scatter: each lane writes its token at slot + (number of equal keys in lower lanes), then
//      the lowest lane advances the slot. Order within a tile is the token order, tiles are in
//      order in the scan: a stable argsort, whatever the order the warps run in.
#include <cstdint>

#if !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "inrflow/assign.h"
#include "inrflow/common.h"
#include "inrflow/launch.h"

namespace inrflow {
namespace {

constexpr int kThreads = 256;
constexpr int kTileCenters = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kScanThreads = 1024;
constexpr int kScanItems = 4;
constexpr int64_t kGpuMinTile = 1024;
constexpr int64_t kMaxGridX = int64_t{1} << 20;  // grid-stride beyond this
constexpr int64_t kMaxGridY = 65535;

// Accumulation type and load per storage type.
template <typename T>
struct Io;

template <>
struct Io<float> {
  using Acc = float;
  static __device__ __forceinline__ float load(const float* p) { return *p; }
};

template <>
struct Io<double> {
  using Acc = double;
  static __device__ __forceinline__ double load(const double* p) { return *p; }
};

template <>
struct Io<__half> {
  using Acc = float;
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
};

template <>
struct Io<__nv_bfloat16> {
  using Acc = float;
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) {
    return __bfloat162float(*p);
  }
};

// ---------------------------------------------------------------------------------------------
// nearest_assign

template <int D, typename T>
__global__ void __launch_bounds__(kThreads)
    nearest_kernel(const T* __restrict__ points, const T* __restrict__ centers,
                   int64_t* __restrict__ out, int64_t batch, int64_t n, int64_t k, int32_t d,
                   int64_t points_batch_stride, int64_t centers_batch_stride) {
  using Acc = typename Io<T>::Acc;
  constexpr int kDims = D > 0 ? D : assign::kMaxDim;
  __shared__ Acc s_c[kTileCenters * kDims];
  const int dims = D > 0 ? D : d;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool valid = i < n;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    Acc p[kDims];
#pragma unroll
    for (int j = 0; j < kDims; ++j) {
      p[j] = (valid && j < dims) ? Io<T>::load(points + b * points_batch_stride + i * dims + j)
                                 : Acc(0);
    }
    const T* c = centers + b * centers_batch_stride;
    Acc best_d = Acc(0);
    int64_t best_i = -1;
    for (int64_t k0 = 0; k0 < k; k0 += kTileCenters) {
      const int tk = static_cast<int>(k - k0 < kTileCenters ? k - k0 : kTileCenters);
      __syncthreads();  // the previous tile is no longer read
      for (int e = threadIdx.x; e < tk * dims; e += kThreads) {
        s_c[e] = Io<T>::load(c + k0 * dims + e);
      }
      __syncthreads();
      if (valid) {
        for (int ci = 0; ci < tk; ++ci) {
          const Acc dist = assign::sq_dist<D, Acc>(p, s_c + ci * dims, 1, dims);
          if (best_i < 0 || dist < best_d) {
            best_d = dist;
            best_i = k0 + ci;
          }
        }
      }
    }
    if (valid) out[b * n + i] = best_i;
  }
}

// ---------------------------------------------------------------------------------------------
// grid_assign

template <typename T>
__global__ void __launch_bounds__(kThreads)
    grid_kernel(const T* __restrict__ points, const typename Io<T>::Acc* __restrict__ axes,
                assign::GridSpec spec, int64_t* __restrict__ out, int64_t rows) {
  using Acc = typename Io<T>::Acc;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; r < rows;
       r += stride) {
    Acc p[assign::kMaxDim];
    for (int j = 0; j < spec.dims; ++j) p[j] = Io<T>::load(points + r * spec.dims + j);
    out[r] = assign::grid_nearest(p, axes, spec);
  }
}

// ---------------------------------------------------------------------------------------------
// group_layout

// Lanes of the warp (within `active`) whose key equals this lane's; `bits` covers every key.
__device__ __forceinline__ unsigned match_key(int64_t key, int bits, unsigned active) {
  unsigned peers = active;
  for (int bit = 0; bit < bits; ++bit) {
    const int mine = static_cast<int>((key >> bit) & 1);
    const unsigned ones = __ballot_sync(0xffffffffu, mine);
    peers &= mine ? ones : ~ones;
  }
  return peers;
}

// Key of token i of row b, clamped into [0, K) (out-of-range input: unspecified, in bounds).
template <typename Index>
__device__ __forceinline__ int64_t load_key(const Index* assign, int64_t idx, int64_t num_groups) {
  const int64_t g = static_cast<int64_t>(assign[idx]);
  return g < 0 ? 0 : (g >= num_groups ? num_groups - 1 : g);
}

// Pass 1 (scatter = false) and pass 4 (scatter = true) of the file comment; one warp per tile.
template <typename Index, bool kScatter>
__global__ void __launch_bounds__(kThreads)
    group_tiles_kernel(const Index* __restrict__ assign, int64_t batch, int64_t n,
                       int64_t num_groups, int64_t tile, int64_t tiles, int bits,
                       int32_t* __restrict__ slots, int64_t* __restrict__ perm) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const unsigned lower = (1u << lane) - 1u;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; w < batch * tiles;
       w += warp_stride) {
    const int64_t b = w / tiles;
    const int64_t t = w - b * tiles;
    int32_t* row_slots = slots + b * num_groups * tiles + t;  // group g at g * tiles
    if (!kScatter) {
      for (int64_t g = lane; g < num_groups; g += 32) row_slots[g * tiles] = 0;
      __syncwarp();
    }
    const int64_t lo = t * tile;
    const int64_t hi = lo + tile < n ? lo + tile : n;
    for (int64_t i0 = lo; i0 < hi; i0 += 32) {
      const int64_t i = i0 + lane;
      const bool valid = i < hi;
      const int64_t g = valid ? load_key(assign, b * n + i, num_groups) : 0;
      const unsigned active = __ballot_sync(0xffffffffu, valid);
      const unsigned peers = match_key(g, bits, active);
      const bool leader = valid && (peers & lower) == 0u;  // lowest lane with this key
      if (kScatter) {
        if (valid) {
          const int64_t pos = row_slots[g * tiles] + __popc(peers & lower);
          perm[pos] = i;
        }
        __syncwarp();  // every lane has read its slot before the leader advances it
        if (leader) row_slots[g * tiles] += __popc(peers);
      } else if (leader) {
        row_slots[g * tiles] += __popc(peers);
      }
      __syncwarp();
    }
  }
}

// Pass 2: in-place exclusive scan of m int32 counts by one block.
__global__ void __launch_bounds__(kScanThreads) exclusive_scan_kernel(int32_t* data, int64_t m) {
  __shared__ int32_t warp_sums[kScanThreads / 32];
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int warp = static_cast<int>(threadIdx.x / 32u);
  int32_t carry = 0;
  for (int64_t base = 0; base < m; base += int64_t{kScanThreads} * kScanItems) {
    const int64_t first = base + static_cast<int64_t>(threadIdx.x) * kScanItems;
    int32_t v[kScanItems];
    int32_t sum = 0;
#pragma unroll
    for (int j = 0; j < kScanItems; ++j) {
      v[j] = first + j < m ? data[first + j] : 0;
      sum += v[j];
    }
    int32_t incl = sum;  // inclusive scan of the thread sums within the warp
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int32_t up = __shfl_up_sync(0xffffffffu, incl, static_cast<unsigned>(off));
      if (lane >= off) incl += up;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int32_t ws = warp_sums[lane];
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int32_t up = __shfl_up_sync(0xffffffffu, ws, static_cast<unsigned>(off));
        if (lane >= off) ws += up;
      }
      warp_sums[lane] = ws;  // inclusive over warps
    }
    __syncthreads();
    int32_t run = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + incl - sum;
#pragma unroll
    for (int j = 0; j < kScanItems; ++j) {
      if (first + j < m) data[first + j] = run;
      run += v[j];
    }
    carry += warp_sums[kScanThreads / 32 - 1];
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
}

// Pass 3: the CSR offsets.
__global__ void __launch_bounds__(kThreads)
    offsets_kernel(const int32_t* __restrict__ slots, int64_t groups, int64_t tiles,
                   int32_t total, int32_t* __restrict__ offsets) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g <= groups;
       g += stride) {
    offsets[g] = g == groups ? total : (tiles > 0 ? slots[g * tiles] : 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch helpers

uint32_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<uint32_t>(blocks < kMaxGridX ? (blocks < 1 ? 1 : blocks) : kMaxGridX);
}

template <typename T>
cudaError_t launch_nearest(const void* points, const void* centers, int64_t* out, int64_t batch,
                           int64_t n, int64_t k, int64_t d, int64_t pbs, int64_t cbs,
                           cudaStream_t stream) {
  const int64_t xblocks = (n + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<uint32_t>(xblocks),
                  static_cast<uint32_t>(batch < kMaxGridY ? batch : kMaxGridY));
  const T* p = static_cast<const T*>(points);
  const T* c = static_cast<const T*>(centers);
  const auto dd = static_cast<int32_t>(d);
  if (d == 2) {
    return launch_kernel(nearest_kernel<2, T>, grid, dim3(kThreads), 0, stream, p, c, out, batch,
                         n, k, dd, pbs, cbs);
  }
  if (d == 3) {
    return launch_kernel(nearest_kernel<3, T>, grid, dim3(kThreads), 0, stream, p, c, out, batch,
                         n, k, dd, pbs, cbs);
  }
  return launch_kernel(nearest_kernel<0, T>, grid, dim3(kThreads), 0, stream, p, c, out, batch, n,
                       k, dd, pbs, cbs);
}

template <typename T>
cudaError_t launch_grid(const void* points, const void* axes, const assign::GridSpec& spec,
                        int64_t* out, int64_t rows, cudaStream_t stream) {
  using Acc = typename Io<T>::Acc;
  return launch_kernel(grid_kernel<T>, dim3(blocks_for(rows, kThreads)), dim3(kThreads), 0,
                       stream, static_cast<const T*>(points), static_cast<const Acc*>(axes),
                       spec, out, rows);
}

struct GroupPlan {
  int64_t tile;
  int64_t tiles;
  int64_t slots;
};

GroupPlan group_plan(int64_t batch, int64_t n, int64_t num_groups) {
  GroupPlan plan{};
  plan.tile = assign::group_tile_size(num_groups, kGpuMinTile);
  plan.tiles = assign::ceil_div(n, plan.tile);
  plan.slots = batch * num_groups * plan.tiles;
  return plan;
}

template <typename Index>
cudaError_t launch_group_layout(const void* assign_ptr, int64_t batch, int64_t n,
                                int64_t num_groups, int64_t* perm, int32_t* offsets,
                                int32_t* slots, const GroupPlan& plan, cudaStream_t stream) {
  const auto* a = static_cast<const Index*>(assign_ptr);
  int bits = 0;
  while (bits < 63 && (int64_t{1} << bits) < num_groups) ++bits;
  const int64_t warps = batch * plan.tiles;
  const dim3 grid(blocks_for(warps, kWarps));
  cudaError_t err = cudaSuccess;
  if (warps > 0) {
    err = launch_kernel(group_tiles_kernel<Index, false>, grid, dim3(kThreads), 0, stream, a,
                        batch, n, num_groups, plan.tile, plan.tiles, bits, slots, perm);
    if (err != cudaSuccess) return err;
    err = launch_kernel(exclusive_scan_kernel, dim3(1), dim3(kScanThreads), 0, stream, slots,
                        plan.slots);
    if (err != cudaSuccess) return err;
  }
  const int64_t groups = batch * num_groups;
  err = launch_kernel(offsets_kernel, dim3(blocks_for(groups + 1, kThreads)), dim3(kThreads), 0,
                      stream, static_cast<const int32_t*>(slots), groups, plan.tiles,
                      static_cast<int32_t>(batch * n), offsets);
  if (err != cudaSuccess || warps == 0) return err;
  return launch_kernel(group_tiles_kernel<Index, true>, grid, dim3(kThreads), 0, stream, a, batch,
                       n, num_groups, plan.tile, plan.tiles, bits, slots, perm);
}

constexpr int64_t kInt32Max = 2147483647;

}  // namespace
}  // namespace inrflow

extern "C" int32_t inrflow_nearest_assign(int32_t dtype, const void* points, const void* centers,
                                          int64_t* out, int64_t batch, int64_t n, int64_t k,
                                          int64_t d, int64_t points_batch_stride,
                                          int64_t centers_batch_stride, cudaStream_t stream) {
  using inrflow::DType;
  if (batch < 0 || n < 0 || k < 1 || d < 1 || d > inrflow::assign::kMaxDim) {
    return cudaErrorInvalidValue;
  }
  if ((n + inrflow::kThreads - 1) / inrflow::kThreads > inrflow::kInt32Max) {
    return cudaErrorInvalidValue;
  }
  if (batch == 0 || n == 0) return cudaSuccess;
  if (points == nullptr || centers == nullptr || out == nullptr) return cudaErrorInvalidValue;
  cudaError_t err = cudaErrorInvalidValue;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      err = inrflow::launch_nearest<float>(points, centers, out, batch, n, k, d,
                                           points_batch_stride, centers_batch_stride, stream);
      break;
    case DType::Float16:
      err = inrflow::launch_nearest<__half>(points, centers, out, batch, n, k, d,
                                            points_batch_stride, centers_batch_stride, stream);
      break;
    case DType::BFloat16:
      err = inrflow::launch_nearest<__nv_bfloat16>(points, centers, out, batch, n, k, d,
                                                   points_batch_stride, centers_batch_stride,
                                                   stream);
      break;
    case DType::Float64:
      err = inrflow::launch_nearest<double>(points, centers, out, batch, n, k, d,
                                            points_batch_stride, centers_batch_stride, stream);
      break;
  }
  return static_cast<int32_t>(err);
}

extern "C" int32_t inrflow_grid_assign(int32_t dtype, const void* points, const void* axis_centers,
                                       inrflow::assign::GridSpec spec, int64_t* out, int64_t rows,
                                       cudaStream_t stream) {
  using inrflow::DType;
  if (rows < 0 || spec.dims < 1 || spec.dims > inrflow::assign::kMaxDim) {
    return cudaErrorInvalidValue;
  }
  for (int j = 0; j < spec.dims; ++j) {
    if (spec.shape[j] < 1 || !(spec.step[j] > 0.0)) return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  if (points == nullptr || axis_centers == nullptr || out == nullptr) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaErrorInvalidValue;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      err = inrflow::launch_grid<float>(points, axis_centers, spec, out, rows, stream);
      break;
    case DType::Float16:
      err = inrflow::launch_grid<__half>(points, axis_centers, spec, out, rows, stream);
      break;
    case DType::BFloat16:
      err = inrflow::launch_grid<__nv_bfloat16>(points, axis_centers, spec, out, rows, stream);
      break;
    case DType::Float64:
      err = inrflow::launch_grid<double>(points, axis_centers, spec, out, rows, stream);
      break;
  }
  return static_cast<int32_t>(err);
}

extern "C" int64_t inrflow_group_layout_workspace(int64_t batch, int64_t n, int64_t num_groups) {
  if (batch < 0 || n < 0 || num_groups < 1) return -1;
  return inrflow::group_plan(batch, n, num_groups).slots;
}

extern "C" int32_t inrflow_group_layout(int32_t index_bytes, const void* assign, int64_t batch,
                                        int64_t n, int64_t num_groups, int64_t* perm,
                                        int32_t* offsets, int32_t* workspace,
                                        int64_t workspace_elems, cudaStream_t stream) {
  using inrflow::kInt32Max;
  if (batch < 0 || n < 0 || num_groups < 1) return cudaErrorInvalidValue;
  if (index_bytes != 4 && index_bytes != 8) return cudaErrorInvalidValue;
  if (batch > 0 && (num_groups > (kInt32Max - 1) / batch || n > kInt32Max / batch)) {
    return cudaErrorInvalidValue;
  }
  const inrflow::GroupPlan plan = inrflow::group_plan(batch, n, num_groups);
  if (workspace_elems < plan.slots || offsets == nullptr) return cudaErrorInvalidValue;
  if (plan.slots > 0 && (assign == nullptr || perm == nullptr || workspace == nullptr)) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err;
  if (index_bytes == 4) {
    err = inrflow::launch_group_layout<int32_t>(assign, batch, n, num_groups, perm, offsets,
                                                workspace, plan, stream);
  } else {
    err = inrflow::launch_group_layout<int64_t>(assign, batch, n, num_groups, perm, offsets,
                                                workspace, plan, stream);
  }
  return static_cast<int32_t>(err);
}
