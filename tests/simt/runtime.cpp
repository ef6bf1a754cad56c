// Test-only SIMT emulator runtime: runs a CUDA grid on the CPU, block by block, with one
// user-level fiber per CUDA thread (see prelude.h and README.md).
//
// Fibers start through ucontext once (makecontext) and then switch with _setjmp/_longjmp, which
// is about ten times cheaper than swapcontext. With SIMT_USE_SWAPCONTEXT=1 (the sanitizer build)
// every switch uses swapcontext, which AddressSanitizer understands.
//
// A fiber runs until it reaches __syncthreads, a warp collective or its end. A block barrier
// releases when every live thread has arrived; a warp collective completes when every lane named
// in its mask has arrived. The order in which runnable fibers resume is forward, reverse or a
// seeded random permutation. Misuse (divergent barriers, masks naming exited lanes, deadlock,
// assert/__trap, fiber stack overflow, faults, dynamic shared memory overrun) stops the launch
// with an error message instead of hanging or aborting the process.
#ifdef _FORTIFY_SOURCE
#undef _FORTIFY_SOURCE
#endif

#include "prelude.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdarg>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#ifndef SIMT_USE_SWAPCONTEXT
#define SIMT_USE_SWAPCONTEXT 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

#define SIMT_EXPORT extern "C" __attribute__((visibility("default")))

SIMT_API uint3 threadIdx;
SIMT_API uint3 blockIdx;
SIMT_API dim3 blockDim;
SIMT_API dim3 gridDim;

