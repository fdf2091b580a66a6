// cudasim: a CUDA runtime and cuBLAS subset on the host, so the CUDA backend and its kernels
// run (and are tested) on machines without a GPU. See tests/cudasim/README.md.
//
// - Kernels: every block runs its threads as coroutines (ucontext) scheduled at barriers and
//   warp intrinsics; blocks run one after another.
// - Streams are queues: work runs when the host synchronises (cudaStreamSynchronize, a copy to
//   pageable memory, cudaMemcpy, cudaFree, ...), so results read too early are wrong here too.
// - Stream capture records the queue into a graph; the calls CUDA forbids while capturing fail
//   and invalidate the capture as they do on a GPU.
// - Device memory sits in its own pages, inaccessible to the host outside device work, with a
//   guard page after each allocation: host code reading device memory, and kernels running off
//   the end of an allocation, stop with a message naming the allocation (and kernel).
// - Errors the hardware would not report clearly (a kernel argument, or a pointer inside a
//   struct argument, that is host memory; a cuBLAS matrix outside its allocation; a shuffle whose
//   lanes do not all arrive) are reported on stderr and returned as errors.
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cublas_v2.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDASIM_ASAN 1
#endif

uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
dim3 blockDim, gridDim;

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
namespace {

std::recursive_mutex g_mu;
using Lock = std::lock_guard<std::recursive_mutex>;

thread_local cudaError_t t_last_error = cudaSuccess;
cudaError_t g_sticky = cudaSuccess;  // a failed kernel: every later call returns it, as on a GPU

void report(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void report(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "cudasim: %s\n", buf);
}

cudaError_t fail(cudaError_t e) {
  t_last_error = e;
  return e;
}
void set_sticky(cudaError_t e) {
  if (g_sticky == cudaSuccess) g_sticky = e;
}

bool env_flag(const char* name, bool dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  return std::strcmp(v, "0") != 0;
}

// ----- memory ----------------------------------------------------------------------------------
struct Alloc {
  char* map = nullptr;  // mapping start (device: data pages then one guard page)
  size_t map_bytes = 0;
  size_t data_map_bytes = 0;  // device: bytes of the mapping before the guard page
  char* ptr = nullptr;        // what the user got
  size_t bytes = 0;
  bool device = true;  // false: pinned host memory (cudaHostAlloc)
};
std::map<uintptr_t, Alloc> g_allocs;  // by ptr
size_t g_page = 4096;
bool g_protect = true;
bool g_open = false;             // device memory accessible (device work running)
const char* g_kernel = nullptr;  // the kernel running, for fault messages
size_t g_block_smem_bytes = 0;   // its dynamic shared memory
struct sigaction g_old_segv;
bool g_handler = false;

// The allocation whose mapping (data or guard page) contains p, or null.
const Alloc* mapping_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (const auto& [key, al] : g_allocs)  // few allocations; a fault path and checks only
    if (a >= reinterpret_cast<uintptr_t>(al.map) && a < reinterpret_cast<uintptr_t>(al.map) + al.map_bytes) return &al;
  return nullptr;
}

// The allocation with ptr <= p < ptr + bytes (device or pinned), or null.
const Alloc* alloc_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  const Alloc& al = it->second;
  return a < reinterpret_cast<uintptr_t>(al.ptr) + std::max<size_t>(al.bytes, 1) ? &al : nullptr;
}

// For kernel arguments: inside an allocation, its 256-byte rounding, or one past its end (an
// empty slice), which a kernel may receive without reading.
bool in_or_at_end_of_alloc(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return false;
  --it;
  const Alloc& al = it->second;
  return a <= reinterpret_cast<uintptr_t>(al.ptr) + (al.bytes + 255) / 256 * 256;
}

bool is_device(const void* p) {
  const Alloc* al = alloc_of(p);
  return al && al->device;
}
bool is_pinned(const void* p) {
  const Alloc* al = alloc_of(p);
  return al && !al->device;
}
// [p, p + bytes) inside one device allocation.
bool device_range(const void* p, size_t bytes) {
  const Alloc* al = alloc_of(p);
  return al && al->device && static_cast<const char*>(p) + bytes <= al->ptr + al->bytes;
}

// Set once the simulated-thread stacks and the shared memory exist (for the fault handler).
char* g_stack_area = nullptr;
size_t g_stack_area_bytes = 0, g_stack_bytes = 0;
char* g_smem_guard = nullptr;

void write_err(const char* msg) {
  ssize_t ignored = write(2, msg, std::strlen(msg));
  (void)ignored;
}

