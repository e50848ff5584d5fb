/* The C API of libpt_trtllm_plugins.so: one PT track merge (docs/pt-spec.md section 3) on a rank group.
 *
 * A merge context belongs to one rank of a group of T ranks (one track each). The library does no
 * rendezvous of its own (no MPI in the .so); the caller moves bytes between the ranks by its own means
 * (mpi4py, a file or TCP store):
 *   1. rank 0: pt_merge_get_unique_id -> the NCCL unique id bytes, sent to every rank
 *      (not needed for PT_MERGE_TRANSPORT_ONESHOT, which has no NCCL communicator);
 *   2. every rank: pt_merge_create (collective when NCCL is used);
 *   3. unless the transport is NCCL: every rank: pt_merge_ipc_handle -> its peer-buffer handle bytes,
 *      all-gathered in rank order, then pt_merge_connect with all T of them (collective).
 * Every call returns PT_MERGE_OK or an error code; pt_merge_last_error() then gives a one-line
 * message (per thread).
 *
 * One merge (pt_merge_run), per token row of H elements, all on the caller's stream:
 *   prologue   optional per-track combine RMSNorm of h, then the quantity to reduce
 *              (h, h - x, (h - x)/T or h - x/T: PT_MERGE_RESIDUAL_FORM and the combine op choose it);
 *   transport  one sum all-reduce of that quantity over the group: NCCL on the context's own
 *              communicator (ncclAvg for a mean of h, which saves the 1/T scale), or one-shot: each
 *              rank's prologue writes into its own peer buffer (CUDA IPC), a device-side flag
 *              barrier (no host synchronization), and the epilogue reads every rank's buffer and
 *              sums them in rank order in float32 (the same bits on every rank);
 *   epilogue   out.merged, then out.dispatch_normed (when a dispatch norm weight is given), then
 *              out.next_normed (when a next norm weight is given) = next norm of dispatch_normed if
 *              present, else of merged. The arithmetic is include/pt_merge_math.h.
 * Transports (pt_merge_config.transport): AUTO = one-shot for messages up to oneshot_max_bytes once
 * connected, NCCL otherwise (and wherever the IPC buffers could not be opened: a warning on stderr,
 * once); NCCL = NCCL only; ONESHOT = one-shot only, without NCCL (so processes sharing one GPU, which
 * NCCL refuses, can merge; every message must fit: max_tokens sizes the buffers).
 */
#ifndef PT_MERGE_H
#define PT_MERGE_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifndef PT_MERGE_API
#define PT_MERGE_API /* the library defines it to export these symbols */
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define PT_MERGE_UNIQUE_ID_BYTES 128 /* sizeof(ncclUniqueId) */
#define PT_MERGE_IPC_HANDLE_BYTES 64 /* sizeof(cudaIpcMemHandle_t) */
#define PT_MERGE_MAX_RANKS 16        /* the one-shot transport's largest group */
#define PT_MERGE_DEFAULT_ONESHOT_BYTES (512u * 1024u) /* AUTO: one-shot up to this message size */

typedef enum {
    PT_MERGE_OK = 0,
    PT_MERGE_ERR_ARGUMENT = 1, /* an invalid argument; the message names it */
    PT_MERGE_ERR_CUDA = 2,     /* a CUDA runtime error */
    PT_MERGE_ERR_NCCL = 3      /* an NCCL error */
} pt_merge_status;

typedef enum { PT_MERGE_FP32 = 0, PT_MERGE_FP16 = 1, PT_MERGE_BF16 = 2 } pt_merge_dtype;

typedef enum {
    PT_MERGE_TRANSPORT_AUTO = 0,
    PT_MERGE_TRANSPORT_NCCL = 1,
    PT_MERGE_TRANSPORT_ONESHOT = 2
} pt_merge_transport;

/* The model's combine_op. */
typedef enum { PT_MERGE_MEAN = 0, PT_MERGE_SUM = 1, PT_MERGE_RESIDUAL_SUM = 2 } pt_merge_combine_op;

/* Flags of pt_merge_config.flags. */
#define PT_MERGE_RESIDUAL_FORM 1u /* mean and sum reduce (h - x)/T and h - x/T and add x back, like
                                     TensorRT-LLM's fused residual merge; residual_sum always does */

typedef struct {
    int rank;       /* this rank, 0 .. num_ranks - 1 (= its track) */
    int num_ranks;  /* T */
    int device;     /* the CUDA device of this rank */
    const unsigned char* unique_id; /* PT_MERGE_UNIQUE_ID_BYTES from pt_merge_get_unique_id on rank 0;
                                       ignored (may be null) for PT_MERGE_TRANSPORT_ONESHOT */
    pt_merge_dtype dtype;
    pt_merge_combine_op combine_op;
    unsigned flags;
    int hidden;     /* H: any value >= 1 (16-byte vector loads when H and the pointers allow) */
    int max_tokens; /* the most token rows one pt_merge_run may merge (sizes the workspace) */
    pt_merge_transport transport;
    size_t oneshot_max_bytes; /* AUTO: the largest message (tokens * H * dtype bytes) sent one-shot;
                                 0 = PT_MERGE_DEFAULT_ONESHOT_BYTES. Sizes the peer buffers */
} pt_merge_config;

