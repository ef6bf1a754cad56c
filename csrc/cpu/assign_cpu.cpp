// Assignment ops on the CPU: the schemas of nearest_assign / grid_assign / group_layout, the
// validation shared with the CUDA registrations, and the at::parallel_for kernels.
//
// nearest_assign: brute force over the centres with no N x K buffer. Centres are transposed to
// SoA tiles (about 16 KiB, L1-resident) padded with NaN; a block of points keeps, per point, a
// running (distance, index) minimum in 2 x W lanes (W = 8 fp32 / 4 fp64 on AVX2, GCC vector
// extensions), lane l seeing indices l, l + 2W, ... in increasing order, so strict `<` keeps the
// lowest index per lane and the final lexicographic lane reduction the lowest overall. The
// arithmetic is the reference's, operation for operation (see inrflow/assign.h), so results are
// bit-identical. On x86-64 an AVX2 clone (no FMA, so nothing can be contracted) is picked at run
// time.
// grid_assign: O(1) per point with the header's 3^d-neighbourhood search.
// group_layout: counting sort. Rows are cut into tiles; per-tile histograms laid out
// [(b*K + k)*T + t] are turned into first output slots by one exclusive scan in memory order,
// and each tile scatters its tokens in order: a stable argsort.
#include "assign_ops.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#warning "inrflow: compile with -fopenmp (ATen's parallel backend is OpenMP), or at::parallel_for runs serially"
#endif

// The 32-byte vector types below never cross a non-inlined call, so the note that their ABI
// depends on AVX is moot.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#define INRFLOW_X86_DISPATCH 1
#define INRFLOW_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define INRFLOW_X86_DISPATCH 0
#define INRFLOW_ALWAYS_INLINE inline
#endif

TORCH_LIBRARY_FRAGMENT(inrflow, m) {
  // Index of the nearest centre (squared Euclidean, ties to the lowest index), int64 [N] / [B, N].
  m.def("nearest_assign(Tensor points, Tensor centers) -> Tensor");
  // Nearest cell centre of a regular grid over [low, high] (row-major flat index), O(1) per point.
  m.def("grid_assign(Tensor points, int[] grid_shape, float[] low, float[] high) -> Tensor");
  // (perm int64 [B, N] stable argsort of each row, offsets int32 [B*num_groups + 1]).
  m.def("group_layout(Tensor assign, int num_groups) -> (Tensor, Tensor)");
}

namespace inrflow {

// ------------------------------------------------------------------------------------------------
// Validation (shared with csrc/cuda/assign_cuda.cpp)

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxCenters = int64_t{1} << 30;

bool float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

}  // namespace

NearestDims check_nearest_assign(const at::Tensor& points, const at::Tensor& centers) {
  constexpr const char* op = "inrflow::nearest_assign";
  TORCH_CHECK(float_dtype(points.scalar_type()), op,
              ": points must be float32, float16, bfloat16 or float64, got ",
              points.scalar_type());
  TORCH_CHECK(centers.scalar_type() == points.scalar_type(), op,
              ": points and centers must have the same dtype, got ", points.scalar_type(),
              " and ", centers.scalar_type());
  TORCH_CHECK(points.dim() == 2 || points.dim() == 3, op,
              ": points must be [N, d] or [B, N, d], got shape ", points.sizes());
  TORCH_CHECK(centers.dim() == 2 || centers.dim() == 3, op,
              ": centers must be [K, d] or [B, K, d], got shape ", centers.sizes());
  TORCH_CHECK(points.device() == centers.device(), op,
              ": points and centers must be on the same device, got ", points.device(), " and ",
              centers.device());
  const int64_t d = points.size(-1);
  TORCH_CHECK(d >= 1 && d == centers.size(-1), op,
              ": points and centers need the same coordinate dimension d >= 1, got ",
              points.sizes(), " and ", centers.sizes());
  TORCH_CHECK(d <= assign::kMaxDim, op, ": the kernels support d <= ", assign::kMaxDim,
              ", got d = ", d);
  const int64_t k = centers.size(-2);
  TORCH_CHECK(k >= 1, op, ": centers is empty (K = 0); there is nothing to assign to");
  // int32 lane indices, with room for the padded last tile
  TORCH_CHECK(k <= kMaxCenters, op, ": K = ", k, " centres exceed the kernel limit of ",
              kMaxCenters);
  const int64_t pb = points.dim() == 3 ? points.size(0) : 1;
  const int64_t cb = centers.dim() == 3 ? centers.size(0) : 1;
  TORCH_CHECK(points.dim() != 3 || centers.dim() != 3 || pb == cb, op,
              ": batch sizes differ: points ", points.sizes(), ", centers ", centers.sizes());
  const int64_t n = points.size(-2);
  NearestDims dims{};
  dims.batch = std::max(pb, cb);
  dims.n = n;
  dims.k = k;
  dims.d = d;
  dims.points_batch_stride = points.dim() == 3 ? n * d : 0;
  dims.centers_batch_stride = centers.dim() == 3 ? k * d : 0;
  dims.batched = points.dim() == 3 || centers.dim() == 3;
  return dims;
}

