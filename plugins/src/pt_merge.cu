/* The C API of include/pt_merge.h, all on the caller's stream:
 *   NCCL      prologue kernel -> ncclAllReduce (in place in the workspace, the context's own
 *             communicator) -> epilogue kernel;
 *   one-shot  prologue kernel (into this rank's peer buffer) -> flag barrier kernel -> epilogue
 *             kernel summing every rank's buffer (src/merge_kernels.cu).
 * Peer buffer of each rank (one cudaMalloc, shared by CUDA IPC):
 *   [flags: PT_MERGE_MAX_RANKS unsigned, padded to 256 B][message buffer 0][message buffer 1]. */
#include <nccl.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "merge_kernels.h"
#include "pt_merge.h"

struct pt_merge_context {
    pt_merge_config config;
    ncclComm_t comm = nullptr;      // null for the ONESHOT transport
    void* workspace = nullptr;      // [max_tokens, H]: the quantity to reduce, reduced in place (NCCL)
    char* peer_buffer = nullptr;    // this rank's peer buffer (null for the NCCL transport)
    size_t message_stride = 0;      // bytes between message buffers 0 and 1
    unsigned* epoch = nullptr;      // the one-shot merge counter (device memory, this rank only)
    bool connected = false;         // pt_merge_connect opened every peer buffer (and AUTO's ranks agreed)
    char* peers[PT_MERGE_MAX_RANKS] = {};  // every rank's peer buffer as mapped here (own = peer_buffer)
};