namespace simt {
namespace {

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultStackSize = 64 * 1024;
constexpr size_t kGuardSize = 64 * 1024;  // PROT_NONE below each fiber stack
constexpr size_t kDefaultSmemLimit = 48 * 1024;
constexpr size_t kMaxSmemOptin = 227 * 1024;  // H100 per-block opt-in maximum
constexpr size_t kRedZone = 256;               // checked bytes past the dynamic smem size

enum class State : uint8_t { kReady, kRunning, kAtBarrier, kAtWarp, kAtActiveMask, kExited };
enum Order : int { kForward = 0, kReverse = 1, kRandom = 2 };

const char* const kOpNames[kNumOps] = {
    "__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",  "__shfl_xor_sync",
    "__ballot_sync",     "__any_sync",        "__all_sync",        "__uni_sync",
    "__syncwarp",        "__match_any_sync",  "__match_all_sync",  "__reduce_add_sync",
    "__reduce_min_sync", "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync",
    "__reduce_and_sync", "__reduce_or_sync",  "__reduce_xor_sync"};
const char* const kBarrierNames[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                     "__syncthreads_or"};

struct Fiber {
  jmp_buf jb;
  ucontext_t uc;
  char* mapping = nullptr;  // guard + stack
  size_t mapping_size = 0;
  char* stack_lo = nullptr;
  size_t stack_size = 0;
};

// Per CUDA thread of the running block.
struct Slot {
  State state;
  bool started;
  int op;  // warp op or barrier kind while waiting
  const char* file;
  int line;
  uint32_t mask;
  int32_t arg;
  int32_t width;
  uint64_t value;
  uint64_t result;
  uint3 tid;
};

// ----- global emulator state (one launch at a time per process, guarded by g_launch_mutex) -----
std::mutex g_launch_mutex;
thread_local bool t_in_launch = false;

int g_order = kForward;
uint64_t g_rng = 0;
bool g_strict = true;
size_t g_stack_size = 0;  // 0: not initialised yet (read INRFLOW_SIMT_STACK_SIZE)

std::string g_error;             // last error message (sticky until simt_clear_error)
cudaError_t g_last_cuda_error = cudaSuccess;

std::vector<Fiber*> g_fibers;
jmp_buf g_sched_jb;
#if SIMT_USE_SWAPCONTEXT
ucontext_t g_sched_uc;
#endif
Fiber* g_creating = nullptr;

// Launch being executed.
void (*g_body)(void*) = nullptr;
void* g_ctx = nullptr;
bool g_failed = false;
cudaError_t g_fail_code = cudaSuccess;
bool g_on_fiber = false;
long long g_clock = 0;

// Block being executed.
unsigned g_n = 0;
unsigned g_nwarps = 0;
unsigned g_cur = 0;
std::vector<Slot> g_slots;
std::vector<uint32_t> g_queue;
size_t g_qhead = 0;
size_t g_qsize = 0;
unsigned g_exited = 0;
unsigned g_barrier_waiting = 0;
const char* g_barrier_file = nullptr;
int g_barrier_line = 0;
int g_barrier_kind = 0;
unsigned g_barrier_count = 0;
bool g_barrier_and = true;
bool g_barrier_or = false;
std::vector<uint32_t> g_warp_present;
std::vector<uint32_t> g_warp_exited;
// Pending warp collectives: one record per (warp, mask) with lanes waiting, at most 32 per warp.
struct Group {
  uint32_t mask;
  uint32_t arrived;
  int op;
  const char* file;
  int line;
};
std::vector<Group> g_groups;           // [warp * 32 + i]
std::vector<uint8_t> g_warp_ngroups;   // number of pending groups per warp
std::vector<uint32_t> g_warp_runnable;  // lanes ready or running
std::vector<uint32_t> g_warp_am;        // lanes waiting at __activemask
std::vector<uint32_t> g_scratch;

// Dynamic shared memory (all `extern __shared__` names alias one buffer, as on a GPU).
unsigned char* (*g_dyn_getter)() = nullptr;
size_t g_dyn_capacity = 0;
const char* g_dyn_names = "";
std::unordered_map<const void*, int> g_max_dyn_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize

// ----- small helpers -----
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return std::string(buf);
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint32_t random_below(uint32_t bound) {
  return static_cast<uint32_t>(((splitmix64(g_rng) >> 32) * bound) >> 32);
}

void shuffle(uint32_t* ids, size_t k) {
  for (size_t i = k; i > 1; --i) std::swap(ids[i - 1], ids[random_below(static_cast<uint32_t>(i))]);
}

std::string site(const char* file, int line) { return format("%s:%d", file ? file : "?", line); }

bool same_site(const char* f1, int l1, const char* f2, int l2) {
  return l1 == l2 && (f1 == f2 || (f1 && f2 && std::strcmp(f1, f2) == 0));
}

std::string thread_name(unsigned id) {
  const Slot& s = g_slots[id];
  return format("thread (%u,%u,%u) [linear %u, warp %u, lane %u]", s.tid.x, s.tid.y, s.tid.z, id,
                id / 32, id % 32);
}

std::string lane_list(uint32_t bits) {
  std::string out;
  for (int lane = 0; lane < 32; ++lane) {
    if (!(bits >> lane & 1u)) continue;
    int end = lane;
    while (end + 1 < 32 && (bits >> (end + 1) & 1u)) ++end;
    if (!out.empty()) out += ",";
    out += end > lane ? format("%d-%d", lane, end) : format("%d", lane);
    lane = end;
  }
  return out;
}

// Records the first error of the launch; the scheduler stops at its next decision.
void fail(cudaError_t code, const std::string& what) {
  if (g_failed) return;
  g_failed = true;
  g_fail_code = code;
  g_error = format("[simt] block (%u,%u,%u): ", blockIdx.x, blockIdx.y, blockIdx.z) + what;
}

// ----- fibers -----
void fiber_main();

inline void resume_fiber(Fiber* f) {
#if SIMT_USE_SWAPCONTEXT
  swapcontext(&g_sched_uc, &f->uc);
#else
  if (!_setjmp(g_sched_jb)) _longjmp(f->jb, 1);
#endif
}

// Returns control to the scheduler loop (used once, when a fiber is created).
inline void park_fiber(Fiber* f) {
#if SIMT_USE_SWAPCONTEXT
  swapcontext(&f->uc, &g_sched_uc);
#else
  if (!_setjmp(f->jb)) _longjmp(g_sched_jb, 1);
#endif
}

// (Re)starts the fiber's context at fiber_main, which parks at once.
void start_fiber(Fiber* f) {
#if SIMT_ASAN
  __asan_unpoison_memory_region(f->stack_lo, f->stack_size);
#endif
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack_lo;
  f->uc.uc_stack.ss_size = f->stack_size;
  f->uc.uc_link = nullptr;
  makecontext(&f->uc, fiber_main, 0);
  g_creating = f;
#if SIMT_USE_SWAPCONTEXT
  swapcontext(&g_sched_uc, &f->uc);
#else
  if (!_setjmp(g_sched_jb)) setcontext(&f->uc);
#endif
}

Fiber* create_fiber() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Fiber* f = new Fiber();
  f->stack_size = (g_stack_size + page - 1) / page * page;
  f->mapping_size = kGuardSize + f->stack_size;
  void* mem = mmap(nullptr, f->mapping_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    delete f;
    return nullptr;
  }
  f->mapping = static_cast<char*>(mem);
  mprotect(f->mapping, kGuardSize, PROT_NONE);
  f->stack_lo = f->mapping + kGuardSize;
  start_fiber(f);
  return f;
}

void destroy_fibers() {
  for (Fiber* f : g_fibers) {
    munmap(f->mapping, f->mapping_size);
    delete f;
  }
  g_fibers.clear();
}

void init_stack_size() {
  if (g_stack_size != 0) return;
  g_stack_size = kDefaultStackSize;
  if (const char* env = std::getenv("INRFLOW_SIMT_STACK_SIZE")) {
    const long long v = std::atoll(env);
    if (v >= 4096) g_stack_size = static_cast<size_t>(v);
  }
}

// ----- scheduling -----
// Pops the next runnable thread and makes it current; nullptr when none (or after a failure).
inline Fiber* next_runnable() {
  if (g_failed || g_qsize == 0) return nullptr;
  const unsigned id = g_queue[g_qhead];
  g_qhead = g_qhead + 1 == g_n ? 0 : g_qhead + 1;
  --g_qsize;
  Slot& s = g_slots[id];
  s.state = State::kRunning;
  s.started = true;
  g_cur = id;
  threadIdx = s.tid;
  return g_fibers[id];
}

// Saves the running fiber and switches straight to the next runnable one (or back to the
// scheduler loop when none is left); returns when this fiber is resumed.
inline void switch_away(Fiber* self) {
#if SIMT_USE_SWAPCONTEXT
  Fiber* next = next_runnable();
  if (next == self) return;
  swapcontext(&self->uc, next ? &next->uc : &g_sched_uc);
#else
  if (_setjmp(self->jb)) return;
  Fiber* next = next_runnable();
  if (next != nullptr) _longjmp(next->jb, 1);
  _longjmp(g_sched_jb, 1);
#endif
}

void push_ready(unsigned id) {
  const size_t tail = g_qhead + g_qsize;
  g_queue[tail >= g_n ? tail - g_n : tail] = id;
  ++g_qsize;
  g_slots[id].state = State::kReady;
  g_warp_runnable[id / 32] |= 1u << (id % 32);
}

// Makes a group of released threads runnable in the current schedule order.
void release(uint32_t* ids, size_t k) {
  if (g_order == kReverse) {
    std::reverse(ids, ids + k);
  } else if (g_order == kRandom) {
    shuffle(ids, k);
  }
  for (size_t i = 0; i < k; ++i) push_ready(ids[i]);
}

inline Slot& current() { return g_slots[g_cur]; }

// Parks the running fiber; returns when the scheduler resumes it.
inline void block_current() { switch_away(g_fibers[g_cur]); }

[[noreturn]] void stop_current() {
  switch_away(g_fibers[g_cur]);
  std::abort();  // the scheduler never resumes a fiber after a failure
}

void mark_blocked(unsigned id) { g_warp_runnable[id / 32] &= ~(1u << (id % 32)); }

// __activemask: lanes waiting at the same call site, once no lane of the warp can still run.
void check_activemask(unsigned warp) {
  uint32_t remaining = g_warp_am[warp];
  if (remaining == 0 || g_warp_runnable[warp] != 0) return;
  g_warp_am[warp] = 0;
  while (remaining) {
    const unsigned first = warp * 32 + static_cast<unsigned>(__builtin_ctz(remaining));
    uint32_t group = 0;
    for (uint32_t bits = remaining; bits; bits &= bits - 1) {
      const unsigned id = warp * 32 + static_cast<unsigned>(__builtin_ctz(bits));
      if (same_site(g_slots[id].file, g_slots[id].line, g_slots[first].file,
                    g_slots[first].line)) {
        group |= 1u << (id % 32);
      }
    }
    remaining &= ~group;
    size_t k = 0;
    for (uint32_t bits = group; bits; bits &= bits - 1) {
      const unsigned id = warp * 32 + static_cast<unsigned>(__builtin_ctz(bits));
      g_slots[id].result = group;
      g_scratch[k++] = id;
    }
    release(g_scratch.data(), k);
  }
}

void maybe_release_barrier() {
  if (g_barrier_waiting == 0 || g_barrier_waiting + g_exited < g_n) return;
  if (g_exited > 0 && g_strict) {
    unsigned first_exited = 0;
    while (g_slots[first_exited].state != State::kExited) ++first_exited;
    fail(cudaErrorLaunchFailure,
         format("barrier in divergent code: %u thread(s) wait at %s (%s) but %u thread(s) exited "
                "without reaching it (first: %s)",
                g_barrier_waiting, kBarrierNames[g_barrier_kind],
                site(g_barrier_file, g_barrier_line).c_str(), g_exited,
                thread_name(first_exited).c_str()));
    return;
  }
  uint64_t result = 0;
  switch (g_barrier_kind) {
    case kBarrierCount: result = g_barrier_count; break;
    case kBarrierAnd: result = g_barrier_and ? 1 : 0; break;
    case kBarrierOr: result = g_barrier_or ? 1 : 0; break;
    default: break;
  }
  size_t k = 0;
  for (unsigned id = 0; id < g_n; ++id) {
    if (g_slots[id].state == State::kAtBarrier) {
      g_slots[id].result = result;
      g_scratch[k++] = id;
    }
  }
  g_barrier_waiting = 0;
  g_barrier_count = 0;
  g_barrier_and = true;
  g_barrier_or = false;
  release(g_scratch.data(), k);
}

// Source lane of a shuffle, with the PTX shfl semantics for sub-warp widths.
unsigned shfl_source(int op, unsigned lane, int arg, int width) {
  const unsigned seg_base = lane & ~static_cast<unsigned>(width - 1);
  const unsigned max_lane = seg_base + static_cast<unsigned>(width) - 1;
  const int b = arg;
  int j = static_cast<int>(lane);
  bool valid = true;
  switch (op) {
    case kShflIdx:
      j = static_cast<int>(seg_base) + (b & (width - 1));
      break;
    case kShflUp:
      j = static_cast<int>(lane) - b;
      valid = j >= static_cast<int>(seg_base);
      break;
    case kShflDown:
      j = static_cast<int>(lane) + b;
      valid = j <= static_cast<int>(max_lane);
      break;
    case kShflXor:
      j = static_cast<int>(lane ^ static_cast<unsigned>(b & 31));
      valid = j <= static_cast<int>(max_lane);
      break;
    default:
      break;
  }
  return valid ? static_cast<unsigned>(j) : lane;
}

void remove_group(unsigned warp, unsigned index) {
  const unsigned last = --g_warp_ngroups[warp];
  g_groups[warp * 32 + index] = g_groups[warp * 32 + last];
}

// Every (non-excused) lane of pending group `index` of `warp` has arrived: compute the results
// and release the lanes in `mask` (the lanes that arrived).
void complete_warp(unsigned warp, unsigned index, uint32_t mask) {
  remove_group(warp, index);
  const unsigned base = warp * 32;
  const Slot& first = g_slots[base + static_cast<unsigned>(__builtin_ctz(mask))];
  const int op = first.op;
  uint64_t common = 0;
  switch (op) {
    case kBallot:
    case kAny:
    case kAll:
    case kUni: {
      uint32_t votes = 0;
      for (uint32_t bits = mask; bits; bits &= bits - 1) {
        const unsigned lane = static_cast<unsigned>(__builtin_ctz(bits));
        if (g_slots[base + lane].value) votes |= 1u << lane;
      }
      if (op == kBallot) common = votes;
      if (op == kAny) common = votes != 0;
      if (op == kAll) common = votes == mask;
      if (op == kUni) common = votes == 0 || votes == mask;
      break;
    }
    case kMatchAll: {
      bool all = true;
      for (uint32_t bits = mask; bits; bits &= bits - 1) {
        all = all && g_slots[base + static_cast<unsigned>(__builtin_ctz(bits))].value == first.value;
      }
      common = all ? ((1ULL << 32) | mask) : 0;
      break;
    }
    case kReduceAdd:
    case kReduceMinU:
    case kReduceMaxU:
    case kReduceMinS:
    case kReduceMaxS:
    case kReduceAnd:
    case kReduceOr:
    case kReduceXor: {
      uint32_t acc = static_cast<uint32_t>(first.value);
      for (uint32_t bits = mask & (mask - 1); bits; bits &= bits - 1) {
        const uint32_t v = static_cast<uint32_t>(g_slots[base + __builtin_ctz(bits)].value);
        switch (op) {
          case kReduceAdd: acc += v; break;
          case kReduceMinU: acc = std::min(acc, v); break;
          case kReduceMaxU: acc = std::max(acc, v); break;
          case kReduceMinS:
            acc = static_cast<uint32_t>(std::min(static_cast<int32_t>(acc), static_cast<int32_t>(v)));
            break;
          case kReduceMaxS:
            acc = static_cast<uint32_t>(std::max(static_cast<int32_t>(acc), static_cast<int32_t>(v)));
            break;
          case kReduceAnd: acc &= v; break;
          case kReduceOr: acc |= v; break;
          default: acc ^= v; break;
        }
      }
      common = acc;
      break;
    }
    default:
      break;
  }

  size_t k = 0;
  for (uint32_t bits = mask; bits; bits &= bits - 1) {
    const unsigned lane = static_cast<unsigned>(__builtin_ctz(bits));
    Slot& s = g_slots[base + lane];
    switch (op) {
      case kShflIdx:
      case kShflUp:
      case kShflDown:
      case kShflXor: {
        const unsigned src = shfl_source(op, lane, s.arg, s.width);
        if (src != lane && !(mask >> src & 1u)) {
          const unsigned src_id = base + src;
          const char* why = src_id >= g_n                                    ? "absent from the block"
                            : g_slots[src_id].state == State::kExited ? "exited"
                                                                          : "not participating";
          fail(cudaErrorLaunchFailure,
               format("%s at %s: %s reads lane %u, which is not named in the mask 0x%08x "
                      "(lane %u is %s); the value would be undefined",
                      kOpNames[op], site(s.file, s.line).c_str(), thread_name(base + lane).c_str(),
                      src, mask, src, why));
          return;
        }
        s.result = g_slots[base + src].value;
        break;
      }
      case kMatchAny: {
        uint32_t same = 0;
        for (uint32_t bits2 = mask; bits2; bits2 &= bits2 - 1) {
          const unsigned l2 = static_cast<unsigned>(__builtin_ctz(bits2));
          if (g_slots[base + l2].value == s.value) same |= 1u << l2;
        }
        s.result = same;
        break;
      }
      default:
        s.result = common;
        break;
    }
    g_scratch[k++] = base + lane;
  }
  release(g_scratch.data(), k);
}

// Completes the pending groups of `warp` whose lanes have all arrived (lanes that exited or are
// absent are excused when strict mode is off).
void try_complete_warp(unsigned warp) {
  bool progress = true;
  while (progress && !g_failed) {
    progress = false;
    const uint32_t excused = g_strict ? 0u : (g_warp_exited[warp] | ~g_warp_present[warp]);
    for (unsigned i = 0; i < g_warp_ngroups[warp]; ++i) {
      const Group& gr = g_groups[warp * 32 + i];
      if (((gr.mask & ~excused) & ~gr.arrived) == 0) {
        complete_warp(warp, i, gr.arrived);
        progress = true;
        break;
      }
    }
  }
}

void on_thread_exit() {
  const unsigned id = g_cur;
  const unsigned warp = id / 32;
  const uint32_t bit = 1u << (id % 32);
  g_slots[id].state = State::kExited;
  ++g_exited;
  g_warp_exited[warp] |= bit;
  mark_blocked(id);
  for (unsigned i = 0; i < g_warp_ngroups[warp] && g_strict; ++i) {
    const Group& gr = g_groups[warp * 32 + i];
    const unsigned other = warp * 32 + static_cast<unsigned>(__builtin_ctz(gr.arrived));
    const Slot& o = g_slots[other];
    if (gr.mask & bit) {
      fail(cudaErrorLaunchFailure,
           format("%s exited while %s waits at %s (%s) with mask 0x%08x naming it (warp "
                  "collective in divergent code, or a mask that names an exited lane)",
                  thread_name(id).c_str(), thread_name(other).c_str(), kOpNames[o.op],
                  site(o.file, o.line).c_str(), o.mask));
      return;
    }
  }
  if (!g_strict) try_complete_warp(warp);
  maybe_release_barrier();
  check_activemask(warp);
}

void fiber_main() {
  Fiber* self = g_creating;
  park_fiber(self);  // parked until the scheduler hands this fiber a CUDA thread
  for (;;) {
    g_body(g_ctx);
    on_thread_exit();
    switch_away(self);
  }
}

std::string deadlock_summary() {
  std::string out;
  int groups = 0;
  unsigned id = 0;
  while (id < g_n) {
    const Slot& s = g_slots[id];
    unsigned end = id;
    auto same = [&](const Slot& o) {
      if (o.state != s.state) return false;
      if (s.state == State::kExited) return true;
      return o.op == s.op && o.mask == s.mask && same_site(o.file, o.line, s.file, s.line);
    };
    while (end + 1 < g_n && same(g_slots[end + 1])) ++end;
    std::string what;
    switch (s.state) {
      case State::kAtBarrier:
        what = format("wait at %s (%s)", kBarrierNames[s.op], site(s.file, s.line).c_str());
        break;
      case State::kAtWarp:
        what = format("wait at %s (%s) with mask 0x%08x", kOpNames[s.op],
                      site(s.file, s.line).c_str(), s.mask);
        break;
      case State::kAtActiveMask:
        what = format("wait at __activemask (%s)", site(s.file, s.line).c_str());
        break;
      case State::kExited: what = "exited"; break;
      default: what = "runnable"; break;
    }
    if (groups < 12) {
      out += end > id ? format("; threads %u-%u %s", id, end, what.c_str())
                      : format("; thread %u %s", id, what.c_str());
    } else if (groups == 12) {
      out += "; ...";
    }
    ++groups;
    id = end + 1;
  }
  return out;
}

// ----- faults inside kernels -----
// While a launch runs, SIGSEGV/SIGBUS/SIGFPE raised by kernel code on a fiber stop the launch
// with an error instead of killing the process: a fiber that runs off its stack hits the guard
// below it, a wild pointer faults, an integer division by zero traps. Faults elsewhere go to the
// previous handlers.
constexpr int kFaultSignals[] = {SIGSEGV, SIGBUS, SIGFPE};
constexpr int kNumFaultSignals = sizeof(kFaultSignals) / sizeof(kFaultSignals[0]);
char g_altstack[64 * 1024];
struct sigaction g_old_actions[kNumFaultSignals];
stack_t g_old_altstack;
bool g_handler_installed = false;

void fault_handler(int sig, siginfo_t* info, void*) {
  int index = 0;
  while (index + 1 < kNumFaultSignals && kFaultSignals[index] != sig) ++index;
  if (g_on_fiber && g_cur < g_fibers.size()) {
    Fiber* f = g_fibers[g_cur];
    const char* addr = static_cast<const char*>(info->si_addr);
    if (sig == SIGSEGV && addr >= f->mapping && addr < f->stack_lo) {
      fail(cudaErrorLaunchFailure,
           format("%s overflowed its %zu-byte fiber stack (guard page hit); large per-thread "
                  "arrays need simt_set_stack_size / INRFLOW_SIMT_STACK_SIZE",
                  thread_name(g_cur).c_str(), f->stack_size));
    } else if (sig == SIGFPE) {
      fail(cudaErrorLaunchFailure,
           format("arithmetic trap (integer division by zero?) in %s", thread_name(g_cur).c_str()));
    } else {
      fail(cudaErrorIllegalAddress, format("illegal memory access at address %p in %s",
                                           info->si_addr, thread_name(g_cur).c_str()));
    }
    g_on_fiber = false;
#if !SIMT_USE_SWAPCONTEXT
    _longjmp(g_sched_jb, 1);
#else
    setcontext(&g_sched_uc);
#endif
  }
  // Not ours: restore the previous disposition and let the fault happen again.
  sigaction(sig, &g_old_actions[index], nullptr);
}

void install_fault_handlers() {
#if !SIMT_ASAN
  stack_t ss{};
  ss.ss_sp = g_altstack;
  ss.ss_size = sizeof(g_altstack);
  ss.ss_flags = 0;
  sigaltstack(&ss, &g_old_altstack);
  struct sigaction sa {};
  sa.sa_sigaction = fault_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < kNumFaultSignals; ++i) sigaction(kFaultSignals[i], &sa, &g_old_actions[i]);
  g_handler_installed = true;
#endif
}

