// Assignment ops on the CPU: the at::parallel_for kernels of nearest_assign / grid_assign /
// group_layout and their registration (the schemas are in csrc/ops.cpp, the argument checks in
// csrc/checks.cpp).
//
// nearest_assign: brute force over the centres with no N x K buffer. Centres are transposed to
// SoA tiles (about 16 KiB, L1-resident) padded with NaN; a block of points keeps, per point, a
// running (distance, index) minimum in 2 x W lanes (W = 8 fp32 / 4 fp64 on AVX2, GCC vector
// extensions), lane l seeing indices l, l + 2W, ... in increasing order, so strict `<` keeps the
// lowest index per lane and the final lexicographic lane reduction the lowest overall. The
// arithmetic is the reference's, operation for operation (see inrflow/assign.h), so results are
// bit-identical. On x86-64 an AVX2 clone (no FMA, so nothing can be contracted) is picked at run
// time (csrc/cpu/dispatch.h).
// grid_assign: O(1) per point with the header's 3^d-neighbourhood search.
// group_layout: counting sort. Rows are cut into tiles; per-tile histograms laid out
// [(b*K + k)*T + t] are turned into first output slots by one exclusive scan in memory order,
// and each tile scatters its tokens in order: a stable argsort.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "dispatch.h"
#include "inrflow/assign.h"

// The 32-byte vector types below never cross a non-inlined call, so the note that their ABI
// depends on AVX is moot.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace inrflow {
namespace {

// ------------------------------------------------------------------------------------------------
// nearest_assign kernel

template <typename Acc>
struct Lanes;

// 8 fp32 lanes with int32 indices / 4 fp64 lanes with int64 indices: one AVX2 register each.
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  static constexpr int W = 8;
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  static constexpr int W = 4;
};

// Points per block (their lane states stay in L1 while a centre tile is swept).
constexpr int64_t kPointBlock = 128;
// Bytes of one SoA centre tile.
constexpr int64_t kTileBytes = 16384;

template <typename Acc, typename T>
INRFLOW_ALWAYS_INLINE Acc to_acc(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<Acc>(static_cast<float>(v));  // fp16/bf16 upcast exactly, as reference
  }
}

// Centres of one sample as SoA tiles: tile t holds centres [t*kt, t*kt + kt) as d rows of kt
// values; the last tile is padded with NaN (distance NaN: never `<` anything).
template <typename T, typename Acc>
void build_tiles(const T* c, int64_t k, int64_t d, int64_t kt, Acc* out) {
  const int64_t tiles = (k + kt - 1) / kt;
  for (int64_t t = 0; t < tiles; ++t) {
    Acc* tile = out + t * kt * d;
    for (int64_t j = 0; j < d; ++j) {
      for (int64_t i = 0; i < kt; ++i) {
        const int64_t ci = t * kt + i;
        tile[j * kt + i] =
            ci < k ? to_acc<Acc>(c[ci * d + j]) : std::numeric_limits<Acc>::quiet_NaN();
      }
    }
  }
}

