// NVTX ranges for the host-side launch code of the CUDA registrations (csrc/cuda/*.cpp), so an
// Nsight Systems timeline shows which inrflow op launched which kernels.
//
// Header-only NVTX3 from the CUDA toolkit (<nvtx3/nvToolsExt.h>): nothing to link, and each
// push/pop is a no-op call until a tool (nsys, ncu) injects itself. Ranges go to the "inrflow"
// domain, the same domain the Python ranges use (inrflow/profiling.py with the nvtx package).
// Without WITH_CUDA, or when the header is missing, INRFLOW_NVTX_RANGE compiles to nothing, so
// this file stays usable from torch-free and CPU-only code.
#pragma once

#if defined(WITH_CUDA) && !defined(INRFLOW_NO_NVTX) && defined(__has_include)
#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define INRFLOW_HAS_NVTX 1
#endif
#endif

namespace inrflow {

#if defined(INRFLOW_HAS_NVTX)

// The "inrflow" NVTX domain, created once (thread-safe static initialisation).
inline nvtxDomainHandle_t nvtx_domain() {
  static const nvtxDomainHandle_t domain = nvtxDomainCreateA("inrflow");
  return domain;
}

// Push a range named `name` (a string literal: NVTX copies nothing) for the object's lifetime.
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) noexcept {
    nvtxEventAttributes_t attr = {};
    attr.version = NVTX_VERSION;
    attr.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attr.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attr.message.ascii = name;
    nvtxDomainRangePushEx(nvtx_domain(), &attr);
  }
  ~NvtxRange() { nvtxDomainRangePop(nvtx_domain()); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

#define INRFLOW_NVTX_CONCAT_(a, b) a##b
#define INRFLOW_NVTX_CONCAT(a, b) INRFLOW_NVTX_CONCAT_(a, b)
// An NVTX range from here to the end of the enclosing scope.
#define INRFLOW_NVTX_RANGE(name) \
  const ::inrflow::NvtxRange INRFLOW_NVTX_CONCAT(inrflow_nvtx_range_, __COUNTER__)(name)

#else

#define INRFLOW_NVTX_RANGE(name) static_cast<void>(0)

#endif

}  // namespace inrflow