void remove_fault_handlers() {
  if (!g_handler_installed) return;
  for (int i = 0; i < kNumFaultSignals; ++i) sigaction(kFaultSignals[i], &g_old_actions[i], nullptr);
  sigaltstack(&g_old_altstack, nullptr);
  g_handler_installed = false;
}

// ----- blocks -----
void prepare_dynamic_smem(size_t bytes) {
  if (g_dyn_getter == nullptr) return;
  unsigned char* buf = g_dyn_getter();
#if SIMT_ASAN
  __asan_unpoison_memory_region(buf, g_dyn_capacity);
#endif
  std::memset(buf, 0xFF, std::min(g_dyn_capacity, bytes + kRedZone));  // NaN bit pattern
#if SIMT_ASAN
  __asan_poison_memory_region(buf + bytes, g_dyn_capacity - bytes);
#endif
}

void check_dynamic_smem(size_t bytes) {
  // Under ASan the bytes past `bytes` are poisoned, so ASan itself reports any access to them.
  if (SIMT_ASAN || g_dyn_getter == nullptr || g_failed) return;
  const unsigned char* buf = g_dyn_getter();
  const size_t end = std::min(g_dyn_capacity, bytes + kRedZone);
  for (size_t i = bytes; i < end; ++i) {
    if (buf[i] != 0xFF) {
      fail(cudaErrorLaunchFailure,
           format("dynamic shared memory overrun: byte %zu written, past the %zu bytes of "
                  "dynamicSmemBytes (extern __shared__ %s)",
                  i, bytes, g_dyn_names));
      return;
    }
  }
}

