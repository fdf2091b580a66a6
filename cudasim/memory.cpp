// cudasim: device and pinned allocations. Device memory sits in its own pages, inaccessible to
// the host outside device work, with a guard page after each allocation: host code reading
// device memory, and kernels running off the end of an allocation, stop with a message naming
// the allocation (and kernel).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "internal.h"

namespace cudasim {

size_t g_page = 4096;
const char* g_kernel = nullptr;
size_t g_block_smem_bytes = 0;
char* g_stack_area = nullptr;
size_t g_stack_area_bytes = 0, g_stack_bytes = 0;
char* g_smem_guard = nullptr;

namespace {

std::map<uintptr_t, Alloc> g_allocs;  // by ptr
bool g_protect = true;
bool g_open = false;  // device memory accessible (device work running)
struct sigaction g_old_segv;
bool g_handler = false;

// The allocation whose mapping (data or guard page) contains p, or null.
const Alloc* mapping_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (const auto& [key, al] : g_allocs)  // few allocations; a fault path and checks only
    if (a >= reinterpret_cast<uintptr_t>(al.map) && a < reinterpret_cast<uintptr_t>(al.map) + al.map_bytes) return &al;
  return nullptr;
}

void write_err(const char* msg) {
  ssize_t ignored = write(2, msg, std::strlen(msg));
  (void)ignored;
}

}  // namespace

const Alloc* alloc_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  const Alloc& al = it->second;
  return a < reinterpret_cast<uintptr_t>(al.ptr) + std::max<size_t>(al.bytes, 1) ? &al : nullptr;
}

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
bool device_range(const void* p, size_t bytes) {
  const Alloc* al = alloc_of(p);
  return al && al->device && static_cast<const char*>(p) + bytes <= al->ptr + al->bytes;
}

namespace {

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

void protect(const Alloc& al, bool open) {
  if (g_protect && al.device && al.data_map_bytes)
    mprotect(al.map, al.data_map_bytes, open ? (PROT_READ | PROT_WRITE) : PROT_NONE);
}

}  // namespace

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

DeviceWork::DeviceWork() : was(g_open) {
  if (!was)
    for (const auto& [k, al] : g_allocs) protect(al, true);
  g_open = true;
}
DeviceWork::~DeviceWork() {
  if (!was)
    for (const auto& [k, al] : g_allocs) protect(al, false);
  g_open = was;
}

}  // namespace cudasim

using namespace cudasim;

extern "C" {

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

}  // extern "C"