void segv_handler(int sig, siginfo_t* info, void* uctx) {
  (void)sig;
  (void)uctx;
  const char* addr = static_cast<const char*>(info->si_addr);
  char msg[512];
  const char* kernel = g_kernel ? g_kernel : "?";
  if (g_stack_area && addr >= g_stack_area && addr < g_stack_area + g_stack_area_bytes &&
      static_cast<size_t>(addr - g_stack_area) % g_stack_bytes < g_page) {
    std::snprintf(msg, sizeof msg, "cudasim: kernel '%s': a thread overflowed its %zu-KiB simulated stack\n", kernel,
                  g_stack_bytes >> 10);
    write_err(msg);
    std::abort();
  }
  if (g_smem_guard && addr >= g_smem_guard && addr < g_smem_guard + g_page) {
    std::snprintf(msg, sizeof msg,
                  "cudasim: kernel '%s' accessed dynamic shared memory %td bytes past the %zu bytes it was launched "
                  "with\n",
                  kernel, addr - g_smem_guard, g_block_smem_bytes);
    write_err(msg);
    std::abort();
  }
  const Alloc* al = mapping_of(addr);
  if ((!al || !al->device) && g_kernel) {  // a wild index or pointer in a kernel
    std::snprintf(msg, sizeof msg, "cudasim: kernel '%s' touched %p, outside every device allocation\n", kernel,
                  static_cast<const void*>(addr));
    write_err(msg);
    std::abort();
  }
  if (!al || !al->device) {  // not ours: let the previous handler (or the default) take it
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    return;
  }
  const char* who = g_kernel ? kernel : "device work";
  if (!g_open)
    std::snprintf(msg, sizeof msg,
                  "cudasim: host code touched device memory at %p (the %zu-byte device allocation at %p): "
                  "device pointers are for kernels, cuBLAS and cudaMemcpy only\n",
                  static_cast<const void*>(addr), al->bytes, static_cast<const void*>(al->ptr));
  else if (addr >= al->ptr)
    std::snprintf(msg, sizeof msg,
                  "cudasim: %s%s%s touched %p, %td bytes past the end of the %zu-byte device allocation at %p\n",
                  g_kernel ? "kernel '" : "", who, g_kernel ? "'" : "", static_cast<const void*>(addr),
                  addr - (al->ptr + al->bytes), al->bytes, static_cast<const void*>(al->ptr));
  else
    std::snprintf(msg, sizeof msg, "cudasim: %s%s%s touched %p, %td bytes before the %zu-byte device allocation at %p\n",
                  g_kernel ? "kernel '" : "", who, g_kernel ? "'" : "", static_cast<const void*>(addr),
                  al->ptr - addr, al->bytes, static_cast<const void*>(al->ptr));
  write_err(msg);
  std::abort();
}

void install_handler() {
  if (g_handler) return;
  g_handler = true;
  g_page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  g_protect = env_flag("CUDASIM_PROTECT", true);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = segv_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
}

void protect(const Alloc& al, bool open) {
  if (g_protect && al.device && al.data_map_bytes)
    mprotect(al.map, al.data_map_bytes, open ? (PROT_READ | PROT_WRITE) : PROT_NONE);
}

// Device memory is accessible only while device work runs.
struct DeviceWork {
  bool was;
  DeviceWork() : was(g_open) {
    if (!was)
      for (const auto& [k, al] : g_allocs) protect(al, true);
    g_open = true;
  }
  ~DeviceWork() {
    if (!was)
      for (const auto& [k, al] : g_allocs) protect(al, false);
    g_open = was;
  }
};

// ----- streams, capture --------------------------------------------------------------------
CUstream_st g_legacy;  // the legacy default stream (stream 0)
std::vector<CUstream_st*> g_streams;

CUstream_st* stream_of(cudaStream_t s) { return s ? s : &g_legacy; }

void drain(CUstream_st* s) {
  if (s->queue.empty()) return;
  DeviceWork open;
  while (!s->queue.empty()) {
    Op op = std::move(s->queue.front());
    s->queue.pop_front();
    if (g_sticky == cudaSuccess) op.run();
  }
}
void drain_all() {  // device-wide synchronisation
  for (CUstream_st* s : g_streams) drain(s);
  drain(&g_legacy);
}
void drain_legacy() {  // what the legacy stream waits for: itself and the blocking streams
  for (CUstream_st* s : g_streams)
    if (s->blocking) drain(s);
  drain(&g_legacy);
}

// A capture begun by this thread in a mode that forbids "unsafe" calls (all but Relaxed).
CUstream_st* strict_capture_of_this_thread() {
  for (CUstream_st* s : g_streams)
    if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed && s->capture_thread == std::this_thread::get_id())
      return s;
  return nullptr;
}
// An API call CUDA forbids while this thread captures: the capture is invalidated.
bool refused_while_capturing(const char* call) {
  CUstream_st* s = strict_capture_of_this_thread();
  if (!s) return false;
  if (s->invalidated.empty()) s->invalidated = std::string(call) + " while capturing";
  return true;
}