void run_block(size_t dyn_bytes) {
  const unsigned bx = blockDim.x, by = blockDim.y;
  for (unsigned id = 0; id < g_n; ++id) {
    Slot& s = g_slots[id];
    s = Slot{};
    s.state = State::kReady;
    s.tid = make_uint3(id % bx, (id / bx) % by, id / (bx * by));
  }
  std::fill(g_warp_exited.begin(), g_warp_exited.end(), 0u);
  std::fill(g_warp_ngroups.begin(), g_warp_ngroups.end(), 0u);
  std::fill(g_warp_runnable.begin(), g_warp_runnable.end(), 0u);
  std::fill(g_warp_am.begin(), g_warp_am.end(), 0u);
  g_exited = 0;
  g_barrier_waiting = 0;
  g_barrier_count = 0;
  g_barrier_and = true;
  g_barrier_or = false;
  g_qhead = 0;
  g_qsize = 0;
  for (unsigned id = 0; id < g_n; ++id) g_scratch[id] = id;
  release(g_scratch.data(), g_n);
  prepare_dynamic_smem(dyn_bytes);

  // Fibers hand over to each other directly; control comes back here only when no thread of
  // the block is runnable (all exited, deadlock) or after a failure.
  while (!g_failed) {
    Fiber* f = next_runnable();
    if (f == nullptr) {
      if (g_exited != g_n) {
        fail(cudaErrorLaunchFailure, "deadlock: no thread can proceed" + deadlock_summary());
      }
      break;
    }
    g_on_fiber = true;
    resume_fiber(f);
    g_on_fiber = false;
  }

  if (g_failed) {
    // Threads stopped mid-kernel: restart their fibers so that the pool stays usable.
    for (unsigned id = 0; id < g_n; ++id) {
      if (g_slots[id].started && g_slots[id].state != State::kExited) start_fiber(g_fibers[id]);
    }
    return;
  }
  check_dynamic_smem(dyn_bytes);
}

