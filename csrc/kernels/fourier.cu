// Fused Fourier embedding, CUDA kernels and their torch-free C launchers.
//
// Compiled by nvcc into inrflow._C (called from csrc/cuda/fourier_cuda.cpp), and unchanged by g++ with
// tests/simt/prelude.h into the emulated test library (tests/test_fourier_kernels.py).
//
// Forward: one thread per (row, channel, frequency); consecutive threads take consecutive
// frequencies and channels, so the sin and cos stores of a warp are contiguous. Rows are handled
// in tiles so that the per-element index math is 32-bit (multiply-high division, DivMod32).
// Backward: a group of G lanes (G = next power of two >= F, at most 32) per (row, channel) strides
// over the frequencies with contiguous loads of grad_out and the saved forward output, then
// reduces in fp32 (fp64 for double) with warp shuffles.
#include <cstdint>

#if !defined(INRFLOW_SIMT_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "inrflow/common.h"
#include "inrflow/device_io.h"
#include "inrflow/fourier.h"
#include "inrflow/launch.h"

namespace inrflow {
namespace {

using fourier::DivMod32;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 16;   // grid-stride beyond this
constexpr int64_t kForwardTileElems = 4 * kThreads;  // elements per block and tile
constexpr int64_t kMaxRowWidth = (int64_t{1} << 31) - 1;

__device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Grid-stride over tiles of `rows_per_tile` rows; within a tile, one thread per (row, c, k).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fourier_forward_kernel(const T* __restrict__ x, const float* __restrict__ freqs,
                           T* __restrict__ out, int64_t rows, uint32_t channels,
                           uint32_t num_freqs, uint32_t include_input, uint32_t rows_per_tile,
                           DivMod32 div_cf, DivMod32 div_f) {
  using Acc = typename Io<T>::Acc;
  const uint32_t cf = channels * num_freqs;
  const uint32_t x_cols = include_input ? channels : 0u;
  const int64_t width = 2 * static_cast<int64_t>(cf) + x_cols;
  const int64_t tile_stride = static_cast<int64_t>(gridDim.x) * rows_per_tile;
  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_tile; row0 < rows;
       row0 += tile_stride) {
    const uint32_t tile_rows = static_cast<uint32_t>(min_i64(rows_per_tile, rows - row0));
    const uint32_t n = tile_rows * cf;
    for (uint32_t t = threadIdx.x; t < n; t += blockDim.x) {
      const uint32_t r = div_cf.div(t);
      const uint32_t j = t - r * cf;  // c * F + k
      const uint32_t c = div_f.div(j);
      const uint32_t k = j - c * num_freqs;
      const int64_t row = row0 + r;
      const T* x_row = x + row * channels;
      T* out_row = out + row * width;
      const Acc xv = Io<T>::load(x_row + c);
      Acc s;
      Acc co;
      fourier::sincos_mul(xv, freqs[k], s, co);
      Io<T>::store(out_row + x_cols + j, s);
      Io<T>::store(out_row + x_cols + cf + j, co);
      if (include_input && k == 0) out_row[c] = x_row[c];
    }
  }
}

// Grid-stride over tiles of rows; within a tile, G lanes per (row, c). All lanes of a warp run
// the same number of loop iterations, so the full-mask shuffles are always convergent.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fourier_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ out,
                            const float* __restrict__ freqs, T* __restrict__ grad_x, int64_t rows,
                            uint32_t channels, uint32_t num_freqs, uint32_t include_input,
                            uint32_t rows_per_tile, uint32_t group_size, DivMod32 div_c) {
  using Acc = typename Io<T>::Acc;
  const uint32_t cf = channels * num_freqs;
  const uint32_t x_cols = include_input ? channels : 0u;
  const int64_t width = 2 * static_cast<int64_t>(cf) + x_cols;
  const uint32_t lane = threadIdx.x & (group_size - 1);
  const uint32_t group = threadIdx.x / group_size;
  const uint32_t groups_per_block = blockDim.x / group_size;
  const int64_t tile_stride = static_cast<int64_t>(gridDim.x) * rows_per_tile;
  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_tile; row0 < rows;
       row0 += tile_stride) {
    const uint32_t tile_rows = static_cast<uint32_t>(min_i64(rows_per_tile, rows - row0));
    const uint32_t pairs = tile_rows * channels;
    for (uint32_t p0 = 0; p0 < pairs; p0 += groups_per_block) {
      const uint32_t p = p0 + group;
      const bool valid = p < pairs;
      int64_t row = 0;
      uint32_t c = 0;
      Acc acc = Acc(0);
      if (valid) {
        const uint32_t r = div_c.div(p);
        c = p - r * channels;
        row = row0 + r;
        const T* g_row = grad_out + row * width + x_cols + static_cast<int64_t>(c) * num_freqs;
        const T* o_row = out + row * width + x_cols + static_cast<int64_t>(c) * num_freqs;
        for (uint32_t k = lane; k < num_freqs; k += group_size) {
          acc += fourier::grad_term<Acc>(Io<T>::load(g_row + k), Io<T>::load(g_row + cf + k),
                                         Io<T>::load(o_row + k), Io<T>::load(o_row + cf + k),
                                         static_cast<Acc>(freqs[k]));
        }
      }
      for (uint32_t offset = group_size >> 1; offset > 0; offset >>= 1) {
        acc += __shfl_xor_sync(0xffffffffu, acc, static_cast<int>(offset));
      }
      if (valid && lane == 0) {
        if (include_input) acc += Io<T>::load(grad_out + row * width + c);
        Io<T>::store(grad_x + row * channels + c, acc);
      }
    }
  }
}