cudaError_t enqueue(cudaStream_t stream, Op op) {
  CUstream_st* s = stream_of(stream);
  if (s->capturing) {
    s->captured.push_back(std::move(op));
    return cudaSuccess;
  }
  if (op.event) op.event->pending = true, op.event->done = false;
  if (s == &g_legacy) {  // legacy stream: ordered after the blocking streams' work
    for (CUstream_st* c : g_streams)
      if (c->capturing && c->blocking && c->invalidated.empty()) {
        c->invalidated = "work on the legacy stream while a blocking stream captures";
        return fail(cudaErrorStreamCaptureImplicit);
      }
    drain_legacy();
    DeviceWork open;
    if (g_sticky == cudaSuccess) op.run();
    return cudaSuccess;
  }
  s->queue.push_back(std::move(op));
  return cudaSuccess;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ----- kernels: one coroutine per thread ---------------------------------------------------------
// ----- coroutine contexts: a minimal stack switch on x86-64 (glibc's swapcontext makes a
// signal-mask system call per switch, ~50x slower), ucontext elsewhere ------------------------
#if defined(__x86_64__)
extern "C" void cudasim_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save_sp, switches to load_sp and restores the same from there.
asm(R"(
  .pushsection .text
  .globl cudasim_switch
  .type cudasim_switch, @function
cudasim_switch:
  .cfi_startproc
  endbr64
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size cudasim_switch, .-cudasim_switch
  .popsection
)");
struct Context {
  void* sp = nullptr;
};
void context_make(Context& c, char* stack, size_t size, void (*entry)()) {
  auto* sp = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15});
  *--sp = 0;                                  // entry's return address: it never returns
  *--sp = reinterpret_cast<uint64_t>(entry);  // popped by cudasim_switch's ret
  for (int i = 0; i < 6; ++i) *--sp = 0;      // rbp, rbx, r12-r15
  uint32_t csr = 0;
  uint16_t cw = 0;
  asm volatile("stmxcsr %0" : "=m"(csr));
  asm volatile("fnstcw %0" : "=m"(cw));
  --sp;
  std::memcpy(sp, &csr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &cw, 2);
  c.sp = sp;
}
void context_switch(Context& from, Context& to) { cudasim_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
// Apart from the scheduler: getcontext returns twice, which the scheduler's locals must not see.
__attribute__((noinline)) void context_make(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ----- kernels: one coroutine per thread ---------------------------------------------------------
enum class St { Runnable, Barrier, Warp, Done };
struct SimThread {
  Context ctx;
  uint3 idx;
  St st = St::Runnable;
  int pred = 0;
  WarpOp op = WarpOp::SyncWarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int param = 0, width = 32;
#ifdef CUDASIM_ASAN
  void* fake_stack = nullptr;
#endif
};

constexpr size_t kStack = size_t{256} << 10;  // per simulated thread; its lowest page is a guard
constexpr int kMaxThreads = 1024;
constexpr size_t kSmemMax = 48 * 1024;
constexpr size_t kAltStack = 64 * 1024;

struct BlockRun {
  std::vector<SimThread> threads = std::vector<SimThread>(kMaxThreads);
  char* stacks = nullptr;  // kMaxThreads stacks of kStack bytes
  Context sched;
  SimThread* cur = nullptr;
  const std::function<void()>* body = nullptr;
  int count_result = 0;
  char* smem_region = nullptr;  // kSmemMax bytes then a guard page; a launch's smem ends at the guard
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
#ifdef CUDASIM_ASAN
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
#endif
} g_block;

[[noreturn]] void thread_main() {
#ifdef CUDASIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_block.sched_bottom, &g_block.sched_size);
#endif
  (*g_block.body)();
  SimThread& t = *g_block.cur;
  t.st = St::Done;
#ifdef CUDASIM_ASAN
  __sanitizer_start_switch_fiber(nullptr, g_block.sched_bottom, g_block.sched_size);
#endif
  context_switch(t.ctx, g_block.sched);
  std::abort();  // a finished thread is never resumed
}

char* stack_of(int i) { return g_block.stacks + static_cast<size_t>(i) * kStack; }

void resume(SimThread& t, int i) {
  threadIdx = t.idx;
  g_block.cur = &t;
#ifdef CUDASIM_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stack_of(i), kStack);
  context_switch(g_block.sched, t.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)i;
  context_switch(g_block.sched, t.ctx);
#endif
  g_block.cur = nullptr;
}

// From a simulated thread back to the block scheduler; returns when resumed.
void yield_thread() {
  SimThread& t = *g_block.cur;
#ifdef CUDASIM_ASAN
  __sanitizer_start_switch_fiber(&t.fake_stack, g_block.sched_bottom, g_block.sched_size);
  context_switch(t.ctx, g_block.sched);
  __sanitizer_finish_switch_fiber(t.fake_stack, &g_block.sched_bottom, &g_block.sched_size);
#else
  context_switch(t.ctx, g_block.sched);
#endif
}

SimThread& current_thread(const char* what) {
  if (!g_block.cur) {
    report("%s called outside a kernel", what);
    std::abort();
  }
  return *g_block.cur;
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::ShflXor: return "__shfl_xor_sync";
    case WarpOp::Shfl: return "__shfl_sync";
    case WarpOp::ShflUp: return "__shfl_up_sync";
    case WarpOp::ShflDown: return "__shfl_down_sync";
    case WarpOp::Ballot: return "__ballot_sync";
    case WarpOp::Any: return "__any_sync";
    case WarpOp::All: return "__all_sync";
    case WarpOp::SyncWarp: return "__syncwarp";
  }
  return "?";
}

// Completes the warp ops of warp w whose masks are complete: every lane a mask names waits in
// the same intrinsic with the same mask (lanes with disjoint masks are separate groups).
// Returns true if it released lanes; sets `error` for an op CUDA leaves undefined.
bool release_warp(int w, int n, std::string& error) {
  std::vector<SimThread>& th = g_block.threads;
  const int first = w * 32, lanes = std::min(32, n - first);
  char buf[256];
  const auto fail_with = [&](const char* fmt, auto... args) {
    std::snprintf(buf, sizeof buf, fmt, args...);
    error = buf;
    return false;
  };
  bool released = false;
  unsigned done_masks = 0;  // lanes already handled in this call
  for (int lead = 0; lead < lanes; ++lead) {
    const SimThread& L = th[first + lead];
    if (L.st != St::Warp || ((done_masks >> lead) & 1u)) continue;
    const unsigned mask = L.mask;
    if (!((mask >> lead) & 1u))
      return fail_with("warp %d: lane %d waits in %s with mask %#x, which does not name it", w, lead, op_name(L.op),
                       mask);
    bool complete = true;
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      if (l >= lanes)
        return fail_with("warp %d: %s mask %#x names lane %d, which does not exist (block of %d threads)", w,
                         op_name(L.op), mask, l, n);
      const SimThread& t = th[first + l];
      if (t.st == St::Done)
        return fail_with("warp %d: %s mask %#x names lane %d, which has exited", w, op_name(L.op), mask, l);
      if (t.st != St::Warp) {
        complete = false;  // not there yet
        continue;
      }
      if (t.op != L.op || t.mask != mask)
        return fail_with("warp %d: lanes %d and %d wait in different warp intrinsics or masks (%s mask %#x, %s mask %#x)",
                         w, lead, l, op_name(L.op), mask, op_name(t.op), t.mask);
    }
    done_masks |= mask;
    if (!complete) continue;
    uint64_t vote = 0;
    bool any = false, all = true;
    for (int l = 0; l < lanes; ++l)
      if ((mask >> l) & 1u) {
        const bool p = th[first + l].value != 0;
        vote |= uint64_t{p} << l;
        any = any || p;
        all = all && p;
      }
    for (int l = 0; l < lanes; ++l) {
      if (!((mask >> l) & 1u)) continue;
      SimThread& t = th[first + l];
      // PTX shfl: lane offsets and masks use their low 5 bits; segments of `width` lanes.
      const int width = t.width, base = l & ~(width - 1), param = t.param & 31;
      int src = l;
      switch (t.op) {
        case WarpOp::ShflXor: src = (l ^ param) < base + width ? (l ^ param) : l; break;  // earlier segments too
        case WarpOp::Shfl: src = base + (t.param & (width - 1)); break;
        case WarpOp::ShflUp: src = l - param >= base ? l - param : l; break;
        case WarpOp::ShflDown: src = l + param < base + width ? l + param : l; break;
        default: break;
      }
      if (t.op == WarpOp::ShflXor || t.op == WarpOp::Shfl || t.op == WarpOp::ShflUp || t.op == WarpOp::ShflDown) {
        if (src >= lanes || !((mask >> src) & 1u))
          return fail_with("warp %d: lane %d's %s reads lane %d, which is not in the mask %#x", w, l, op_name(t.op), src,
                           mask);
        t.result = th[first + src].value;
      } else if (t.op == WarpOp::Ballot) {
        t.result = vote;
      } else if (t.op == WarpOp::Any) {
        t.result = any;
      } else if (t.op == WarpOp::All) {
        t.result = all;
      }
    }
    for (int l = 0; l < lanes; ++l)
      if ((mask >> l) & 1u) th[first + l].st = St::Runnable;
    released = true;
  }
  return released;
}

