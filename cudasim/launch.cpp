// cudasim: kernel launches. A launch runs its blocks one after another; in a block every CUDA
// thread is a coroutine scheduled at barriers and warp intrinsics (cudasim/device.h), resumed in
// a shuffled order so a missing barrier shows.
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

#include "internal.h"

#if defined(CUDASIM_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
dim3 blockDim, gridDim;

namespace cudasim {
namespace {

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