// Shared argument checks of both launchers; returns false on anything the kernels cannot take.
bool valid_shape(int64_t rows, int64_t channels, int64_t num_freqs) {
  if (rows < 0 || channels < 0 || num_freqs < 1) return false;
  if (channels > kMaxRowWidth || num_freqs > kMaxRowWidth) return false;
  return fourier::output_width(channels, num_freqs, true) <= kMaxRowWidth;
}

uint32_t grid_for(int64_t rows, int64_t rows_per_tile) {
  const int64_t tiles = (rows + rows_per_tile - 1) / rows_per_tile;
  return static_cast<uint32_t>(tiles < kMaxBlocks ? tiles : kMaxBlocks);
}

template <typename T>
cudaError_t launch_forward(const void* x, const float* freqs, void* out, int64_t rows,
                           int64_t channels, int64_t num_freqs, bool include_input,
                           cudaStream_t stream) {
  const int64_t cf = channels * num_freqs;
  const int64_t rows_per_tile = cf >= kForwardTileElems ? 1 : kForwardTileElems / cf;
  return launch_kernel(fourier_forward_kernel<T>, dim3(grid_for(rows, rows_per_tile)),
                       dim3(kThreads), 0, stream, static_cast<const T*>(x), freqs,
                       static_cast<T*>(out), rows, static_cast<uint32_t>(channels),
                       static_cast<uint32_t>(num_freqs), static_cast<uint32_t>(include_input),
                       static_cast<uint32_t>(rows_per_tile),
                       DivMod32::make(static_cast<uint32_t>(cf)),
                       DivMod32::make(static_cast<uint32_t>(num_freqs)));
}

template <typename T>
cudaError_t launch_backward(const void* grad_out, const void* out, const float* freqs,
                            void* grad_x, int64_t rows, int64_t channels, int64_t num_freqs,
                            bool include_input, cudaStream_t stream) {
  uint32_t group_size = 1;
  while (group_size < 32 && group_size < num_freqs) group_size <<= 1;
  // About four (row, channel) groups per thread group and tile.
  const int64_t pairs_per_tile = 4 * (kThreads / group_size);
  const int64_t rows_per_tile = channels >= pairs_per_tile ? 1 : pairs_per_tile / channels;
  return launch_kernel(fourier_backward_kernel<T>, dim3(grid_for(rows, rows_per_tile)),
                       dim3(kThreads), 0, stream, static_cast<const T*>(grad_out),
                       static_cast<const T*>(out), freqs, static_cast<T*>(grad_x), rows,
                       static_cast<uint32_t>(channels), static_cast<uint32_t>(num_freqs),
                       static_cast<uint32_t>(include_input), static_cast<uint32_t>(rows_per_tile),
                       group_size, DivMod32::make(static_cast<uint32_t>(channels)));
}

}  // namespace
}  // namespace inrflow

extern "C" int32_t inrflow_fourier_embed_forward(int32_t dtype, const void* x, const float* freqs,
                                                 void* out, int64_t rows, int64_t channels,
                                                 int64_t num_freqs, int32_t include_input,
                                                 cudaStream_t stream) {
  using inrflow::DType;
  if (!inrflow::valid_shape(rows, channels, num_freqs)) return cudaErrorInvalidValue;
  if (rows == 0 || channels == 0) return cudaSuccess;
  if (x == nullptr || freqs == nullptr || out == nullptr) return cudaErrorInvalidValue;
  const bool inc = include_input != 0;
  cudaError_t err = cudaErrorInvalidValue;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      err = inrflow::launch_forward<float>(x, freqs, out, rows, channels, num_freqs, inc, stream);
      break;
    case DType::Float16:
      err = inrflow::launch_forward<__half>(x, freqs, out, rows, channels, num_freqs, inc, stream);
      break;
    case DType::BFloat16:
      err = inrflow::launch_forward<__nv_bfloat16>(x, freqs, out, rows, channels, num_freqs, inc,
                                                   stream);
      break;
    case DType::Float64:
      err = inrflow::launch_forward<double>(x, freqs, out, rows, channels, num_freqs, inc, stream);
      break;
  }
  return static_cast<int32_t>(err);
}

extern "C" int32_t inrflow_fourier_embed_backward(int32_t dtype, const void* grad_out,
                                                  const void* out, const float* freqs,
                                                  void* grad_x, int64_t rows, int64_t channels,
                                                  int64_t num_freqs, int32_t include_input,
                                                  cudaStream_t stream) {
  using inrflow::DType;
  if (!inrflow::valid_shape(rows, channels, num_freqs)) return cudaErrorInvalidValue;
  if (rows == 0 || channels == 0) return cudaSuccess;
  if (grad_out == nullptr || out == nullptr || freqs == nullptr || grad_x == nullptr) {
    return cudaErrorInvalidValue;
  }
  const bool inc = include_input != 0;
  cudaError_t err = cudaErrorInvalidValue;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      err = inrflow::launch_backward<float>(grad_out, out, freqs, grad_x, rows, channels,
                                            num_freqs, inc, stream);
      break;
    case DType::Float16:
      err = inrflow::launch_backward<__half>(grad_out, out, freqs, grad_x, rows, channels,
                                             num_freqs, inc, stream);
      break;
    case DType::BFloat16:
      err = inrflow::launch_backward<__nv_bfloat16>(grad_out, out, freqs, grad_x, rows, channels,
                                                    num_freqs, inc, stream);
      break;
    case DType::Float64:
      err = inrflow::launch_backward<double>(grad_out, out, freqs, grad_x, rows, channels,
                                             num_freqs, inc, stream);
      break;
  }
  return static_cast<int32_t>(err);
}
