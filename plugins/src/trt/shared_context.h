/* The pt_merge_context shared by every PTTrackMerge instance of a process with the same configuration
 * (num_ranks, rank, dtype, H, combine_op, residual_form, transport, max_tokens, oneshot_max_bytes, device):
 * a process-wide registry under one mutex creates it through the file-store rendezvous for its first user,
 * and the last user's release tears it down (the count of users is the shared_ptr's): with peer buffers
 * (T > 1, transport not NCCL) collectively over the same files (rendezvous.h: it waits, up to the rendezvous
 * timeout, until every rank of the group has released its context too, and leaks it on a timeout); otherwise
 * it destroys it at once. */
#ifndef PT_TRT_SHARED_CONTEXT_H
#define PT_TRT_SHARED_CONTEXT_H

#include <memory>

#include "file_store.h"
#include "pt_merge.h"

namespace pt_trt {

/* One context, created by the group's rendezvous over `store` with the object (which throws if it fails) and
 * torn down with it. */
class SharedContext {
public:
    SharedContext(pt_merge_config const& config, FileStore store);
    ~SharedContext();
    SharedContext(SharedContext const&) = delete;
    SharedContext& operator=(SharedContext const&) = delete;

    pt_merge_config const& config() const { return config_; }
    pt_merge_context* get() const { return ctx_; }

private:
    pt_merge_config config_;
    FileStore store_;  // the group's files, for the teardown
    pt_merge_context* ctx_;
};

/* The process's context for `config` (its unique_id unused), created (a collective rendezvous with the other
 * ranks, up to the rendezvous timeout) if no one holds it; throws std::runtime_error (one line). */
std::shared_ptr<SharedContext> acquire_shared_context(pt_merge_config const& config);

}  // namespace pt_trt

#endif  // PT_TRT_SHARED_CONTEXT_H