struct Launch {
  std::string name;
  dim3 grid, block;
  size_t smem;
  std::function<void()> body;
};

uint64_t g_executions = 0;  // seeds each execution's resume order (graph replays differ too)

// Runs every block of the launch; false (and a report) when a block could not complete.
bool run_kernel(const Launch& k) {
  install_handler();
  if (!g_block.stacks) {
    void* p =
        mmap(nullptr, kStack * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      report("cannot map the thread stacks");
      return false;
    }
    g_block.stacks = static_cast<char*>(p);
    for (int i = 0; i < kMaxThreads; ++i) mprotect(stack_of(i), g_page, PROT_NONE);  // overflow guards
    void* sm = mmap(nullptr, kSmemMax + g_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (sm == MAP_FAILED) {
      report("cannot map the shared memory");
      return false;
    }
    g_block.smem_region = static_cast<char*>(sm);
    mprotect(g_block.smem_region + kSmemMax, g_page, PROT_NONE);
    g_smem_guard = g_block.smem_region + kSmemMax;
    g_stack_area = g_block.stacks;
    g_stack_area_bytes = kStack * kMaxThreads;
    g_stack_bytes = kStack;
  }
  // The fault handler needs a stack of its own when a simulated thread overflows its stack:
  // this host thread's alternate signal stack (ASan installs one; otherwise ours, removed
  // again when the thread ends).
  struct AltStack {
    void* mem = nullptr;
    AltStack() {
      stack_t cur{};
      if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;  // one exists
      mem = mmap(nullptr, kAltStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED) {
        mem = nullptr;
        return;
      }
      stack_t ss{};
      ss.ss_sp = mem;
      ss.ss_size = kAltStack;
      sigaltstack(&ss, nullptr);
    }
    ~AltStack() {
      if (!mem) return;
      stack_t off{};
      off.ss_flags = SS_DISABLE;
      sigaltstack(&off, nullptr);
      munmap(mem, kAltStack);
    }
  };
  thread_local AltStack alt_stack;
  (void)alt_stack;
  const int n = static_cast<int>(k.block.x * k.block.y * k.block.z);
  const int warps = (n + 31) / 32;
  blockDim = k.block;
  gridDim = k.grid;
  g_block.body = &k.body;
  g_kernel = k.name.c_str();
  std::mt19937 rng(static_cast<uint32_t>(++g_executions * 2654435761u));
  std::vector<int> order(static_cast<size_t>(n));
  // Dynamic shared memory ends at a guard page (to 16 bytes): overruns fault, and a launch
  // without any (smem 0) gets a pointer at the guard itself.
  g_block.smem_bytes = g_block_smem_bytes = k.smem;
  g_block.smem = reinterpret_cast<unsigned char*>(g_block.smem_region + kSmemMax - (k.smem + 15) / 16 * 16);
  for (unsigned bz = 0; bz < k.grid.z; ++bz)
    for (unsigned by = 0; by < k.grid.y; ++by)
      for (unsigned bx = 0; bx < k.grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        std::memset(g_block.smem, 0xff, k.smem);  // NaN for floats: reads of unwritten shared memory show
        for (int i = 0; i < n; ++i) {
          SimThread& t = g_block.threads[i];
          t.idx = uint3{static_cast<unsigned>(i) % k.block.x, (static_cast<unsigned>(i) / k.block.x) % k.block.y,
                        static_cast<unsigned>(i) / (k.block.x * k.block.y)};
          t.st = St::Runnable;
          context_make(t.ctx, stack_of(i), kStack, thread_main);
          order[i] = i;
        }
        std::shuffle(order.begin(), order.end(), rng);
        std::string error;
        for (;;) {
          for (int i : order)
            if (g_block.threads[i].st == St::Runnable) resume(g_block.threads[i], i);
          bool released = false;
          for (int w = 0; w < warps && error.empty(); ++w) released = release_warp(w, n, error) || released;
          if (!error.empty()) break;
          if (released) continue;
          int alive = 0, at_barrier = 0, count = 0;
          for (int i = 0; i < n; ++i) {
            const SimThread& t = g_block.threads[i];
            if (t.st == St::Done) continue;
            ++alive;
            if (t.st == St::Barrier) ++at_barrier, count += t.pred != 0;
          }
          if (alive == 0) break;
          if (at_barrier == alive) {  // exited threads count as arrived, as on the hardware
            g_block.count_result = count;
            for (int i = 0; i < n; ++i)
              if (g_block.threads[i].st == St::Barrier) g_block.threads[i].st = St::Runnable;
            continue;
          }
          error = "deadlock: " + std::to_string(at_barrier) + " threads wait at __syncthreads while " +
                  std::to_string(alive - at_barrier) + " wait in a warp intrinsic whose lanes never all arrive";
          break;
        }
        if (!error.empty()) {
          report("kernel '%s', block (%u, %u, %u) of (%u, %u, %u), %d threads: %s", g_kernel, bx, by, bz, k.grid.x,
                 k.grid.y, k.grid.z, n, error.c_str());
#ifdef CUDASIM_ASAN
          __asan_unpoison_memory_region(g_block.stacks, kStack * kMaxThreads);  // abandoned frames
#endif
          g_kernel = nullptr;
          return false;
        }
      }
  g_kernel = nullptr;
  return true;
}

// ----- cuBLAS ------------------------------------------------------------------------------------
float to_tf32(float x) {  // round to a 10-bit significand (nearest even), as TF32 tensor cores see it
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  u += 0xfffu + ((u >> 13) & 1u);
  u &= ~0x1fffu;
  std::memcpy(&x, &u, 4);
  return x;
}

// fp32 dot product in 8 interleaved partial sums (the order and rounding differ from a plain
// FMA loop, as cuBLAS's do; it vectorises, where std::fma would be a libm call per term).
float dot(const float* x, const float* y, int k) {
  float part[8] = {};
  int p = 0;
  for (; p + 8 <= k; p += 8)
    for (int l = 0; l < 8; ++l) part[l] += x[p + l] * y[p + l];
  float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; p < k; ++p) s += x[p] * y[p];
  return s;
}