// Like the CUDA runtime, a success does not overwrite an error that cudaGetLastError has not
// returned yet.
cudaError_t record(cudaError_t code, const std::string& what) {
  if (code != cudaSuccess) g_last_cuda_error = code;
  if (code != cudaSuccess && !what.empty()) g_error = "[simt] " + what;
  return code;
}

}  // namespace

// ----- device-side entry points (called on fibers) -----
int barrier(const char* file, int line, int kind, int predicate) {
  if (!g_on_fiber) {
    std::fprintf(stderr, "[simt] %s called outside a kernel (%s:%d)\n", kBarrierNames[kind], file,
                 line);
    std::abort();
  }
  Slot& s = current();
  if (g_barrier_waiting == 0) {
    g_barrier_file = file;
    g_barrier_line = line;
    g_barrier_kind = kind;
  } else if (g_strict && (kind != g_barrier_kind ||
                          !same_site(file, line, g_barrier_file, g_barrier_line))) {
    fail(cudaErrorLaunchFailure,
         format("barrier in divergent code: %s waits at %s (%s) while other threads wait at %s "
                "(%s)",
                thread_name(g_cur).c_str(), kBarrierNames[kind], site(file, line).c_str(),
                kBarrierNames[g_barrier_kind], site(g_barrier_file, g_barrier_line).c_str()));
    stop_current();
  }
  s.state = State::kAtBarrier;
  s.op = kind;
  s.file = file;
  s.line = line;
  s.mask = 0;
  ++g_barrier_waiting;
  g_barrier_count += predicate != 0;
  g_barrier_and = g_barrier_and && predicate != 0;
  g_barrier_or = g_barrier_or || predicate != 0;
  mark_blocked(g_cur);
  maybe_release_barrier();
  check_activemask(g_cur / 32);
  if (g_failed) stop_current();
  block_current();
  return static_cast<int>(s.result);
}

