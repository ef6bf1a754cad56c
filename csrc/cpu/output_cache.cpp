// The bounded cache of large CPU output buffers (see output_cache.h for why and its bounds), and
// the inrflow::cpu_output_cache_limit / cpu_output_cache_stats ops that control and report it.
#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace inrflow {
namespace cpu {
namespace {

constexpr int64_t kBlockAlign = int64_t{1} << 21;  // 2 MiB: a huge page where the OS gives one

int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// min(4 GiB, physical memory / 4), or INRFLOW_CPU_OUTPUT_CACHE_MB.
int64_t default_limit() {
  if (const char* env = std::getenv("INRFLOW_CPU_OUTPUT_CACHE_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && mb >= 0,
                "INRFLOW_CPU_OUTPUT_CACHE_MB must be a non-negative integer (MiB), got '", env,
                "'");
    return static_cast<int64_t>(mb) << 20;
  }
  int64_t limit = int64_t{4} << 30;
#if defined(__linux__)
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) limit = std::min(limit, int64_t{pages} * page / 4);
#endif
  return limit;
}

// Blocks are 2 MiB-aligned anonymous mappings on Linux (aligned operator new elsewhere).
void* map_block(int64_t bytes) {
#if defined(__linux__)
  const size_t span = static_cast<size_t>(bytes + kBlockAlign);
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(raw != MAP_FAILED, "inrflow: CPU output cache: mmap of ", bytes, " bytes failed: ",
              std::strerror(errno));
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kBlockAlign - 1) & ~static_cast<uintptr_t>(kBlockAlign - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + span;
  const uintptr_t used_end = aligned + static_cast<uintptr_t>(bytes);
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  return reinterpret_cast<void*>(aligned);
#else
  return ::operator new(static_cast<size_t>(bytes), std::align_val_t(kBlockAlign));
#endif
}

void unmap_block(void* p, int64_t bytes) {
#if defined(__linux__)
  munmap(p, static_cast<size_t>(bytes));
#else
  (void)bytes;
  ::operator delete(p, std::align_val_t(kBlockAlign));
#endif
}

struct Block {
  void* ptr;
  int64_t bytes;
};

class OutputCache final : public c10::Allocator {
 public:
  OutputCache() : limit_(default_limit()) {}

  int64_t limit() {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_;
  }

  c10::DataPtr allocate(size_t n) override {
    const int64_t want = round_up(std::max<int64_t>(static_cast<int64_t>(n), 1), kBlockAlign);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Best fit among idle blocks no more than a quarter larger than needed.
      auto best = idle_.end();
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if (it->bytes >= want && it->bytes <= want + want / 4 &&
            (best == idle_.end() || it->bytes < best->bytes)) {
          best = it;
        }
      }
      if (best != idle_.end()) {
        p = best->ptr;
        live_[p] = best->bytes;
        live_bytes_ += best->bytes;
        idle_bytes_ -= best->bytes;
        idle_.erase(best);
        ++hits_;
      }
    }
    if (p == nullptr) {
      p = map_block(want);
      std::lock_guard<std::mutex> lock(mu_);
      live_[p] = want;
      live_bytes_ += want;
      ++misses_;
    }
    return {p, p, &OutputCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  OutputCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {limit_, idle_bytes_, live_bytes_, hits_, misses_};
  }

  int64_t set_limit(int64_t limit) {
    std::vector<Block> evicted;
    int64_t previous = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      previous = limit_;
      if (limit >= 0) {
        limit_ = limit;
        evict_locked(0, evicted);
      }
    }
    for (const Block& b : evicted) unmap_block(b.ptr, b.bytes);
    return previous;
  }

  // The deleter of every DataPtr this allocator hands out: keep the block if it fits the bound.
  static void release(void* p) { instance().give_back(p); }

  static OutputCache& instance() {
    // Never destroyed: tensors freed during interpreter shutdown still return their blocks here.
    static OutputCache* cache = new OutputCache();
    return *cache;
  }

 private:
  void give_back(void* p) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "inrflow: CPU output cache: unknown block");
      const Block block{p, it->second};
      live_.erase(it);
      live_bytes_ -= block.bytes;
      if (block.bytes > limit_) {
        evicted.push_back(block);
      } else {
        evict_locked(block.bytes, evicted);
        idle_.push_back(block);
        idle_bytes_ += block.bytes;
      }
    }
    for (const Block& b : evicted) unmap_block(b.ptr, b.bytes);
  }

  // Drops the oldest idle blocks until `incoming` more bytes fit under the limit.
  void evict_locked(int64_t incoming, std::vector<Block>& evicted) {
    while (!idle_.empty() && idle_bytes_ + incoming > limit_) {
      evicted.push_back(idle_.front());
      idle_bytes_ -= idle_.front().bytes;
      idle_.erase(idle_.begin());
    }
  }

  std::mutex mu_;
  int64_t limit_;
  std::vector<Block> idle_;  // oldest first
  std::unordered_map<void*, int64_t> live_;
  int64_t idle_bytes_ = 0;
  int64_t live_bytes_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

}  // namespace

at::Tensor out_tensor(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "inrflow: out_tensor is for CPU tensors");
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(
                                     c10::typeMetaToScalarType(options.dtype())));
  OutputCache& cache = OutputCache::instance();
  if (nbytes < kOutputCacheMinBytes || cache.limit() == 0) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

OutputCacheStats output_cache_stats() { return OutputCache::instance().stats(); }

int64_t set_output_cache_limit(int64_t limit_bytes) {
  return OutputCache::instance().set_limit(limit_bytes);
}

}  // namespace cpu
}  // namespace inrflow

// No tensor arguments, so the kernels are registered for every dispatch key.
TORCH_LIBRARY_IMPL(inrflow, CompositeExplicitAutograd, m) {
  m.impl("cpu_output_cache_limit",
         [](int64_t limit) { return inrflow::cpu::set_output_cache_limit(limit); });
  m.impl("cpu_output_cache_stats", []() {
    const inrflow::cpu::OutputCacheStats s = inrflow::cpu::output_cache_stats();
    return std::vector<int64_t>{s.limit_bytes, s.idle_bytes, s.live_bytes, s.hits, s.misses};
  });
}