struct Matrix {
  const void* p;
  cudaDataType type;
  int ld;
  bool trans;
  float at(int64_t r, int64_t c) const {  // element (r, c) of op(X)
    const int64_t i = trans ? c + r * int64_t{ld} : r + c * int64_t{ld};
    return type == CUDA_R_16F ? __half2float(static_cast<const __half*>(p)[i]) : static_cast<const float*>(p)[i];
  }
};

cublasStatus_t gemm(cublasHandle_t h, const char* fn, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                    float alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt, int ldb,
                    float beta, void* C, int ldc) {
  Lock lock(g_mu);
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (ta == CUBLAS_OP_C) ta = CUBLAS_OP_T;  // real matrices: conjugate transpose is transpose
  if (tb == CUBLAS_OP_C) tb = CUBLAS_OP_T;
  if (m < 0 || n < 0 || k < 0 || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) ||
      lda < std::max(1, ta == CUBLAS_OP_N ? m : k) || ldb < std::max(1, tb == CUBLAS_OP_N ? k : n) ||
      ldc < std::max(1, m)) {
    report("%s: invalid arguments (m %d n %d k %d, lda %d ldb %d ldc %d, op %d/%d)", fn, m, n, k, lda, ldb, ldc, ta,
           tb);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t es_a = at == CUDA_R_16F ? 2 : 4, es_b = bt == CUDA_R_16F ? 2 : 4;
  // Column-major extents: op(A) is m x k, op(B) is k x n, C is m x n.
  const auto extent = [](int rows, int cols, int ld) { return (static_cast<size_t>(cols) - 1) * ld + rows; };
  struct Check {
    const char* name;
    const void* p;
    size_t bytes;
  };
  const Check checks[3] = {{"A", A, k ? es_a * (ta == CUBLAS_OP_N ? extent(m, k, lda) : extent(k, m, lda)) : 0},
                           {"B", B, k ? es_b * (tb == CUBLAS_OP_N ? extent(k, n, ldb) : extent(n, k, ldb)) : 0},
                           {"C", C, 4 * extent(m, n, ldc)}};
  for (const Check& c : checks)
    if (c.bytes && !device_range(c.p, c.bytes)) {
      const Alloc* al = alloc_of(c.p);
      report("%s: matrix %s (%zu bytes at %p) is %s (m %d n %d k %d, lda %d ldb %d ldc %d)", fn, c.name, c.bytes, c.p,
             al ? "not inside its device allocation" : "not device memory", m, n, k, lda, ldb, ldc);
      return CUBLAS_STATUS_EXECUTION_FAILED;
    }
  const auto overlap = [](const Check& x, const Check& y) {
    const char *a = static_cast<const char*>(x.p), *b = static_cast<const char*>(y.p);
    return x.bytes && y.bytes && a < b + y.bytes && b < a + x.bytes;
  };
  for (int i = 0; i < 2; ++i)
    if (overlap(checks[i], checks[2])) {  // cuBLAS does not define an in-place GEMM
      report("%s: the output C overlaps the input %s", fn, checks[i].name);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  const bool tf32 = h->math == CUBLAS_TF32_TENSOR_OP_MATH && at == CUDA_R_32F && bt == CUDA_R_32F;
  const Matrix MA{A, at, lda, ta == CUBLAS_OP_T}, MB{B, bt, ldb, tb == CUBLAS_OP_T};
  float* Cf = static_cast<float*>(C);
  return enqueue(h->stream, Op{fn, [=]() {
                   // op(A) as m rows of k and op(B)^T as n rows of k (fp32, TF32-rounded when
                   // that math mode is on), then one contiguous dot product per output.
                   std::vector<float> a(static_cast<size_t>(m) * k), b(static_cast<size_t>(n) * k);
                   for (int i = 0; i < m; ++i)
                     for (int p = 0; p < k; ++p) a[static_cast<size_t>(i) * k + p] = MA.at(i, p);
                   for (int j = 0; j < n; ++j)
                     for (int p = 0; p < k; ++p) b[static_cast<size_t>(j) * k + p] = MB.at(p, j);
                   if (tf32) {
                     for (float& v : a) v = to_tf32(v);
                     for (float& v : b) v = to_tf32(v);
                   }
                   for (int j = 0; j < n; ++j)
                     for (int i = 0; i < m; ++i) {
                       const float c = dot(a.data() + static_cast<size_t>(i) * k, b.data() + static_cast<size_t>(j) * k, k);
                       float& out = Cf[i + static_cast<int64_t>(j) * ldc];
                       out = alpha * c + (beta == 0.0f ? 0.0f : beta * out);  // beta 0: C is not read
                     }
                 }}) == cudaSuccess
             ? CUBLAS_STATUS_SUCCESS
             : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // namespace

// ----- device-side entry points (cudasim/device.h) ---------------------------------------------
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int param, int width) {
  SimThread& t = current_thread(op_name(op));
  t.op = op;
  t.mask = mask;
  t.value = value;
  t.param = param;
  t.width = width;
  t.st = St::Warp;
  yield_thread();
  return t.result;
}

void syncthreads() {
  SimThread& t = current_thread("__syncthreads");
  t.pred = 0;
  t.st = St::Barrier;
  yield_thread();
}

int syncthreads_count(int predicate) {
  SimThread& t = current_thread("__syncthreads_count");
  t.pred = predicate;
  t.st = St::Barrier;
  yield_thread();
  return g_block.count_result;
}

void* dynamic_shared() { return g_block.smem; }

void enqueue_kernel(const char* name, dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                    std::function<void()> body, std::vector<const void*> pointers) {
  Lock lock(g_mu);
  CUstream_st* s = stream_of(stream);
  const auto reject = [&](cudaError_t e) {  // a failed launch also invalidates a capture, as on a GPU
    fail(e);
    if (s->capturing && s->invalidated.empty()) s->invalidated = "a failed launch";
  };
  if (g_sticky != cudaSuccess) {
    reject(g_sticky);
    return;
  }
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (grid.x < 1 || grid.x > 0x7fffffffu || grid.y < 1 || grid.y > 65535 || grid.z < 1 || grid.z > 65535 ||
      block.x < 1 || block.y < 1 || block.z < 1 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      threads > kMaxThreads) {
    report("kernel '%s': invalid launch configuration grid (%u, %u, %u) block (%u, %u, %u)", name, grid.x, grid.y,
           grid.z, block.x, block.y, block.z);
    reject(cudaErrorInvalidConfiguration);
    return;
  }
  if (dynamic_smem > kSmemMax) {  // more needs cudaFuncSetAttribute, which the backend never calls
    report("kernel '%s': %zu bytes of dynamic shared memory (48 KiB without an opt-in)", name, dynamic_smem);
    reject(cudaErrorInvalidValue);
    return;
  }
  for (size_t i = 0; i < pointers.size(); ++i)
    if (pointers[i] && !in_or_at_end_of_alloc(pointers[i])) {
      report("kernel '%s': pointer %zu of its arguments (struct members included, in order) is %p, neither device "
             "nor pinned host memory",
             name, i + 1, pointers[i]);
      reject(cudaErrorInvalidValue);
      return;
    }
  Launch k{name, grid, block, dynamic_smem, std::move(body)};
  enqueue(stream, Op{name, [k = std::move(k)]() {
                       if (!run_kernel(k)) set_sticky(cudaErrorLaunchFailure);
                     }});
}

}  // namespace cudasim

