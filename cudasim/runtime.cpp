// cudasim: a CUDA runtime and cuBLAS subset on the host, so the CUDA backend and its kernels
// run (and are tested) on machines without a GPU. See cudasim/README.md; the sources are split
// as internal.h says.
//
// This file: errors, devices, streams, capture, graphs, events.
// - Streams are queues: work runs when the host synchronises (cudaStreamSynchronize, a copy to
//   pageable memory, cudaMemcpy, cudaFree, ...), so results read too early are wrong here too.
// - Stream capture records the queue into a graph; the calls CUDA forbids while capturing fail
//   and invalidate the capture as they do on a GPU.
// - Errors the hardware would not report clearly (a kernel argument, or a pointer inside a
//   struct argument, that is host memory; a cuBLAS matrix outside its allocation; a shuffle whose
//   lanes do not all arrive) are reported on stderr and returned as errors.
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "internal.h"

namespace cudasim {

std::recursive_mutex g_mu;
thread_local cudaError_t t_last_error = cudaSuccess;
cudaError_t g_sticky = cudaSuccess;

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

// ----- streams, capture --------------------------------------------------------------------
CUstream_st g_legacy;

namespace {
std::vector<CUstream_st*> g_streams;

// A capture begun by this thread in a mode that forbids "unsafe" calls (all but Relaxed).
CUstream_st* strict_capture_of_this_thread() {
  for (CUstream_st* s : g_streams)
    if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed && s->capture_thread == std::this_thread::get_id())
      return s;
  return nullptr;
}
}  // namespace

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
void drain_all() {
  for (CUstream_st* s : g_streams) drain(s);
  drain(&g_legacy);
}
void drain_legacy() {
  for (CUstream_st* s : g_streams)
    if (s->blocking) drain(s);
  drain(&g_legacy);
}

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

}  // namespace cudasim

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

}  // extern "C"
