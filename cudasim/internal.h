#pragma once
// cudasim's internals, shared by its sources (not for users: they include the CUDA headers in
// include/). The library's one lock g_mu guards all of this state; every API call takes it.
//
//   runtime.cpp  errors, devices, streams (queues run when the host synchronises), stream
//                capture, graphs, events
//   memory.cpp   device and pinned allocations, their page protection and the fault handler,
//                copies and memsets
//   launch.cpp   kernel launches: every CUDA thread a coroutine, barriers and warp intrinsics
//   cublas.cpp   cuBLAS GEMMs as reference loops on the handle's stream
#include <signal.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define CUDASIM_ASAN 1
#endif

// ----- opaque handle types ---------------------------------------------------------------------
struct CUevent_st;
namespace cudasim {
struct Op {
  std::string what;
  std::function<void()> run;
  CUevent_st* event = nullptr;  // an event record: pending from its enqueue until it runs
};
}  // namespace cudasim

struct CUstream_st {
  bool blocking = true;  // synchronises with the legacy stream (not cudaStreamNonBlocking)
  std::deque<cudasim::Op> queue;
  bool capturing = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id capture_thread;
  std::vector<cudasim::Op> captured;
  std::string invalidated;  // why the capture is invalid (empty: valid)
};
struct CUevent_st {
  bool pending = false, done = false, in_graph = false;
  double ms = 0.0;
};
struct CUgraph_st {
  std::vector<cudasim::Op> ops;
};
struct CUgraphExec_st {
  std::vector<cudasim::Op> ops;
};
struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace cudasim {

// ----- errors and locking (runtime.cpp) -------------------------------------------------------
extern std::recursive_mutex g_mu;
using Lock = std::lock_guard<std::recursive_mutex>;
extern thread_local cudaError_t t_last_error;
extern cudaError_t g_sticky;  // a failed kernel: every later call returns it, as on a GPU

void report(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
cudaError_t fail(cudaError_t e);  // sets the calling thread's last error and returns it
void set_sticky(cudaError_t e);
bool env_flag(const char* name, bool dflt);

// ----- memory (memory.cpp) --------------------------------------------------------------------
struct Alloc {
  char* map = nullptr;  // mapping start (device: data pages then one guard page)
  size_t map_bytes = 0;
  size_t data_map_bytes = 0;  // device: bytes of the mapping before the guard page
  char* ptr = nullptr;        // what the user got
  size_t bytes = 0;
  bool device = true;  // false: pinned host memory (cudaHostAlloc)
};
extern size_t g_page;
extern const char* g_kernel;         // the kernel running, for fault messages
extern size_t g_block_smem_bytes;    // its dynamic shared memory
// Set once the simulated-thread stacks and the shared memory exist (for the fault handler).
extern char* g_stack_area;
extern size_t g_stack_area_bytes, g_stack_bytes;
extern char* g_smem_guard;

// The allocation with ptr <= p < ptr + bytes (device or pinned), or null.
const Alloc* alloc_of(const void* p);
// For kernel arguments: inside an allocation, its 256-byte rounding, or one past its end (an
// empty slice), which a kernel may receive without reading.
bool in_or_at_end_of_alloc(const void* p);
bool is_device(const void* p);
bool is_pinned(const void* p);
// [p, p + bytes) inside one device allocation.
bool device_range(const void* p, size_t bytes);
// Installs the SIGSEGV handler that names the allocation, kernel or stack a fault hit.
void install_handler();

// Device memory is accessible only while device work runs.
struct DeviceWork {
  bool was;
  DeviceWork();
  ~DeviceWork();
};

// ----- streams (runtime.cpp) ------------------------------------------------------------------
extern CUstream_st g_legacy;  // the legacy default stream (stream 0)
CUstream_st* stream_of(cudaStream_t s);
void drain(CUstream_st* s);
void drain_all();     // device-wide synchronisation
void drain_legacy();  // what the legacy stream waits for: itself and the blocking streams
// An API call CUDA forbids while this thread captures: the capture is invalidated.
bool refused_while_capturing(const char* call);
// Runs `op` in stream order: queued, recorded into a capture, or (legacy stream) now.
cudaError_t enqueue(cudaStream_t stream, Op op);
double now_ms();

}  // namespace cudasim