std::vector<int64_t> assign_output_shape(const at::Tensor& points, const NearestDims& dims) {
  if (dims.batched) return {dims.batch, dims.n};
  (void)points;
  return {dims.n};
}

assign::GridSpec check_grid_assign(const at::Tensor& points, c10::IntArrayRef grid_shape,
                                   c10::ArrayRef<double> low, c10::ArrayRef<double> high) {
  constexpr const char* op = "inrflow::grid_assign";
  TORCH_CHECK(float_dtype(points.scalar_type()), op,
              ": points must be float32, float16, bfloat16 or float64, got ",
              points.scalar_type());
  TORCH_CHECK(points.dim() == 2 || points.dim() == 3, op,
              ": points must be [N, d] or [B, N, d], got shape ", points.sizes());
  const auto dims = static_cast<int64_t>(grid_shape.size());
  TORCH_CHECK(dims >= 1 && dims <= assign::kMaxDim, op, ": grid_shape must have 1 to ",
              assign::kMaxDim, " axes, got ", dims);
  TORCH_CHECK(points.size(-1) == dims, op, ": grid_shape has ", dims,
              " axes but the points have d = ", points.size(-1), " coordinates");
  TORCH_CHECK(static_cast<int64_t>(low.size()) == dims &&
                  static_cast<int64_t>(high.size()) == dims,
              op, ": low and high need one entry per grid axis (", dims, "), got ", low.size(),
              " and ", high.size());
  assign::GridSpec spec{};
  spec.dims = static_cast<int32_t>(dims);
  int64_t cells = 1;
  int64_t offset = 0;
  for (int64_t j = 0; j < dims; ++j) {
    const int64_t nj = grid_shape[j];
    TORCH_CHECK(nj >= 1, op, ": grid_shape entries must be >= 1, got ", grid_shape);
    TORCH_CHECK(std::isfinite(low[j]) && std::isfinite(high[j]) && low[j] < high[j], op,
                ": need finite low < high on every axis, got low=", low, ", high=", high);
    TORCH_CHECK(cells <= std::numeric_limits<int64_t>::max() / nj, op, ": grid of ", grid_shape,
                " cells overflows int64");
    cells *= nj;
    spec.shape[j] = nj;
    spec.axis_offset[j] = offset;
    offset += nj;
    spec.low[j] = low[j];
    spec.step[j] = (high[j] - low[j]) / static_cast<double>(nj);
  }
  return spec;
}

at::Tensor grid_axis_table(const at::Tensor& points, const assign::GridSpec& spec) {
  const auto acc = points.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> axes;
  axes.reserve(spec.dims);
  for (int j = 0; j < spec.dims; ++j) {
    // low + (i + 0.5) * step in fp64, rounded once to the points' dtype: reference._axis_centers
    const at::Tensor i = at::arange(spec.shape[j], points.options().dtype(at::kDouble));
    axes.push_back(
        i.add(0.5).mul(spec.step[j]).add(spec.low[j]).to(points.scalar_type()).to(acc));
  }
  return at::cat(axes).contiguous();
}