template <typename V, typename Acc>
INRFLOW_ALWAYS_INLINE V load_vec(const Acc* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// (p - c)^2 on a vector of centres: rounded after each operation, as assign::sq_diff.
template <typename V, typename Acc>
INRFLOW_ALWAYS_INLINE V sq_diff_vec(Acc p, const V& c) {
  const V diff = p - c;
  return diff * diff;
}

// One block of `np` points against all centre tiles; writes out[0..np).
template <int D, typename T, typename Acc>
INRFLOW_ALWAYS_INLINE void nearest_block(const T* __restrict__ pts, int64_t np, int64_t d,
                                         const Acc* __restrict__ ctiles, int64_t k, int64_t kt,
                                         int64_t* __restrict__ out) {
  using L = Lanes<Acc>;
  using V = typename L::V;
  using I = typename L::I;
  using Idx = std::conditional_t<std::is_same_v<Acc, float>, int32_t, int64_t>;
  constexpr int W = L::W;
  const int dims = D > 0 ? D : static_cast<int>(d);
  alignas(64) V best_d[kPointBlock][2];
  alignas(64) I best_i[kPointBlock][2];
  I iota;
  for (int l = 0; l < W; ++l) iota[l] = static_cast<Idx>(l);
  const V inf = V{} + std::numeric_limits<Acc>::infinity();
  for (int64_t p = 0; p < np; ++p) {
    best_d[p][0] = inf;
    best_d[p][1] = inf;
    best_i[p][0] = iota;
    best_i[p][1] = iota + static_cast<Idx>(W);
  }
  const int64_t tiles = (k + kt - 1) / kt;
  for (int64_t t = 0; t < tiles; ++t) {
    const Acc* tile = ctiles + t * kt * d;
    const int64_t valid = std::min(kt, k - t * kt);
    const int64_t len = (valid + 2 * W - 1) / (2 * W) * (2 * W);  // padding is NaN
    for (int64_t p = 0; p < np; ++p) {
      Acc pv[assign::kMaxDim];
      for (int j = 0; j < dims; ++j) pv[j] = to_acc<Acc>(pts[p * dims + j]);
      V bd0 = best_d[p][0];
      V bd1 = best_d[p][1];
      I bi0 = best_i[p][0];
      I bi1 = best_i[p][1];
      I k0 = iota + static_cast<Idx>(t * kt);
      I k1 = k0 + static_cast<Idx>(W);
      for (int64_t i = 0; i < len; i += 2 * W) {
        V d0 = sq_diff_vec(pv[0], load_vec<V>(tile + i));
        V d1 = sq_diff_vec(pv[0], load_vec<V>(tile + i + W));
        for (int j = 1; j < dims; ++j) {
          d0 = d0 + sq_diff_vec(pv[j], load_vec<V>(tile + j * kt + i));
          d1 = d1 + sq_diff_vec(pv[j], load_vec<V>(tile + j * kt + i + W));
        }
        const I m0 = d0 < bd0;
        const I m1 = d1 < bd1;
        bd0 = m0 ? d0 : bd0;
        bi0 = m0 ? k0 : bi0;
        bd1 = m1 ? d1 : bd1;
        bi1 = m1 ? k1 : bi1;
        k0 += static_cast<Idx>(2 * W);
        k1 += static_cast<Idx>(2 * W);
      }
      best_d[p][0] = bd0;
      best_d[p][1] = bd1;
      best_i[p][0] = bi0;
      best_i[p][1] = bi1;
    }
  }
  for (int64_t p = 0; p < np; ++p) {
    Acc bd = best_d[p][0][0];
    int64_t bi = best_i[p][0][0];
    for (int v = 0; v < 2; ++v) {
      for (int l = 0; l < W; ++l) {
        const Acc dv = best_d[p][v][l];
        const int64_t iv = best_i[p][v][l];
        if (assign::better(dv, iv, bd, bi)) {
          bd = dv;
          bi = iv;
        }
      }
    }
    out[p] = bi < k ? bi : 0;  // only NaN coordinates (unspecified result) can leave a pad index
  }
}

template <int D, typename T, typename Acc>
INRFLOW_ALWAYS_INLINE void nearest_tasks(const T* pts, const Acc* ctiles, int64_t* out,
                                         int64_t begin, int64_t end, int64_t blocks_per_row,
                                         const NearestDims& dims, int64_t kt,
                                         int64_t tile_batch_stride) {
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / blocks_per_row;
    const int64_t p0 = (task % blocks_per_row) * kPointBlock;
    const int64_t np = std::min(kPointBlock, dims.n - p0);
    nearest_block<D, T, Acc>(pts + b * dims.points_batch_stride + p0 * dims.d, np, dims.d,
                             ctiles + b * tile_batch_stride, dims.k, kt,
                             out + b * dims.n + p0);
  }
}

template <int D, typename T, typename Acc>
void nearest_tasks_baseline(const T* pts, const Acc* ctiles, int64_t* out, int64_t begin,
                            int64_t end, int64_t blocks_per_row, const NearestDims& dims,
                            int64_t kt, int64_t tile_batch_stride) {
  nearest_tasks<D, T, Acc>(pts, ctiles, out, begin, end, blocks_per_row, dims, kt,
                           tile_batch_stride);
}

// AVX2 without FMA: 256-bit lanes, and no instruction that could fuse the rounded steps.
template <int D, typename T, typename Acc>
INRFLOW_TARGET_AVX2 void nearest_tasks_avx2(const T* pts, const Acc* ctiles, int64_t* out,
                                            int64_t begin, int64_t end, int64_t blocks_per_row,
                                            const NearestDims& dims, int64_t kt,
                                            int64_t tile_batch_stride) {
  nearest_tasks<D, T, Acc>(pts, ctiles, out, begin, end, blocks_per_row, dims, kt,
                           tile_batch_stride);
}