/* The norms around the collective: a null weight means no such norm. Weights are [H] of the dtype. */
typedef struct {
    const void* combine_weight;  /* per-track combine RMSNorm of h, before the collective */
    float combine_eps;
    const void* dispatch_weight; /* per-track dispatch RMSNorm of the merged state */
    float dispatch_eps;
    const void* next_weight;     /* the next layer's input norm (or the final norm) */
    float next_eps;
} pt_merge_norms;

/* Outputs, [tokens, H] each: merged always; dispatch_normed iff norms.dispatch_weight; next_normed iff
 * norms.next_weight. merged may be the same buffer as x. */
typedef struct {
    void* merged;
    void* dispatch_normed;
    void* next_normed;
} pt_merge_outputs;

typedef struct pt_merge_context pt_merge_context;

/* A new NCCL unique id (rank 0 only) into out[PT_MERGE_UNIQUE_ID_BYTES]. */
PT_MERGE_API pt_merge_status pt_merge_get_unique_id(unsigned char* out);

/* Create this rank's context on config->device: the [max_tokens, H] workspace, the group's NCCL
 * communicator unless the transport is ONESHOT (collective then: every rank of the group must call it),
 * and the peer buffer (two message buffers and the barrier flags) unless it is NCCL. The calling
 * thread's current device is left as it was. */
PT_MERGE_API pt_merge_status pt_merge_create(const pt_merge_config* config, pt_merge_context** out);

/* This rank's peer-buffer handle (PT_MERGE_IPC_HANDLE_BYTES into out); an error for the NCCL transport. */
PT_MERGE_API pt_merge_status pt_merge_ipc_handle(pt_merge_context* ctx, unsigned char* out);

/* Open every rank's peer buffer from `handles` (num_ranks * PT_MERGE_IPC_HANDLE_BYTES, in rank order;
 * this rank's own entry is not opened). Collective. Where a buffer cannot be opened (no P2P between the
 * GPUs, a container without IPC): AUTO votes with the other ranks over NCCL (also that every rank's
 * buffers have the same size), warns once on stderr and keeps NCCL for every message; ONESHOT, which
 * has no NCCL, returns the error, and the CALLER must agree across ranks before any merge (a rank
 * whose connect failed must not leave the others spinning in their first merge). Synchronizes the
 * device. */
PT_MERGE_API pt_merge_status pt_merge_connect(pt_merge_context* ctx, const unsigned char* handles);

/* Teardown, part 1, on every rank before pt_merge_destroy: waits for this rank's merges and closes the
 * peer buffers it opened. Destroy a context only after EVERY rank has returned from its
 * pt_merge_disconnect (a host barrier of the caller's): until then a peer may read this rank's buffer,
 * and freeing an exported buffer that another process still has open is undefined behaviour. */
PT_MERGE_API pt_merge_status pt_merge_disconnect(pt_merge_context* ctx);

/* The transport a pt_merge_run of `tokens` rows would use (PT_MERGE_TRANSPORT_NCCL or _ONESHOT) into *out. */
PT_MERGE_API pt_merge_status pt_merge_transport_for(const pt_merge_context* ctx, int tokens, pt_merge_transport* out);

/* Merge `tokens` rows (1 .. max_tokens) on `stream`: h is this rank's track output, x the segment
 * input (read only by the residual forms; may be null otherwise), both [tokens, H] of the dtype.
 * Call it with the context's device current (a stream of that device). Asynchronous; collective over
 * the group; no host synchronization, so it can be captured in a CUDA graph. A context's merges must
 * be ordered on the device (one stream, or streams ordered by events, as a capture stream is): the
 * one-shot transport numbers them with a counter in device memory. */
PT_MERGE_API pt_merge_status pt_merge_run(pt_merge_context* ctx, const void* h, const void* x, int tokens,
                                          const pt_merge_norms* norms, const pt_merge_outputs* out,
                                          cudaStream_t stream);

/* Destroy the context (its communicator, buffers and any peer buffers still open); null is allowed.
 * With peer buffers, call it only after every rank's pt_merge_disconnect (above). */
PT_MERGE_API pt_merge_status pt_merge_destroy(pt_merge_context* ctx);

/* The message of this thread's last error ("" if none). */
PT_MERGE_API const char* pt_merge_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* PT_MERGE_H */
