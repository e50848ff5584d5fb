/* Launchers of the merge's prologue and epilogue kernels (src/merge_kernels.cu); the arithmetic and the
 * meaning of every field are in include/pt_merge_math.h. Internal to libpt_trtllm_plugins.so. */
#ifndef PT_MERGE_KERNELS_H
#define PT_MERGE_KERNELS_H

#include <cuda_runtime_api.h>

#include "pt_merge.h"
#include "pt_merge_math.h"

namespace pt_merge {

/* One-shot transport: each rank's peer buffer holds two message buffers, `parity_stride` bytes
 * apart; the merge numbered e (the device counter `epoch` after its barrier) uses buffer e & 1. */
struct PrologueArgs {
    Quantity q;
    const void* h;          /* [tokens, H] */
    const void* x;          /* [tokens, H], read by the residual forms only */
    const void* w_combine;  /* [H] or null */
    float eps;
    float inv_tracks;       /* 1 / T */
    int tokens, hidden;
    void* out;              /* [tokens, H]: the quantity to reduce */
    const unsigned* epoch;  /* one-shot: out is this rank's buffer 0; write buffer (*epoch + 1) & 1.
                               null: write out itself */
    size_t parity_stride;
};

struct EpilogueArgs {
    Quantity q;
    const void* reduced;    /* [tokens, H]: the all-reduced quantity (when num_peers == 0) */
    int num_peers;          /* one-shot: T, and the reduced quantity is the float32 sum, in rank */
    const void* peers[PT_MERGE_MAX_RANKS]; /* order, of buffer *epoch & 1 of every peers[p] */
    const unsigned* epoch;
    size_t parity_stride;
    const void* x;          /* [tokens, H], read by the residual forms only */
    float scale;            /* PT_Q_H only */
    const void* w_dispatch; /* [H] or null */
    float dispatch_eps;
    const void* w_next;     /* [H] or null */
    float next_eps;
    int tokens, hidden;
    void* merged;           /* out0 */
    void* dispatch_normed;  /* out1, iff w_dispatch */
    void* next_normed;      /* out2, iff w_next */
};

/* The one-shot transport's flag barrier: rank r sets flags[p][r] = epoch + 1 in every rank p's
 * flags (release, system scope), waits until its own flags[r][p] >= epoch + 1 for every p (acquire),
 * then stores epoch + 1. Device-side only: safe under CUDA graph capture. */
struct BarrierArgs {
    unsigned* epoch;                       /* this rank's merge counter (device memory) */
    unsigned* flags[PT_MERGE_MAX_RANKS];   /* every rank's flag array, as mapped in this process */
    int rank, num_ranks;
};

cudaError_t launch_barrier(const BarrierArgs& args, cudaStream_t stream);
cudaError_t launch_prologue(pt_merge_dtype dtype, const PrologueArgs& args, cudaStream_t stream);
cudaError_t launch_epilogue(pt_merge_dtype dtype, const EpilogueArgs& args, cudaStream_t stream);

}  // namespace pt_merge

#endif  // PT_MERGE_KERNELS_H