template <int D, typename T, typename Acc>
void nearest_run(const T* pts, const Acc* ctiles, int64_t* out, const NearestDims& dims,
                 int64_t kt, int64_t tile_batch_stride) {
  const int64_t blocks_per_row = (dims.n + kPointBlock - 1) / kPointBlock;
  const int64_t tasks = dims.batch * blocks_per_row;
  // ~64k point-centre pairs per task at least, so the task overhead stays small.
  const int64_t grain = std::max<int64_t>(1, 65536 / (kPointBlock * dims.k));
  cpu::parallel_for_isa(
      cpu::Isa::kAvx2, tasks, grain,
      [&](int64_t begin, int64_t end) {
        nearest_tasks_avx2<D, T, Acc>(pts, ctiles, out, begin, end, blocks_per_row, dims, kt,
                                      tile_batch_stride);
      },
      [&](int64_t begin, int64_t end) {
        nearest_tasks_baseline<D, T, Acc>(pts, ctiles, out, begin, end, blocks_per_row, dims,
                                          kt, tile_batch_stride);
      });
}

template <typename T>
void nearest_typed(const at::Tensor& points, const at::Tensor& centers, at::Tensor& out,
                   const NearestDims& dims) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr int64_t lanes = 2 * Lanes<Acc>::W;
  int64_t kt = std::max<int64_t>(lanes, kTileBytes / (dims.d * int64_t{sizeof(Acc)}) / lanes *
                                            lanes);
  kt = std::min(kt, (dims.k + lanes - 1) / lanes * lanes);
  const int64_t tiles = (dims.k + kt - 1) / kt;
  const int64_t tile_batch = tiles * kt * dims.d;
  const int64_t center_sets = dims.centers_batch_stride == 0 ? 1 : dims.batch;
  std::vector<Acc> buf(static_cast<size_t>(center_sets * tile_batch));
  const T* cp = centers.const_data_ptr<T>();
  at::parallel_for(0, center_sets, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      build_tiles<T, Acc>(cp + b * dims.centers_batch_stride, dims.k, dims.d, kt,
                          buf.data() + b * tile_batch);
    }
  });
  const int64_t tile_stride = dims.centers_batch_stride == 0 ? 0 : tile_batch;
  const T* pp = points.const_data_ptr<T>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  switch (dims.d) {
    case 2:
      nearest_run<2, T, Acc>(pp, buf.data(), op, dims, kt, tile_stride);
      break;
    case 3:
      nearest_run<3, T, Acc>(pp, buf.data(), op, dims, kt, tile_stride);
      break;
    default:
      nearest_run<0, T, Acc>(pp, buf.data(), op, dims, kt, tile_stride);
      break;
  }
}

// ------------------------------------------------------------------------------------------------
// grid_assign kernel

template <typename T>
void grid_typed(const at::Tensor& points, const at::Tensor& table, const assign::GridSpec& spec,
                at::Tensor& out) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const T* pp = points.const_data_ptr<T>();
  const Acc* axes = table.const_data_ptr<Acc>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  const int64_t d = spec.dims;
  at::parallel_for(0, out.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      Acc p[assign::kMaxDim];
      for (int64_t j = 0; j < d; ++j) p[j] = to_acc<Acc>(pp[r * d + j]);
      op[r] = assign::grid_nearest(p, axes, spec);
    }
  });
}

// ------------------------------------------------------------------------------------------------
// group_layout kernel

// Tokens per tile on the CPU (each tile is one task of the histogram and scatter passes).
constexpr int64_t kCpuMinTile = 16384;