namespace {

thread_local std::string last_error;

pt_merge_status fail(pt_merge_status status, const std::string& message) {
    last_error = message;
    return status;
}

#define PT_CUDA(call)                                                                        \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess)                                                               \
            return fail(PT_MERGE_ERR_CUDA, std::string(#call) + ": " + cudaGetErrorString(e_)); \
    } while (0)

#define PT_NCCL(call)                                                                        \
    do {                                                                                     \
        ncclResult_t r_ = (call);                                                            \
        if (r_ != ncclSuccess)                                                               \
            return fail(PT_MERGE_ERR_NCCL, std::string(#call) + ": " + ncclGetErrorString(r_)); \
    } while (0)

size_t dtype_bytes(pt_merge_dtype d) { return d == PT_MERGE_FP32 ? 4 : 2; }

ncclDataType_t nccl_type(pt_merge_dtype d) {
    return d == PT_MERGE_FP32 ? ncclFloat32 : (d == PT_MERGE_FP16 ? ncclFloat16 : ncclBfloat16);
}

/* The quantity reduced, from the combine op and the residual-form flag (pt_merge.h). */
pt_merge::Quantity quantity_of(const pt_merge_config& c) {
    if (c.combine_op == PT_MERGE_RESIDUAL_SUM) return pt_merge::PT_Q_RESIDUAL;
    if (!(c.flags & PT_MERGE_RESIDUAL_FORM)) return pt_merge::PT_Q_H;
    return c.combine_op == PT_MERGE_MEAN ? pt_merge::PT_Q_MEAN_RESIDUAL : pt_merge::PT_Q_SUM_RESIDUAL;
}

/* A mean of h averages in the transport (ncclAvg): no scale in the epilogue. */
bool averages(const pt_merge_config& c) { return quantity_of(c) == pt_merge::PT_Q_H && c.combine_op == PT_MERGE_MEAN; }

constexpr size_t kFlagBytes = 256;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* The largest message (bytes) the one-shot buffers hold: every message for ONESHOT, else up to the limit. */
size_t oneshot_capacity(const pt_merge_config& c) {
    const size_t largest = (size_t)c.max_tokens * c.hidden * dtype_bytes(c.dtype);
    if (c.transport == PT_MERGE_TRANSPORT_ONESHOT) return largest;
    const size_t limit = c.oneshot_max_bytes ? c.oneshot_max_bytes : PT_MERGE_DEFAULT_ONESHOT_BYTES;
    return largest < limit ? largest : limit;
}

pt_merge_status close_peers(pt_merge_context* ctx);

/* Frees what the context holds on its (current) device; the first failure is the result. */
pt_merge_status release(pt_merge_context* ctx) {
    pt_merge_status status = PT_MERGE_OK;
    auto keep = [&status](pt_merge_status s) { if (status == PT_MERGE_OK) status = s; };
    keep(close_peers(ctx));
    if (ctx->comm) {
        ncclResult_t r = ncclCommDestroy(ctx->comm);
        if (r != ncclSuccess) keep(fail(PT_MERGE_ERR_NCCL, std::string("pt_merge_destroy: ncclCommDestroy: ") + ncclGetErrorString(r)));
    }
    for (void* p : {(void*)ctx->workspace, (void*)ctx->peer_buffer, (void*)ctx->epoch}) {
        cudaError_t e = p ? cudaFree(p) : cudaSuccess;
        if (e != cudaSuccess) keep(fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_destroy: cudaFree: ") + cudaGetErrorString(e)));
    }
    delete ctx;
    return status;
}

/* pt_merge_create's work once config.device is current: the buffers, then the communicator. */
pt_merge_status create_on_device(const pt_merge_config& c, pt_merge_context** out) {
    pt_merge_context* ctx = new pt_merge_context{};
    ctx->config = c;
    ctx->config.unique_id = nullptr;  // the caller's bytes need not outlive the call
    auto failed = [ctx](pt_merge_status s) { std::string m = last_error; release(ctx); last_error = m; return s; };
    cudaError_t e = cudaSuccess;
    if (c.transport != PT_MERGE_TRANSPORT_ONESHOT) {
        const size_t bytes = (size_t)c.max_tokens * c.hidden * dtype_bytes(c.dtype);
        e = cudaMalloc(&ctx->workspace, bytes < 32 ? 32 : bytes);  // >= 32: it also holds AUTO's vote
        if (e != cudaSuccess) return failed(fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_create: cudaMalloc: ") + cudaGetErrorString(e)));
    }
    if (c.transport != PT_MERGE_TRANSPORT_NCCL) {
        ctx->message_stride = round_up(oneshot_capacity(c), 256);
        if ((e = cudaMalloc(&ctx->peer_buffer, kFlagBytes + 2 * ctx->message_stride)) != cudaSuccess ||
            (e = cudaMemset(ctx->peer_buffer, 0, kFlagBytes)) != cudaSuccess ||
            (e = cudaMalloc(&ctx->epoch, sizeof(unsigned))) != cudaSuccess ||
            (e = cudaMemset(ctx->epoch, 0, sizeof(unsigned))) != cudaSuccess || (e = cudaDeviceSynchronize()) != cudaSuccess)
            return failed(fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_create: peer buffer: ") + cudaGetErrorString(e)));
        ctx->peers[c.rank] = ctx->peer_buffer;
    }
    if (c.transport != PT_MERGE_TRANSPORT_ONESHOT) {
        ncclUniqueId id;
        std::memcpy(&id, c.unique_id, sizeof id);
        ncclResult_t r = ncclCommInitRank(&ctx->comm, c.num_ranks, id, c.rank);
        if (r != ncclSuccess) {
            ctx->comm = nullptr;
            return failed(fail(PT_MERGE_ERR_NCCL, std::string("pt_merge_create: ncclCommInitRank: ") + ncclGetErrorString(r)));
        }
    }
    *out = ctx;
    return PT_MERGE_OK;
}

/* Open every other rank's peer buffer; on failure the opened ones are closed again. */
pt_merge_status open_peers(pt_merge_context* ctx, const unsigned char* handles) {
    const pt_merge_config& c = ctx->config;
    for (int p = 0; p < c.num_ranks; ++p) {
        if (p == c.rank) continue;
        cudaIpcMemHandle_t handle;
        std::memcpy(&handle, handles + (size_t)p * PT_MERGE_IPC_HANDLE_BYTES, sizeof handle);
        void* mapped = nullptr;
        cudaError_t e = cudaIpcOpenMemHandle(&mapped, handle, cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
            cudaGetLastError();  // clear it
            close_peers(ctx);
            return fail(PT_MERGE_ERR_CUDA, "pt_merge_connect: cudaIpcOpenMemHandle of rank " + std::to_string(p) +
                                               "'s buffer: " + cudaGetErrorString(e));
        }
        ctx->peers[p] = static_cast<char*>(mapped);
    }
    return PT_MERGE_OK;
}

/* AUTO: every rank's vote over the group's NCCL communicator, on a private non-blocking stream (the
 * legacy default stream would wait for the caller's streams). [ok, stride, -stride] reduced with min:
 * the ranks agree on one-shot iff every rank opened its peers and every rank's buffers have this size. */
pt_merge_status agree(pt_merge_context* ctx, bool ok, bool* all) {
    const long long stride = (long long)ctx->message_stride;
    long long vote[3] = {ok ? 1 : 0, stride, -stride};
    cudaStream_t s;
    PT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaError_t e = cudaMemcpyAsync(ctx->workspace, vote, sizeof vote, cudaMemcpyHostToDevice, s);
    // every rank joins the vote whatever happened here: one that skipped it would leave the others blocked
    ncclResult_t r = ncclAllReduce(ctx->workspace, ctx->workspace, 3, ncclInt64, ncclMin, ctx->comm, s);
    if (e == cudaSuccess) e = cudaMemcpyAsync(vote, ctx->workspace, sizeof vote, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r != ncclSuccess) return fail(PT_MERGE_ERR_NCCL, std::string("pt_merge_connect: ncclAllReduce: ") + ncclGetErrorString(r));
    if (e != cudaSuccess) return fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_connect: ") + cudaGetErrorString(e));
    *all = vote[0] == 1 && vote[1] == stride && -vote[2] == stride;
    return PT_MERGE_OK;
}

/* Close the peer buffers this rank opened (not its own). */
pt_merge_status close_peers(pt_merge_context* ctx) {
    pt_merge_status status = PT_MERGE_OK;
    for (int p = 0; p < ctx->config.num_ranks; ++p) {
        if (!ctx->peers[p] || ctx->peers[p] == ctx->peer_buffer) continue;
        cudaError_t e = cudaIpcCloseMemHandle(ctx->peers[p]);
        if (e != cudaSuccess && status == PT_MERGE_OK)
            status = fail(PT_MERGE_ERR_CUDA, std::string("cudaIpcCloseMemHandle: ") + cudaGetErrorString(e));
        ctx->peers[p] = nullptr;
    }
    ctx->connected = false;
    return status;
}

void warn_once(const std::string& why) {
    static std::once_flag once;
    std::call_once(once, [&why] {
        std::fprintf(stderr, "pt_merge: warning: the one-shot transport is unavailable (%s); every merge uses NCCL\n",
                     why.c_str());
    });
}

bool uses_oneshot(const pt_merge_context& ctx, int tokens) {
    const pt_merge_config& c = ctx.config;
    if (c.transport == PT_MERGE_TRANSPORT_ONESHOT) return true;
    return c.transport == PT_MERGE_TRANSPORT_AUTO && ctx.connected &&
           (size_t)tokens * c.hidden * dtype_bytes(c.dtype) <= oneshot_capacity(c);
}

/* Device guard: config.device current for the scope, the caller's device restored after. */
struct OnDevice {
    int previous = 0;
    cudaError_t error;
    explicit OnDevice(int device) {
        error = cudaGetDevice(&previous);
        if (error == cudaSuccess) error = cudaSetDevice(device);
    }
    ~OnDevice() { cudaSetDevice(previous); }
};

}  // namespace

extern "C" {

pt_merge_status pt_merge_get_unique_id(unsigned char* out) {
    static_assert(sizeof(ncclUniqueId) == PT_MERGE_UNIQUE_ID_BYTES, "ncclUniqueId size");
    if (!out) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_get_unique_id: out is null");
    ncclUniqueId id;
    PT_NCCL(ncclGetUniqueId(&id));
    std::memcpy(out, &id, sizeof id);
    return PT_MERGE_OK;
}

pt_merge_status pt_merge_create(const pt_merge_config* config, pt_merge_context** out) {
    if (!config || !out) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: config and out must not be null");
    const pt_merge_config& c = *config;
    if (c.num_ranks < 1 || c.rank < 0 || c.rank >= c.num_ranks)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: rank " + std::to_string(c.rank) + " is not in 0.." +
                                               std::to_string(c.num_ranks - 1));
    if (c.hidden < 1 || c.max_tokens < 1)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: hidden and max_tokens must be >= 1");
    if (c.dtype < PT_MERGE_FP32 || c.dtype > PT_MERGE_BF16)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: unknown dtype " + std::to_string(c.dtype));
    if (c.combine_op < PT_MERGE_MEAN || c.combine_op > PT_MERGE_RESIDUAL_SUM)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: unknown combine_op " + std::to_string(c.combine_op));
    if (c.transport < PT_MERGE_TRANSPORT_AUTO || c.transport > PT_MERGE_TRANSPORT_ONESHOT)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: unknown transport " + std::to_string(c.transport));
    if (c.transport != PT_MERGE_TRANSPORT_NCCL && c.num_ranks > PT_MERGE_MAX_RANKS)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: the one-shot transport takes at most " +
                                               std::to_string(PT_MERGE_MAX_RANKS) + " ranks, got " + std::to_string(c.num_ranks));
    if (c.transport != PT_MERGE_TRANSPORT_ONESHOT && !c.unique_id)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: unique_id is null");
    OnDevice on(c.device);  // the caller's current device is left as it was
    if (on.error != cudaSuccess)
        return fail(PT_MERGE_ERR_CUDA, "pt_merge_create: device " + std::to_string(c.device) + ": " + cudaGetErrorString(on.error));
    return create_on_device(c, out);
}

pt_merge_status pt_merge_ipc_handle(pt_merge_context* ctx, unsigned char* out) {
    static_assert(sizeof(cudaIpcMemHandle_t) == PT_MERGE_IPC_HANDLE_BYTES, "cudaIpcMemHandle_t size");
    if (!ctx || !out) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_ipc_handle: ctx and out must not be null");
    if (!ctx->peer_buffer) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_ipc_handle: the NCCL transport has no peer buffer");
    OnDevice on(ctx->config.device);
    cudaIpcMemHandle_t handle;
    PT_CUDA(on.error);
    PT_CUDA(cudaIpcGetMemHandle(&handle, ctx->peer_buffer));
    std::memcpy(out, &handle, sizeof handle);
    return PT_MERGE_OK;
}

pt_merge_status pt_merge_connect(pt_merge_context* ctx, const unsigned char* handles) {
    if (!ctx || !handles) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_connect: ctx and handles must not be null");
    const pt_merge_config& c = ctx->config;
    if (!ctx->peer_buffer) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_connect: the NCCL transport has no peer buffers");
    if (ctx->connected) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_connect: already connected");
    OnDevice on(c.device);
    PT_CUDA(on.error);
    pt_merge_status opened = open_peers(ctx, handles);
    if (opened == PT_MERGE_OK) {
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) opened = fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_connect: ") + cudaGetErrorString(e));
    }
    if (c.transport == PT_MERGE_TRANSPORT_ONESHOT) {  // no NCCL to agree over: the caller agrees on the status
        if (opened != PT_MERGE_OK) return opened;
        ctx->connected = true;
        return PT_MERGE_OK;
    }
    const std::string why = opened == PT_MERGE_OK ? "" : last_error;
    bool all = false;
    pt_merge_status agreed = agree(ctx, opened == PT_MERGE_OK, &all);
    if (agreed != PT_MERGE_OK || !all) {
        close_peers(ctx);
        if (agreed != PT_MERGE_OK) return agreed;
        warn_once(why.empty() ? "another rank could not open a peer buffer, or the ranks' one-shot buffers differ" : why);
        return PT_MERGE_OK;
    }
    ctx->connected = true;
    return PT_MERGE_OK;
}

pt_merge_status pt_merge_disconnect(pt_merge_context* ctx) {
    if (!ctx) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_disconnect: ctx is null");
    OnDevice on(ctx->config.device);
    PT_CUDA(on.error);
    PT_CUDA(cudaDeviceSynchronize());  // this rank's merges have read every peer buffer they will
    pt_merge_status status = close_peers(ctx);
    if (status != PT_MERGE_OK) return fail(status, "pt_merge_disconnect: " + last_error);
    return PT_MERGE_OK;
}

pt_merge_status pt_merge_transport_for(const pt_merge_context* ctx, int tokens, pt_merge_transport* out) {
    if (!ctx || !out) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_transport_for: ctx and out must not be null");
    *out = uses_oneshot(*ctx, tokens) ? PT_MERGE_TRANSPORT_ONESHOT : PT_MERGE_TRANSPORT_NCCL;
    return PT_MERGE_OK;
}

pt_merge_status pt_merge_run(pt_merge_context* ctx, const void* h, const void* x, int tokens,
                             const pt_merge_norms* norms, const pt_merge_outputs* out, cudaStream_t stream) {
    if (!ctx || !h || !norms || !out || !out->merged)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: ctx, h, norms and out->merged must not be null");
    // an error left by the caller's own launches would surface after our first launch and stop us
    // half way (the peers would then spin in the barrier): report it before launching anything
    const cudaError_t pending = cudaGetLastError();
    if (pending != cudaSuccess)
        return fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_run: a CUDA error was pending before the merge: ") +
                                           cudaGetErrorString(pending));
    const pt_merge_config& c = ctx->config;
    if (tokens < 1 || tokens > c.max_tokens)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: tokens " + std::to_string(tokens) + " is not in 1.." +
                                               std::to_string(c.max_tokens));
    const pt_merge::Quantity q = quantity_of(c);
    if (pt_merge::is_residual(q) && !x) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: x is null for a residual form");
    if ((norms->dispatch_weight != nullptr) != (out->dispatch_normed != nullptr))
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: out->dispatch_normed must be given iff norms->dispatch_weight is");
    if ((norms->next_weight != nullptr) != (out->next_normed != nullptr))
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: out->next_normed must be given iff norms->next_weight is");
    const bool oneshot = uses_oneshot(*ctx, tokens);
    if (oneshot && !ctx->connected)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: the one-shot transport needs pt_merge_connect first");
    if (oneshot && (size_t)tokens * c.hidden * dtype_bytes(c.dtype) > ctx->message_stride)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: the message does not fit the one-shot buffers");
    const float inv_tracks = 1.0f / c.num_ranks;
    pt_merge::PrologueArgs pro{q, h, x, norms->combine_weight, norms->combine_eps, inv_tracks, tokens, c.hidden,
                               ctx->workspace, nullptr, 0};
    pt_merge::EpilogueArgs epi{q, ctx->workspace, 0, {}, nullptr, 0, x, 1.0f, norms->dispatch_weight,
                               norms->dispatch_eps, norms->next_weight, norms->next_eps, tokens, c.hidden,
                               out->merged, out->dispatch_normed, out->next_normed};
    if (oneshot) {
        char* const data = ctx->peer_buffer + kFlagBytes;
        pro.out = data, pro.epoch = ctx->epoch, pro.parity_stride = ctx->message_stride;
        pt_merge::BarrierArgs barrier{ctx->epoch, {}, c.rank, c.num_ranks};
        epi.num_peers = c.num_ranks, epi.epoch = ctx->epoch, epi.parity_stride = ctx->message_stride;
        for (int p = 0; p < c.num_ranks; ++p) {
            barrier.flags[p] = reinterpret_cast<unsigned*>(ctx->peers[p]);
            epi.peers[p] = ctx->peers[p] + kFlagBytes;
        }
        epi.scale = averages(c) ? inv_tracks : 1.0f;  // no ncclAvg here
        PT_CUDA(pt_merge::launch_prologue(c.dtype, pro, stream));
        PT_CUDA(pt_merge::launch_barrier(barrier, stream));
        PT_CUDA(pt_merge::launch_epilogue(c.dtype, epi, stream));
        return PT_MERGE_OK;
    }
    PT_CUDA(pt_merge::launch_prologue(c.dtype, pro, stream));
    PT_NCCL(ncclAllReduce(ctx->workspace, ctx->workspace, (size_t)tokens * c.hidden, nccl_type(c.dtype),
                          averages(c) ? ncclAvg : ncclSum, ctx->comm, stream));
    PT_CUDA(pt_merge::launch_epilogue(c.dtype, epi, stream));
    return PT_MERGE_OK;
}

pt_merge_status pt_merge_destroy(pt_merge_context* ctx) {
    if (!ctx) return PT_MERGE_OK;
    OnDevice on(ctx->config.device);
    return release(ctx);
}

const char* pt_merge_last_error(void) { return last_error.c_str(); }

}  // extern "C"
