/* This rank's pt_merge_context, created with the rendezvous steps of include/pt_merge.h over a file store,
 * and its collective teardown. The files, <prefix>.<name> in the store's directory:
 *   id            the NCCL unique id: rank 0 publishes it, the others wait for it (unless ONESHOT);
 *   handle.<r>    rank r's IPC handle (unless NCCL), published after pt_merge_create;
 *   connected.<r> rank r's status once it has connected (after pt_merge_create for NCCL): empty = ok,
 *                 else the one line that names the rank that failed;
 *   closed.<r>    empty: rank r has closed every peer buffer it opened (unless NCCL; teardown, or a failed
 *                 join whose peers may have opened buffers).
 * join_merge_group (T > 1): [id], pt_merge_create, [handle.<r>, all T handles, pt_merge_connect], then every
 * rank publishes connected.<r> and waits for all T of them, so every rank returns or every rank throws:
 * ONESHOT's pt_merge_connect has no NCCL to agree over, and a rank whose connect failed must not leave the
 * others spinning in their first merge. A rank that fails anywhere publishes its connected.<r> with the line
 * (replacing an "ok" it published); the waits for id, handles and statuses give up as soon as a peer's
 * status is a failure, and every rank throws that line. With peer buffers, a failing rank then closes the
 * buffers it opened (pt_merge_disconnect) and publishes closed.<r>; a rank whose handle was published (its
 * buffer may be open in a peer) waits for every rank's closed.<p> before pt_merge_destroy, and on a timeout
 * leaks its context (one line on stderr) rather than free a buffer a peer may still map.
 * leave_merge_group (the last release of a context with peer buffers, T > 1): pt_merge_disconnect, closed.<r>,
 * wait for every closed.<p> (on a timeout: one line on stderr and no pt_merge_destroy, a leak), then
 * pt_merge_destroy.
 * Who removes what, and when (a file goes only once no rank can still wait for it):
 *   - a rank first removes its own connected.<r>, closed.<r> and handle.<r> (left by an earlier job with
 *     the same job id: no rank of this job can have published them yet);
 *   - after seeing every rank's "ok" status: rank r removes handle.<r>, rank 0 removes id (every rank reads
 *     the id and all handles before it publishes its status);
 *   - after seeing every rank's closed.<p> (teardown or failed join): any rank removes every id, handle.<p>
 *     and connected.<p> (every rank publishes closed.<p> after its last read of them);
 *   - closed.<p> files are never removed (a rank may still be waiting for one, and nothing later tells it
 *     has stopped): T empty files stay per group and generation; with NCCL, the T empty connected.<p>
 *     instead. A failed join whose ranks never published handles leaves its id and connected.<p> too. */
#ifndef PT_TRT_RENDEZVOUS_H
#define PT_TRT_RENDEZVOUS_H

#include "file_store.h"
#include "pt_merge.h"

namespace pt_trt {

/* `config` without a unique id (the rendezvous supplies it); `store` is unused for a group of one rank.
 * Throws std::runtime_error (one line) on this rank, and on every other rank of the group, when one failed. */
pt_merge_context* join_merge_group(pt_merge_config config, FileStore const& store);

/* Whether the context of `config` has peer buffers that its group must tear down together (T > 1 and a
 * transport other than NCCL). */
bool has_peer_buffers(pt_merge_config const& config);

/* Destroys a context join_merge_group made: with peer buffers, the collective teardown above (it waits up to
 * the timeout for every rank's release; a timeout leaks the context); otherwise pt_merge_destroy. */
void leave_merge_group(pt_merge_context* ctx, pt_merge_config const& config, FileStore const& store) noexcept;

}  // namespace pt_trt

#endif  // PT_TRT_RENDEZVOUS_H
