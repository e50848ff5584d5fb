/* The pt_merge_context shared by every PTTrackMerge instance of a process with the same configuration
 * (num_ranks, rank, dtype, H, combine_op, residual_form, transport, max_tokens, oneshot_max_bytes, device):
 * a process-wide registry under one mutex creates it through the file-store rendezvous for its first user,
 * and the last user's release destroys it (the count of users is the shared_ptr's). */
#ifndef PT_TRT_SHARED_CONTEXT_H
#define PT_TRT_SHARED_CONTEXT_H

#include <memory>

#include "pt_merge.h"

namespace pt_trt {

/* One created context, destroyed with the object. */
class SharedContext {
public:
    SharedContext(pt_merge_config const& config, pt_merge_context* ctx) : config_(config), ctx_(ctx) {}
    ~SharedContext() { pt_merge_destroy(ctx_); }
    SharedContext(SharedContext const&) = delete;
    SharedContext& operator=(SharedContext const&) = delete;

    pt_merge_config const& config() const { return config_; }
    pt_merge_context* get() const { return ctx_; }

private:
    pt_merge_config config_;
    pt_merge_context* ctx_;
};

/* The process's context for `config` (its unique_id unused), created (a collective rendezvous with the other
 * ranks, up to the rendezvous timeout) if no one holds it; throws std::runtime_error (one line). */
std::shared_ptr<SharedContext> acquire_shared_context(pt_merge_config const& config);

}  // namespace pt_trt

#endif  // PT_TRT_SHARED_CONTEXT_H