std::tuple<int64_t, int64_t> check_group_layout(const at::Tensor& assign, int64_t num_groups) {
  constexpr const char* op = "inrflow::group_layout";
  TORCH_CHECK(assign.scalar_type() == at::kInt || assign.scalar_type() == at::kLong, op,
              ": assign must be int32 or int64, got ", assign.scalar_type());
  TORCH_CHECK(assign.dim() == 1 || assign.dim() == 2, op, ": assign must be [N] or [B, N], got ",
              assign.sizes());
  TORCH_CHECK(num_groups >= 1, op, ": num_groups must be >= 1, got ", num_groups);
  const int64_t batch = assign.dim() == 2 ? assign.size(0) : 1;
  const int64_t n = assign.size(-1);
  TORCH_CHECK(batch <= (kInt32Max - 1) / num_groups && assign.numel() <= kInt32Max, op, ": ",
              batch, " x ", num_groups, " groups / ", assign.numel(),
              " tokens overflow the int32 offsets");
  return {batch, n};
}

// ------------------------------------------------------------------------------------------------
// nearest_assign kernel

namespace {

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

#if INRFLOW_X86_DISPATCH
// AVX2 without FMA: 256-bit lanes, and no instruction that could fuse the rounded steps.
template <int D, typename T, typename Acc>
__attribute__((target("avx2"))) void nearest_tasks_avx2(const T* pts, const Acc* ctiles,
                                                        int64_t* out, int64_t begin, int64_t end,
                                                        int64_t blocks_per_row,
                                                        const NearestDims& dims, int64_t kt,
                                                        int64_t tile_batch_stride) {
  nearest_tasks<D, T, Acc>(pts, ctiles, out, begin, end, blocks_per_row, dims, kt,
                           tile_batch_stride);
}

// INRFLOW_CPU_DISPATCH=baseline (read once per process) forces the baseline loops.
bool cpu_has_avx2() {
  static const bool has = [] {
    const char* forced = std::getenv("INRFLOW_CPU_DISPATCH");
    if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
#endif

template <int D, typename T, typename Acc>
void nearest_run(const T* pts, const Acc* ctiles, int64_t* out, const NearestDims& dims,
                 int64_t kt, int64_t tile_batch_stride) {
  const int64_t blocks_per_row = (dims.n + kPointBlock - 1) / kPointBlock;
  const int64_t tasks = dims.batch * blocks_per_row;
  // ~64k point-centre pairs per task at least, so the task overhead stays small.
  const int64_t grain = std::max<int64_t>(1, 65536 / (kPointBlock * dims.k));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
#if INRFLOW_X86_DISPATCH
    if (cpu_has_avx2()) {
      nearest_tasks_avx2<D, T, Acc>(pts, ctiles, out, begin, end, blocks_per_row, dims, kt,
                                    tile_batch_stride);
      return;
    }
#endif
    nearest_tasks_baseline<D, T, Acc>(pts, ctiles, out, begin, end, blocks_per_row, dims, kt,
                                      tile_batch_stride);
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

}  // namespace

// ------------------------------------------------------------------------------------------------
// CPU registrations

at::Tensor nearest_assign_cpu(const at::Tensor& points, const at::Tensor& centers) {
  const NearestDims dims = check_nearest_assign(points, centers);
  TORCH_CHECK(points.device().is_cpu(), "inrflow::nearest_assign: the CPU kernel got a tensor on ",
              points.device());
  const at::Tensor pc = points.contiguous();
  const at::Tensor cc = centers.contiguous();
  at::Tensor out = at::empty(assign_output_shape(points, dims), points.options().dtype(at::kLong));
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

}  // namespace inrflow

TORCH_LIBRARY_IMPL(inrflow, CPU, m) {
  m.impl("nearest_assign", &inrflow::nearest_assign_cpu);
  m.impl("grid_assign", &inrflow::grid_assign_cpu);
  m.impl("group_layout", &inrflow::group_layout_cpu);
}