uint64_t warp_collective(int op, unsigned mask, uint64_t value, int arg, int width,
                         const char* file, int line) {
  if (!g_on_fiber) {
    std::fprintf(stderr, "[simt] %s called outside a kernel (%s:%d)\n", kOpNames[op], file, line);
    std::abort();
  }
  const unsigned id = g_cur;
  const unsigned warp = id / 32;
  const uint32_t bit = 1u << (id % 32);
  auto where = [&]() { return format("%s at %s", kOpNames[op], site(file, line).c_str()); };
  if (!(mask & bit)) {
    fail(cudaErrorLaunchFailure, format("%s: the mask 0x%08x does not name the calling %s",
                                        where().c_str(), mask, thread_name(id).c_str()));
    stop_current();
  }
  if (op <= kShflXor && (width < 1 || width > 32 || (width & (width - 1)) != 0)) {
    fail(cudaErrorLaunchFailure, format("%s: width %d is not a power of two in [1, 32]",
                                        where().c_str(), width));
    stop_current();
  }
  if (g_strict) {
    const uint32_t absent = mask & ~g_warp_present[warp];
    if (absent) {
      fail(cudaErrorLaunchFailure,
           format("%s: mask 0x%08x names lane(s) %s of warp %u, which do not exist (the block has "
                  "%u threads)",
                  where().c_str(), mask, lane_list(absent).c_str(), warp, g_n));
      stop_current();
    }
    const uint32_t exited = mask & g_warp_exited[warp];
    if (exited) {
      fail(cudaErrorLaunchFailure,
           format("%s: mask 0x%08x names lane(s) %s of warp %u, which already exited (called by "
                  "%s)",
                  where().c_str(), mask, lane_list(exited).c_str(), warp, thread_name(id).c_str()));
      stop_current();
    }
  }
  // A pending collective that names this lane, or that this lane's mask names, must be the
  // same collective (same mask, kind and, in strict mode, call site).
  Group* mine = nullptr;
  const unsigned ngroups = g_warp_ngroups[warp];
  for (unsigned i = 0; i < ngroups; ++i) {
    Group& gr = g_groups[warp * 32 + i];
    const bool same_group = gr.mask == mask;
    if (same_group) mine = &gr;
    const bool site_ok = op == kSyncWarp || !g_strict || same_site(gr.file, gr.line, file, line);
    if ((same_group && (gr.op != op || !site_ok)) ||
        (!same_group && ((gr.mask & bit) || (mask & gr.arrived)))) {
      const unsigned other = warp * 32 + static_cast<unsigned>(__builtin_ctz(gr.arrived));
      fail(cudaErrorLaunchFailure,
           format("mismatched warp collectives (divergent code?): %s is at %s with mask 0x%08x "
                  "while %s waits at %s (%s) with mask 0x%08x",
                  thread_name(id).c_str(), where().c_str(), mask, thread_name(other).c_str(),
                  kOpNames[gr.op], site(gr.file, gr.line).c_str(), gr.mask));
      stop_current();
    }
  }
  if (mine == nullptr) {
    mine = &g_groups[warp * 32 + ngroups];
    *mine = Group{mask, 0u, op, file, line};
    g_warp_ngroups[warp] = static_cast<uint8_t>(ngroups + 1);
  }
  mine->arrived |= bit;
  Slot& s = current();
  s.state = State::kAtWarp;
  s.op = op;
  s.file = file;
  s.line = line;
  s.mask = mask;
  s.arg = arg;
  s.width = width;
  s.value = value;
  mark_blocked(id);
  const uint32_t excused = g_strict ? 0u : (g_warp_exited[warp] | ~g_warp_present[warp]);
  if (((mask & ~excused) & ~mine->arrived) == 0) {
    complete_warp(warp, static_cast<unsigned>(mine - &g_groups[warp * 32]), mine->arrived);
  } else {
    check_activemask(warp);
  }
  if (g_failed) stop_current();
  block_current();
  return s.result;
}

