/* The C API of include/pt_merge.h with the NCCL transport: prologue kernel -> ncclAllReduce (in place, on
 * the context's own communicator) -> epilogue kernel, all on the caller's stream. */
#include <nccl.h>

#include <cstring>
#include <string>

#include "merge_kernels.h"
#include "pt_merge.h"

struct pt_merge_context {
    pt_merge_config config;
    ncclComm_t comm;
    void* workspace;  // [max_tokens, H]: the quantity to reduce, reduced in place
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

/* pt_merge_create's work once config.device is current: the workspace, then the communicator. */
pt_merge_status create_on_device(const pt_merge_config& c, pt_merge_context** out) {
    pt_merge_context* ctx = new pt_merge_context{c, nullptr, nullptr};
    ctx->config.unique_id = nullptr;  // the caller's bytes need not outlive the call
    const size_t bytes = (size_t)c.max_tokens * c.hidden * dtype_bytes(c.dtype);
    cudaError_t e = cudaMalloc(&ctx->workspace, bytes);
    if (e != cudaSuccess) {
        delete ctx;
        return fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_create: cudaMalloc: ") + cudaGetErrorString(e));
    }
    ncclUniqueId id;
    std::memcpy(&id, c.unique_id, sizeof id);
    ncclResult_t r = ncclCommInitRank(&ctx->comm, c.num_ranks, id, c.rank);
    if (r != ncclSuccess) {
        cudaFree(ctx->workspace);
        delete ctx;
        return fail(PT_MERGE_ERR_NCCL, std::string("pt_merge_create: ncclCommInitRank: ") + ncclGetErrorString(r));
    }
    *out = ctx;
    return PT_MERGE_OK;
}

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
    if (!c.unique_id) return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_create: unique_id is null");
    int previous_device = 0;
    PT_CUDA(cudaGetDevice(&previous_device));
    PT_CUDA(cudaSetDevice(c.device));
    pt_merge_status status = create_on_device(c, out);
    cudaSetDevice(previous_device);  // the caller's current device is left as it was
    return status;
}

pt_merge_status pt_merge_run(pt_merge_context* ctx, const void* h, const void* x, int tokens,
                             const pt_merge_norms* norms, const pt_merge_outputs* out, cudaStream_t stream) {
    if (!ctx || !h || !norms || !out || !out->merged)
        return fail(PT_MERGE_ERR_ARGUMENT, "pt_merge_run: ctx, h, norms and out->merged must not be null");
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
    const float inv_tracks = 1.0f / c.num_ranks;
    pt_merge::PrologueArgs pro{q, h, x, norms->combine_weight, norms->combine_eps, inv_tracks, tokens, c.hidden,
                               ctx->workspace};
    PT_CUDA(pt_merge::launch_prologue(c.dtype, pro, stream));
    PT_NCCL(ncclAllReduce(ctx->workspace, ctx->workspace, (size_t)tokens * c.hidden, nccl_type(c.dtype),
                          averages(c) ? ncclAvg : ncclSum, ctx->comm, stream));
    pt_merge::EpilogueArgs epi{q, ctx->workspace, x, 1.0f, norms->dispatch_weight, norms->dispatch_eps,
                               norms->next_weight, norms->next_eps, tokens, c.hidden, out->merged,
                               out->dispatch_normed, out->next_normed};
    PT_CUDA(pt_merge::launch_epilogue(c.dtype, epi, stream));
    return PT_MERGE_OK;
}

pt_merge_status pt_merge_destroy(pt_merge_context* ctx) {
    if (!ctx) return PT_MERGE_OK;
    ncclResult_t r = ncclCommDestroy(ctx->comm);
    cudaError_t e = cudaFree(ctx->workspace);
    delete ctx;
    if (r != ncclSuccess) return fail(PT_MERGE_ERR_NCCL, std::string("pt_merge_destroy: ncclCommDestroy: ") + ncclGetErrorString(r));
    if (e != cudaSuccess) return fail(PT_MERGE_ERR_CUDA, std::string("pt_merge_destroy: cudaFree: ") + cudaGetErrorString(e));
    return PT_MERGE_OK;
}

const char* pt_merge_last_error(void) { return last_error.c_str(); }

}  // extern "C"
