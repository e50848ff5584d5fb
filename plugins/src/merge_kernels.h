/* Launchers of the merge's prologue and epilogue kernels (src/merge_kernels.cu); the arithmetic and the
 * meaning of every field are in include/pt_merge_math.h. Internal to libpt_trtllm_plugins.so. */
#ifndef PT_MERGE_KERNELS_H
#define PT_MERGE_KERNELS_H

#include <cuda_runtime_api.h>

#include "pt_merge.h"
#include "pt_merge_math.h"

namespace pt_merge {

struct PrologueArgs {
    Quantity q;
    const void* h;          /* [tokens, H] */
    const void* x;          /* [tokens, H], read by the residual forms only */
    const void* w_combine;  /* [H] or null */
    float eps;
    float inv_tracks;       /* 1 / T */
    int tokens, hidden;
    void* out;              /* [tokens, H]: the quantity to reduce */
};

struct EpilogueArgs {
    Quantity q;
    const void* reduced;    /* [tokens, H]: the all-reduced quantity */
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

cudaError_t launch_prologue(pt_merge_dtype dtype, const PrologueArgs& args, cudaStream_t stream);
cudaError_t launch_epilogue(pt_merge_dtype dtype, const EpilogueArgs& args, cudaStream_t stream);

}  // namespace pt_merge

#endif  // PT_MERGE_KERNELS_H