// ----- runtime API -------------------------------------------------------------------------------
using namespace cudasim;

extern "C" {

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (cudasim: CUDASIM_DEVICES=0)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure (cudasim: see the report above)";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return cudaGetErrorName(e);
  }
}

cudaError_t cudaGetLastError(void) {
  Lock lock(g_mu);
  const cudaError_t e = g_sticky != cudaSuccess ? g_sticky : t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) {
  Lock lock(g_mu);
  return g_sticky != cudaSuccess ? g_sticky : t_last_error;
}

static int sim_devices() {
  const char* v = std::getenv("CUDASIM_DEVICES");
  return v && *v ? std::atoi(v) : 1;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = sim_devices();
  return *count > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}
cudaError_t cudaSetDevice(int device) {
  return device >= 0 && device < sim_devices() ? cudaSuccess : fail(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  Lock lock(g_mu);
  if (refused_while_capturing("cudaDeviceSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
  drain_all();
  return g_sticky != cudaSuccess ? fail(g_sticky) : cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  Lock lock(g_mu);
  install_handler();
  *ptr = nullptr;
  if (g_sticky != cudaSuccess) return fail(g_sticky);
  if (refused_while_capturing("cudaMalloc")) return fail(cudaErrorStreamCaptureUnsupported);
  if (size == 0) return cudaSuccess;
  const size_t rounded = (size + 255) / 256 * 256;  // cudaMalloc's alignment
  const size_t data_map = (rounded + g_page - 1) / g_page * g_page;
  void* m = mmap(nullptr, data_map + g_page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return fail(cudaErrorMemoryAllocation);
  Alloc al;
  al.map = static_cast<char*>(m);
  al.map_bytes = data_map + g_page;
  al.data_map_bytes = data_map;
  al.ptr = al.map + (data_map - rounded);  // ends at the guard page (to 256 bytes)
  al.bytes = size;
  al.device = true;
  if (!g_protect || g_open) mprotect(al.map, data_map, PROT_READ | PROT_WRITE);
  g_allocs[reinterpret_cast<uintptr_t>(al.ptr)] = al;
  *ptr = al.ptr;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  Lock lock(g_mu);
  if (!ptr) return cudaSuccess;
  if (refused_while_capturing("cudaFree")) return fail(cudaErrorStreamCaptureUnsupported);
  drain_all();  // cudaFree synchronises with the device
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_allocs.end() || !it->second.device) {
    report("cudaFree(%p): not a device allocation", ptr);
    return fail(cudaErrorInvalidValue);
  }
  munmap(it->second.map, it->second.map_bytes);
  g_allocs.erase(it);
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned flags) {
  Lock lock(g_mu);
  (void)flags;
  *ptr = nullptr;
  if (refused_while_capturing("cudaHostAlloc")) return fail(cudaErrorStreamCaptureUnsupported);
  void* p = std::aligned_alloc(256, std::max<size_t>((size + 255) / 256 * 256, 256));
  if (!p) return fail(cudaErrorMemoryAllocation);
  Alloc al;
  al.ptr = al.map = static_cast<char*>(p);
  al.bytes = size;
  al.device = false;
  g_allocs[reinterpret_cast<uintptr_t>(p)] = al;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, size_t size) { return cudaHostAlloc(ptr, size, cudaHostAllocDefault); }

cudaError_t cudaFreeHost(void* ptr) {
  Lock lock(g_mu);
  if (!ptr) return cudaSuccess;
  if (refused_while_capturing("cudaFreeHost")) return fail(cudaErrorStreamCaptureUnsupported);
  drain_all();
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_allocs.end() || it->second.device) {
    report("cudaFreeHost(%p): not a pinned host allocation", ptr);
    return fail(cudaErrorInvalidValue);
  }
  std::free(ptr);
  g_allocs.erase(it);
  return cudaSuccess;
}

// Checks a copy's direction against where its pointers live.
static bool check_copy(const char* fn, void* dst, const void* src, size_t count, cudaMemcpyKind& kind) {
  if (kind == cudaMemcpyDefault)
    kind = is_device(src) ? (is_device(dst) ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                          : (is_device(dst) ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  const bool ok =
      (dst_dev ? device_range(dst, count) : !is_device(dst)) && (src_dev ? device_range(src, count) : !is_device(src));
  if (!ok)
    report(
        "%s(dst %p, src %p, %zu bytes, kind %d): the pointers do not match the direction (or the range leaves its "
        "device allocation)",
        fn, dst, src, count, static_cast<int>(kind));
  return ok;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  Lock lock(g_mu);
  if (g_sticky != cudaSuccess) return fail(g_sticky);
  if (refused_while_capturing("cudaMemcpy")) return fail(cudaErrorStreamCaptureImplicit);
  if (count == 0) return cudaSuccess;
  if (!check_copy("cudaMemcpy", dst, src, count, kind)) return fail(cudaErrorInvalidValue);
  drain_legacy();
  DeviceWork open;
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  Lock lock(g_mu);
  if (g_sticky != cudaSuccess) return fail(g_sticky);
  if (count == 0) return cudaSuccess;
  if (!check_copy("cudaMemcpyAsync", dst, src, count, kind)) return fail(cudaErrorInvalidValue);
  CUstream_st* s = stream_of(stream);
  const bool pageable_src = kind == cudaMemcpyHostToDevice && !is_pinned(src);
  const bool pageable_dst = kind == cudaMemcpyDeviceToHost && !is_pinned(dst);
  if (s->capturing && (pageable_src || pageable_dst)) {
    report("cudaMemcpyAsync from/to pageable host memory while the stream is capturing");
    if (s->invalidated.empty()) s->invalidated = "a pageable cudaMemcpyAsync";
    return fail(cudaErrorStreamCaptureUnsupported);
  }
  if (pageable_src) {  // staged at the call: the caller may reuse its buffer at once
    auto staged =
        std::make_shared<std::vector<char>>(static_cast<const char*>(src), static_cast<const char*>(src) + count);
    return enqueue(stream, Op{"memcpy HtoD", [dst, staged]() { std::memcpy(dst, staged->data(), staged->size()); }});
  }
  if (pageable_dst) {  // synchronous with the host, as CUDA makes copies to pageable memory
    if (s == &g_legacy)
      drain_legacy();
    else
      drain(s);
    if (g_sticky != cudaSuccess) return fail(g_sticky);
    DeviceWork open;
    std::memcpy(dst, src, count);
    return cudaSuccess;
  }
  return enqueue(stream, Op{"memcpy", [dst, src, count]() { std::memmove(dst, src, count); }});
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  Lock lock(g_mu);
  if (g_sticky != cudaSuccess) return fail(g_sticky);
  if (count && !device_range(dst, count)) {
    report("cudaMemsetAsync(%p, %zu bytes): not inside a device allocation", dst, count);
    return fail(cudaErrorInvalidValue);
  }
  return enqueue(stream, Op{"memset", [dst, value, count]() { std::memset(dst, value, count); }});
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  Lock lock(g_mu);
  *stream = new CUstream_st;
  (*stream)->blocking = !(flags & cudaStreamNonBlocking);
  g_streams.push_back(*stream);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Lock lock(g_mu);
  auto it = std::find(g_streams.begin(), g_streams.end(), stream);
  if (!stream || it == g_streams.end()) return fail(cudaErrorInvalidResourceHandle);
  drain(stream);  // queued work still completes
  g_streams.erase(it);
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Lock lock(g_mu);
  CUstream_st* s = stream_of(stream);
  if (s->capturing) {
    if (s->invalidated.empty()) s->invalidated = "cudaStreamSynchronize on the capturing stream";
    return fail(cudaErrorStreamCaptureUnsupported);
  }
  if (refused_while_capturing("cudaStreamSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
  if (s == &g_legacy)
    drain_legacy();
  else
    drain(s);
  return g_sticky != cudaSuccess ? fail(g_sticky) : cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  Lock lock(g_mu);
  if (!stream) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot capture
  if (stream->capturing) return fail(cudaErrorIllegalState);
  stream->capturing = true;
  stream->mode = mode;
  stream->capture_thread = std::this_thread::get_id();
  stream->captured.clear();
  stream->invalidated.clear();
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  Lock lock(g_mu);
  *graph = nullptr;
  if (!stream || !stream->capturing) return fail(cudaErrorInvalidValue);
  if (stream->capture_thread != std::this_thread::get_id() && stream->mode != cudaStreamCaptureModeRelaxed)
    return fail(cudaErrorStreamCaptureWrongThread);
  stream->capturing = false;
  if (!stream->invalidated.empty()) {
    stream->captured.clear();
    return fail(cudaErrorStreamCaptureInvalidated);
  }
  *graph = new CUgraph_st{std::move(stream->captured)};
  stream->captured.clear();
  if (env_flag("CUDASIM_GRAPH_STATS", false)) {  // nodes per captured graph, by name
    std::map<std::string, int> count;
    for (const Op& op : (*graph)->ops) ++count[op.what];
    std::string list;
    for (const auto& [what, c] : count) list += " " + what + " x" + std::to_string(c);
    report("captured graph: %zu nodes:%s", (*graph)->ops.size(), list.c_str());
  }
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  Lock lock(g_mu);
  (void)flags;
  if (!graph) return fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->ops};
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  Lock lock(g_mu);
  if (!exec) return fail(cudaErrorInvalidValue);
  if (g_sticky != cudaSuccess) return fail(g_sticky);
  if (stream_of(stream)->capturing) return fail(cudaErrorStreamCaptureUnsupported);
  for (const Op& op : exec->ops) enqueue(stream, op);
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  Lock lock(g_mu);
  drain_all();  // a recorded event may still be queued
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  Lock lock(g_mu);
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  event->in_graph = stream_of(stream)->capturing;
  return enqueue(stream, Op{"event",
                            [event]() {
                              event->ms = now_ms();
                              event->done = true;
                              event->pending = false;
                            },
                            event});
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  Lock lock(g_mu);
  if (refused_while_capturing("cudaEventSynchronize")) return fail(cudaErrorStreamCaptureUnsupported);
  if (event && event->pending) drain_all();
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  Lock lock(g_mu);
  if (!start || !end) return fail(cudaErrorInvalidResourceHandle);
  if (!start->done || !end->done) return fail(cudaErrorNotReady);
  *ms = static_cast<float>(end->ms - start->ms);
  return cudaSuccess;
}

// ----- cuBLAS --------------------------------------------------------------------------------------
cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  Lock lock(g_mu);
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  drain_all();
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  Lock lock(g_mu);
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes && !device_range(workspace, bytes)) {
    report("cublasSetWorkspace(%p, %zu bytes): not inside a device allocation", workspace, bytes);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc) {
  return gemm(handle, "cublasSgemm", transa, transb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C,
              ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  (void)algo;
  if (Ctype != CUDA_R_32F || computeType != CUBLAS_COMPUTE_32F || Atype != Btype) {
    report("cublasGemmEx: only A/B of one type (16F or 32F), C 32F, compute 32F are simulated");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return gemm(handle, "cublasGemmEx", transa, transb, m, n, k, *static_cast<const float*>(alpha), A, Atype, lda, B,
              Btype, ldb, *static_cast<const float*>(beta), C, ldc);
}

}  // extern "C"