unsigned activemask(const char* file, int line) {
  if (!g_on_fiber) return 1u;
  Slot& s = current();
  s.state = State::kAtActiveMask;
  s.file = file;
  s.line = line;
  s.mask = 0;
  s.op = 0;
  g_warp_am[g_cur / 32] |= 1u << (g_cur % 32);
  mark_blocked(g_cur);
  check_activemask(g_cur / 32);
  block_current();
  return static_cast<unsigned>(s.result);
}

void yield() {
  if (!g_on_fiber) return;
  push_ready(g_cur);
  block_current();
}

long long clock_ticks() { return ++g_clock; }

void trap(const char* what, const char* file, int line) {
  if (!g_on_fiber) {
    std::fprintf(stderr, "[simt] %s outside a kernel at %s:%d\n", what, file, line);
    std::abort();
  }
  fail(cudaErrorLaunchFailure,
       format("%s in %s at %s", what, thread_name(g_cur).c_str(), site(file, line).c_str()));
  stop_current();
}

cudaError_t launch(const cudaLaunchConfig_t* config, const void* kernel, void (*body)(void*),
                   void* ctx) {
  if (t_in_launch) {
    return record(cudaErrorNotSupported, "kernel launch from inside a kernel is not emulated");
  }
  if (config == nullptr || kernel == nullptr) {
    return record(cudaErrorInvalidValue, "cudaLaunchKernelEx: null config or kernel");
  }
  const dim3 grid = config->gridDim;
  const dim3 block = config->blockDim;
  const unsigned long long nthreads =
      static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock || block.x > 1024 || block.y > 1024 ||
      block.z > 64) {
    return record(cudaErrorInvalidConfiguration,
                  format("invalid block size (%u,%u,%u): at most 1024 threads, z <= 64", block.x,
                         block.y, block.z));
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535) {
    return record(cudaErrorInvalidConfiguration,
                  format("invalid grid size (%u,%u,%u)", grid.x, grid.y, grid.z));
  }
  const size_t dyn = config->dynamicSmemBytes;
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  if (dyn > kMaxSmemOptin) {
    return record(cudaErrorInvalidValue,
                  format("dynamicSmemBytes %zu exceeds the %zu-byte per-block maximum", dyn,
                         kMaxSmemOptin));
  }
  if (dyn > kDefaultSmemLimit) {
    auto it = g_max_dyn_smem.find(kernel);
    if (it == g_max_dyn_smem.end() || static_cast<size_t>(it->second) < dyn) {
      return record(cudaErrorInvalidValue,
                    format("dynamicSmemBytes %zu > 48 KiB needs cudaFuncSetAttribute(kernel, "
                           "cudaFuncAttributeMaxDynamicSharedMemorySize, >= %zu) first",
                           dyn, dyn));
    }
  }
  if (dyn > 0 && g_dyn_getter != nullptr && dyn > g_dyn_capacity) {
    return record(cudaErrorInvalidValue, "dynamic shared memory buffer too small");
  }

  init_stack_size();
  t_in_launch = true;
  const unsigned n = static_cast<unsigned>(nthreads);
  while (g_fibers.size() < n) {
    Fiber* f = create_fiber();
    if (f == nullptr) {
      t_in_launch = false;
      return record(cudaErrorMemoryAllocation, "could not map a fiber stack");
    }
    g_fibers.push_back(f);
  }
  g_n = n;
  g_nwarps = (n + 31) / 32;
  g_slots.assign(n, Slot{});
  g_queue.assign(n, 0);
  g_scratch.assign(n, 0);
  g_warp_present.assign(g_nwarps, 0xffffffffu);
  if (n % 32) g_warp_present[g_nwarps - 1] = (1u << (n % 32)) - 1u;
  g_warp_exited.assign(g_nwarps, 0);
  g_groups.assign(static_cast<size_t>(g_nwarps) * 32, Group{});
  g_warp_ngroups.assign(g_nwarps, 0);
  g_warp_runnable.assign(g_nwarps, 0);
  g_warp_am.assign(g_nwarps, 0);
  g_body = body;
  g_ctx = ctx;
  g_failed = false;
  g_fail_code = cudaSuccess;
  gridDim = grid;
  blockDim = block;

  const unsigned long long nblocks = static_cast<unsigned long long>(grid.x) * grid.y * grid.z;
  std::vector<uint32_t> block_order;
  if (g_order == kRandom && nblocks <= (1ULL << 22)) {
    block_order.resize(nblocks);
    for (size_t i = 0; i < nblocks; ++i) block_order[i] = static_cast<uint32_t>(i);
    shuffle(block_order.data(), block_order.size());
  }
  install_fault_handlers();
  for (unsigned long long i = 0; i < nblocks && !g_failed; ++i) {
    unsigned long long b = i;
    if (!block_order.empty()) {
      b = block_order[i];
    } else if (g_order == kReverse) {
      b = nblocks - 1 - i;
    }
    blockIdx = make_uint3(static_cast<unsigned>(b % grid.x),
                          static_cast<unsigned>((b / grid.x) % grid.y),
                          static_cast<unsigned>(b / (static_cast<unsigned long long>(grid.x) * grid.y)));
    run_block(dyn);
  }
  remove_fault_handlers();
  t_in_launch = false;
  g_body = nullptr;
  g_ctx = nullptr;
  if (g_failed) return record(g_fail_code, "");
  return record(cudaSuccess, "");
}

}  // namespace simt

