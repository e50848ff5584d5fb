/* This rank's pt_merge_context, created with the rendezvous steps of include/pt_merge.h over a file store:
 *   1. unless the transport is ONESHOT: rank 0 publishes the NCCL unique id ("id"), the others wait for it;
 *   2. every rank: pt_merge_create;
 *   3. unless the transport is NCCL: every rank publishes its IPC handle ("handle.<rank>"), reads all T of
 *      them, then pt_merge_connect;
 *   4. every rank but 0 publishes "done.<rank>"; rank 0 waits for them and removes the group's files.
 * On a failure a rank removes the files it published. */
#ifndef PT_TRT_RENDEZVOUS_H
#define PT_TRT_RENDEZVOUS_H

#include "file_store.h"
#include "pt_merge.h"

namespace pt_trt {

/* `config` without a unique id (the rendezvous supplies it); throws std::runtime_error (one line). */
pt_merge_context* join_merge_group(pt_merge_config config, FileStore const& store);

}  // namespace pt_trt

#endif  // PT_TRT_RENDEZVOUS_H
