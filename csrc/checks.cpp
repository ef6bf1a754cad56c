// Preconditions of every inrflow::* op and the output shapes that follow from them (see
// checks.h): one TORCH_CHECK per precondition, used by the CPU and the CUDA wrappers alike.
#include "checks.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "inrflow/assign.h"

namespace inrflow {

namespace {

// The float dtypes every op takes for its data tensors.
bool float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// fourier_embed, fourier_embed_backward

namespace {

constexpr int64_t kMaxRowWidth = std::numeric_limits<int32_t>::max();

void check_freqs(const char* op, const at::Tensor& freqs) {
  TORCH_CHECK(freqs.dim() == 1, op, ": freqs must be 1-D [F], got shape ", freqs.sizes());
  TORCH_CHECK(freqs.scalar_type() == at::kFloat, op, ": freqs must be float32, got ",
              freqs.scalar_type());
  TORCH_CHECK(freqs.numel() >= 1, op, ": freqs must hold at least one frequency");
}

void check_width(const char* op, int64_t channels, int64_t num_freqs, bool include_input) {
  // Overflow-safe form of channels * (2F + include_input) <= kMaxRowWidth.
  const int64_t per_channel = 2 * num_freqs + (include_input ? 1 : 0);
  TORCH_CHECK(channels <= kMaxRowWidth / per_channel, op, ": an output row of ", channels,
              " channels x ", per_channel, " features exceeds the kernel limit of ", kMaxRowWidth,
              " elements");
}

int64_t leading_rows(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

}  // namespace

FourierDims check_fourier_forward(const at::Tensor& x, const at::Tensor& freqs,
                                  bool include_input) {
  constexpr const char* op = "inrflow::fourier_embed";
  TORCH_CHECK(float_dtype(x.scalar_type()), op,
              ": x must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension [..., C], got a scalar");
  check_freqs(op, freqs);
  TORCH_CHECK(x.device() == freqs.device(), op, ": x and freqs must be on the same device, got ",
              x.device(), " and ", freqs.device());
  FourierDims dims{leading_rows(x), x.size(-1), freqs.size(0), include_input};
  check_width(op, dims.channels, dims.num_freqs, include_input);
  return dims;
}

FourierDims check_fourier_backward(const at::Tensor& grad_out, const at::Tensor& out,
                                   const at::Tensor& freqs, bool include_input) {
  constexpr const char* op = "inrflow::fourier_embed_backward";
  TORCH_CHECK(float_dtype(out.scalar_type()), op,
              ": out must be float32, float16, bfloat16 or float64, got ", out.scalar_type());
  TORCH_CHECK(grad_out.scalar_type() == out.scalar_type(), op,
              ": grad_out and out must have the same dtype, got ", grad_out.scalar_type(), " and ",
              out.scalar_type());
  TORCH_CHECK(out.dim() >= 1, op, ": out must have at least one dimension, got a scalar");
  TORCH_CHECK(grad_out.sizes() == out.sizes(), op,
              ": grad_out and out must have the same shape, got ", grad_out.sizes(), " and ",
              out.sizes());
  check_freqs(op, freqs);
  TORCH_CHECK(grad_out.device() == out.device() && out.device() == freqs.device(), op,
              ": grad_out, out and freqs must be on the same device, got ", grad_out.device(),
              ", ", out.device(), " and ", freqs.device());
  const int64_t num_freqs = freqs.size(0);
  const int64_t per_channel = 2 * num_freqs + (include_input ? 1 : 0);
  const int64_t width = out.size(-1);
  TORCH_CHECK(width % per_channel == 0, op, ": out.size(-1) = ", width,
              " is not a multiple of 2 * F", include_input ? " + 1" : "", " = ", per_channel,
              " (F = ", num_freqs, ", include_input = ", include_input ? "True" : "False", ")");
  FourierDims dims{leading_rows(out), width / per_channel, num_freqs, include_input};
  check_width(op, dims.channels, dims.num_freqs, include_input);
  return dims;
}

namespace {

// Large CPU outputs are written once from fresh pages; first-touch page faults on 4 KiB pages
// then cost as much as computing the embedding. Asking for transparent huge pages (what torch's
// THP_MEM_ALLOC_ENABLE=1 does for every allocation) cuts the number of faults by 512.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const size_t bytes = t.nbytes();
  if (!t.device().is_cpu() || bytes < 4 * kHugePage) return;
  const auto start = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (start + bytes) & ~(kHugePage - 1);
  // Advisory only: failure (e.g. THP disabled) leaves ordinary pages.
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

}  // namespace

at::Tensor empty_fourier_output(const at::Tensor& x, const FourierDims& dims) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = dims.width();
  at::Tensor out = at::empty(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  advise_huge_pages(out);
  return out;
}

at::Tensor empty_fourier_grad(const at::Tensor& out, const FourierDims& dims) {
  std::vector<int64_t> shape(out.sizes().begin(), out.sizes().end());
  shape.back() = dims.channels;
  return at::empty(shape, out.options().memory_format(at::MemoryFormat::Contiguous));
}

// ------------------------------------------------------------------------------------------------
// nearest_assign, grid_assign, group_layout

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxCenters = int64_t{1} << 30;

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

std::vector<int64_t> assign_output_shape(const NearestDims& dims) {
  if (dims.batched) return {dims.batch, dims.n};
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
// grouped_cross_attention, grouped_cross_attention_forward, grouped_cross_attention_backward

at::ScalarType lse_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

AttentionDims check_attention(const char* op, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& offsets, double scale) {
  TORCH_CHECK(q.dim() == 3, op, ": q must be [G, Hq, D], got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 3, op, ": k must be [T, Hkv, D], got shape ", k.sizes());
  TORCH_CHECK(v.dim() == 3, op, ": v must be [T, Hkv, Dv], got shape ", v.sizes());
  TORCH_CHECK(offsets.dim() == 1, op, ": offsets must be 1-D [G+1], got shape ", offsets.sizes());
  const auto t = q.scalar_type();
  TORCH_CHECK(float_dtype(t), op, ": q must be float32, float16, bfloat16 or float64, got ", t);
  TORCH_CHECK(k.scalar_type() == t && v.scalar_type() == t, op,
              ": q, k and v must share one dtype, got ", t, ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(offsets.scalar_type() == at::kInt || offsets.scalar_type() == at::kLong, op,
              ": offsets must be int32 or int64, got ", offsets.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device() &&
                  offsets.device() == q.device(),
              op, ": q, k, v and offsets must be on one device, got ", q.device(), ", ",
              k.device(), ", ", v.device(), ", ", offsets.device());
  AttentionDims d{q.size(0), k.size(0), q.size(1), k.size(1), q.size(2), v.size(2)};
  TORCH_CHECK(v.size(0) == d.tokens && v.size(1) == d.hkv, op, ": k ", k.sizes(), " and v ",
              v.sizes(), " must agree on [T, Hkv]");
  TORCH_CHECK(k.size(2) == d.dim, op, ": head dims of q (", d.dim, ") and k (", k.size(2),
              ") differ");
  TORCH_CHECK(d.dim >= 1 && d.dim_v >= 1, op, ": head dims must be >= 1, got D = ", d.dim,
              ", Dv = ", d.dim_v);
  TORCH_CHECK(d.hq >= 1 && d.hkv >= 1 && d.hq % d.hkv == 0, op, ": query heads Hq = ", d.hq,
              " must be a positive multiple of kv heads Hkv = ", d.hkv);
  TORCH_CHECK(offsets.size(0) == d.groups + 1, op, ": offsets must have G + 1 = ", d.groups + 1,
              " entries, got ", offsets.size(0));
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  return d;
}

void check_attention_backward(const char* op, const AttentionDims& d, const at::Tensor& q,
                              const at::Tensor& grad_out, const at::Tensor& out,
                              const at::Tensor& lse) {
  const std::vector<int64_t> out_shape{d.groups, d.hq, d.dim_v};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), op, ": grad_out must be ",
              at::IntArrayRef(out_shape), ", got ", grad_out.sizes());
  TORCH_CHECK(out.sizes() == at::IntArrayRef(out_shape), op, ": out must be ",
              at::IntArrayRef(out_shape), ", got ", out.sizes());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == d.groups && lse.size(1) == d.hq, op,
              ": lse must be [G, Hq] = [", d.groups, ", ", d.hq, "], got ", lse.sizes());
  TORCH_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
              op, ": grad_out and out must have q's dtype ", q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == lse_dtype(q.scalar_type()), op, ": lse must be ",
              lse_dtype(q.scalar_type()), ", got ", lse.scalar_type());
  TORCH_CHECK(grad_out.device() == q.device() && out.device() == q.device() &&
                  lse.device() == q.device(),
              op, ": grad_out, out and lse must be on q's device ", q.device());
}

}  // namespace inrflow