// ----- the part of the CUDA runtime API that kernel launchers use -----
extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = simt::g_last_cuda_error;
  simt::g_last_cuda_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return simt::g_last_cuda_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "unknown error";
  }
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaGetDevice(int* device) {
  if (device) *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  if (value == nullptr) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    default: *value = 0; break;
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > simt::kMaxSmemOptin) return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> lock(simt::g_launch_mutex);
    simt::g_max_dyn_smem[func] = value;
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind,
                            cudaStream_t) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}

// Device-side assert(): glibc's assert macro calls __assert_fail. Inside a kernel it stops the
// launch with cudaErrorAssert (as on a GPU); elsewhere it behaves like glibc's.
void __assert_fail(const char* assertion, const char* file, unsigned int line,
                   const char* function) noexcept {
  if (simt::g_on_fiber) {
    simt::fail(cudaErrorAssert,
               simt::format("assertion `%s' failed in %s at %s:%u (%s)", assertion,
                            simt::thread_name(simt::g_cur).c_str(), file, line,
                            function ? function : "?"));
    simt::stop_current();
  }
  std::fprintf(stderr, "%s:%u: %s: Assertion `%s' failed.\n", file, line,
               function ? function : "?", assertion);
  std::abort();
}

}  // extern "C"

// ----- control API for the Python harness (tests/emulation.py) -----
SIMT_EXPORT void simt_set_schedule(int order, uint64_t seed) {
  std::lock_guard<std::mutex> lock(simt::g_launch_mutex);
  simt::g_order = (order >= 0 && order <= 2) ? order : 0;
  simt::g_rng = seed * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;
}

SIMT_EXPORT const char* simt_last_error(void) { return simt::g_error.c_str(); }

SIMT_EXPORT void simt_clear_error(void) {
  simt::g_error.clear();
  simt::g_last_cuda_error = cudaSuccess;
}

SIMT_EXPORT int simt_set_stack_size(size_t bytes) {
  if (bytes < 4096) return -1;
  std::lock_guard<std::mutex> lock(simt::g_launch_mutex);
  simt::init_stack_size();
  if (bytes != simt::g_stack_size) {
    simt::destroy_fibers();
    simt::g_stack_size = bytes;
  }
  return 0;
}

SIMT_EXPORT size_t simt_get_stack_size(void) {
  simt::init_stack_size();
  return simt::g_stack_size;
}

SIMT_EXPORT void simt_set_strict(int strict) {
  std::lock_guard<std::mutex> lock(simt::g_launch_mutex);
  simt::g_strict = strict != 0;
}

// Called from the static constructor that tests/emulation.py generates when the kernels declare
// `extern __shared__` arrays: `getter` returns this OS thread's copy of the shared buffer.
SIMT_EXPORT void simt_register_dynamic_smem(unsigned char* (*getter)(), size_t capacity,
                                            const char* names) {
  simt::g_dyn_getter = getter;
  simt::g_dyn_capacity = capacity;
  simt::g_dyn_names = names;
}
