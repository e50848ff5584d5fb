/* The C API of libpt_trtllm_plugins.so: one PT track merge (docs/pt-spec.md section 3) on a rank group.
 *
 * A merge context belongs to one rank of a group of T ranks (one track each). The library does no
 * rendezvous of its own (no MPI in the .so): the caller creates the NCCL unique id on rank 0 with
 * pt_merge_get_unique_id, sends its bytes to every rank by its own means (mpi4py, a file or TCP store),
 * and each rank calls pt_merge_create with them. Every call returns PT_MERGE_OK or an error code;
 * pt_merge_last_error() then gives a one-line message (per thread).
 *
 * One merge (pt_merge_run), per token row of H elements, all on the caller's stream:
 *   prologue   optional per-track combine RMSNorm of h, then the quantity to reduce
 *              (h, h - x, (h - x)/T or h - x/T: PT_MERGE_RESIDUAL_FORM and the combine op choose it);
 *   transport  one sum all-reduce of that quantity over the group (NCCL on the context's own
 *              communicator; ncclAvg for a mean of h, which saves the 1/T scale);
 *   epilogue   out.merged, then out.dispatch_normed (when a dispatch norm weight is given), then
 *              out.next_normed (when a next norm weight is given) = next norm of dispatch_normed if
 *              present, else of merged. The arithmetic is include/pt_merge_math.h.
 * Transports: NCCL only in this version.
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

typedef enum {
    PT_MERGE_OK = 0,
    PT_MERGE_ERR_ARGUMENT = 1, /* an invalid argument; the message names it */
    PT_MERGE_ERR_CUDA = 2,     /* a CUDA runtime error */
    PT_MERGE_ERR_NCCL = 3      /* an NCCL error */
} pt_merge_status;

typedef enum { PT_MERGE_FP32 = 0, PT_MERGE_FP16 = 1, PT_MERGE_BF16 = 2 } pt_merge_dtype;

/* The model's combine_op. */
typedef enum { PT_MERGE_MEAN = 0, PT_MERGE_SUM = 1, PT_MERGE_RESIDUAL_SUM = 2 } pt_merge_combine_op;

/* Flags of pt_merge_config.flags. */
#define PT_MERGE_RESIDUAL_FORM 1u /* mean and sum reduce (h - x)/T and h - x/T and add x back, like
                                     TensorRT-LLM's fused residual merge; residual_sum always does */

typedef struct {
    int rank;       /* this rank, 0 .. num_ranks - 1 (= its track) */
    int num_ranks;  /* T */
    int device;     /* the CUDA device of this rank */
    const unsigned char* unique_id; /* PT_MERGE_UNIQUE_ID_BYTES from pt_merge_get_unique_id on rank 0 */
    pt_merge_dtype dtype;
    pt_merge_combine_op combine_op;
    unsigned flags;
    int hidden;     /* H: any value >= 1 (16-byte vector loads when H and the pointers allow) */
    int max_tokens; /* the most token rows one pt_merge_run may merge (sizes the workspace) */
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

/* Create this rank's context: allocates the [max_tokens, H] workspace on config->device and joins the
 * group's NCCL communicator (collective: every rank of the group must call it). The calling thread's
 * current device is left as it was. */
PT_MERGE_API pt_merge_status pt_merge_create(const pt_merge_config* config, pt_merge_context** out);

/* Merge `tokens` rows (1 .. max_tokens) on `stream`: h is this rank's track output, x the segment
 * input (read only by the residual forms; may be null otherwise), both [tokens, H] of the dtype.
 * Call it with the context's device current (a stream of that device). Asynchronous; collective over
 * the group; no host synchronization, so it can be captured in a CUDA graph. */
PT_MERGE_API pt_merge_status pt_merge_run(pt_merge_context* ctx, const void* h, const void* x, int tokens,
                                          const pt_merge_norms* norms, const pt_merge_outputs* out,
                                          cudaStream_t stream);

/* Destroy the context (its communicator and workspace); null is allowed. */
PT_MERGE_API pt_merge_status pt_merge_destroy(pt_merge_context* ctx);

/* The message of this thread's last error ("" if none). */
PT_MERGE_API const char* pt_merge_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* PT_MERGE_H */