template <typename Index>
void group_layout_typed(const at::Tensor& assign, int64_t batch, int64_t n, int64_t num_groups,
                        at::Tensor& perm, at::Tensor& offsets) {
  const Index* a = assign.const_data_ptr<Index>();
  int64_t* pp = perm.mutable_data_ptr<int64_t>();
  int32_t* off = offsets.mutable_data_ptr<int32_t>();
  const int64_t k = num_groups;
  const int64_t tile = assign::group_tile_size(k, kCpuMinTile);
  const int64_t tiles = assign::ceil_div(n, tile);
  // counts[(b*K + k)*T + t]: turned in place into each (b, k, t)'s first output slot.
  std::vector<int64_t> slots(static_cast<size_t>(batch * k * tiles), 0);
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> hist(static_cast<size_t>(k));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles;
      const int64_t t = task % tiles;
      const int64_t lo = t * tile;
      const int64_t hi = std::min(n, lo + tile);
      std::fill(hist.begin(), hist.end(), 0);
      bool bad = false;
      for (int64_t i = lo; i < hi; ++i) {
        const auto g = static_cast<int64_t>(a[b * n + i]);
        if (g < 0 || g >= k) {
          bad = true;
          continue;
        }
        ++hist[g];
      }
      if (bad) out_of_range.store(true, std::memory_order_relaxed);
      for (int64_t g = 0; g < k; ++g) slots[(b * k + g) * tiles + t] = hist[g];
    }
  });
  TORCH_CHECK(!out_of_range.load(), "inrflow::group_layout: assign has values outside [0, ",
              num_groups, ")");
  int64_t run = 0;
  for (int64_t bg = 0; bg < batch * k; ++bg) {
    off[bg] = static_cast<int32_t>(run);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t c = slots[bg * tiles + t];
      slots[bg * tiles + t] = run;
      run += c;
    }
  }
  off[batch * k] = static_cast<int32_t>(run);
  at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> cursor(static_cast<size_t>(k));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles;
      const int64_t t = task % tiles;
      for (int64_t g = 0; g < k; ++g) cursor[g] = slots[(b * k + g) * tiles + t];
      const int64_t hi = std::min(n, (t + 1) * tile);
      for (int64_t i = t * tile; i < hi; ++i) {
        pp[cursor[static_cast<int64_t>(a[b * n + i])]++] = i;
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// CPU wrappers

at::Tensor nearest_assign_cpu(const at::Tensor& points, const at::Tensor& centers) {
  const NearestDims dims = check_nearest_assign(points, centers);
  TORCH_CHECK(points.device().is_cpu(), "inrflow::nearest_assign: the CPU kernel got a tensor on ",
              points.device());
  const at::Tensor pc = points.contiguous();
  const at::Tensor cc = centers.contiguous();
  at::Tensor out = at::empty(assign_output_shape(dims), points.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "nearest_assign_cpu",
                                  [&] { nearest_typed<scalar_t>(pc, cc, out, dims); });
  return out;
}

at::Tensor grid_assign_cpu(const at::Tensor& points, c10::IntArrayRef grid_shape,
                           c10::ArrayRef<double> low, c10::ArrayRef<double> high) {
  const assign::GridSpec spec = check_grid_assign(points, grid_shape, low, high);
  TORCH_CHECK(points.device().is_cpu(), "inrflow::grid_assign: the CPU kernel got a tensor on ",
              points.device());
  const at::Tensor pc = points.contiguous();
  std::vector<int64_t> shape(points.sizes().begin(), points.sizes().end() - 1);
  at::Tensor out = at::empty(shape, points.options().dtype(at::kLong));
  if (out.numel() == 0) return out;
  const at::Tensor table = grid_axis_table(points, spec);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(),
                                  "grid_assign_cpu",
                                  [&] { grid_typed<scalar_t>(pc, table, spec, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> group_layout_cpu(const at::Tensor& assign,
                                                    int64_t num_groups) {
  const auto [batch, n] = check_group_layout(assign, num_groups);
  TORCH_CHECK(assign.device().is_cpu(), "inrflow::group_layout: the CPU kernel got a tensor on ",
              assign.device());
  const at::Tensor ac = assign.contiguous();
  at::Tensor perm = at::empty(assign.sizes(), assign.options().dtype(at::kLong));
  at::Tensor offsets = at::empty({batch * num_groups + 1}, assign.options().dtype(at::kInt));
  if (assign.scalar_type() == at::kInt) {
    group_layout_typed<int32_t>(ac, batch, n, num_groups, perm, offsets);
  } else {
    group_layout_typed<int64_t>(ac, batch, n, num_groups, perm, offsets);
  }
  return {perm, offsets};
}

}  // namespace
}  // namespace inrflow

TORCH_LIBRARY_IMPL(inrflow, CPU, m) {
  m.impl("nearest_assign", &inrflow::nearest_assign_cpu);
  m.impl("grid_assign", &inrflow::grid_assign_cpu);
  m.impl("group_layout", &inrflow::group_layout_cpu);
}
