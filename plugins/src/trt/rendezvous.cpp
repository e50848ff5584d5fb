/* The rendezvous of one merge group over a file store (rendezvous.h). */
#include "rendezvous.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace pt_trt {
namespace {

void check(pt_merge_status status, char const* call) {
    if (status != PT_MERGE_OK) throw std::runtime_error(std::string(call) + ": " + pt_merge_last_error());
}

std::string handle_name(int rank) { return "handle." + std::to_string(rank); }
std::string done_name(int rank) { return "done." + std::to_string(rank); }

}  // namespace

pt_merge_context* join_merge_group(pt_merge_config config, FileStore const& store) {
    int const ranks = config.num_ranks, rank = config.rank;
    std::vector<std::string> published;  // removed again if this rank fails
    pt_merge_context* ctx = nullptr;
    try {
        std::vector<unsigned char> id(PT_MERGE_UNIQUE_ID_BYTES);
        if (config.transport != PT_MERGE_TRANSPORT_ONESHOT) {
            if (rank == 0) {
                check(pt_merge_get_unique_id(id.data()), "pt_merge_get_unique_id");
                store.publish("id", id.data(), id.size());
                published.push_back("id");
            } else {
                id = store.wait_for("id", PT_MERGE_UNIQUE_ID_BYTES);
            }
            config.unique_id = id.data();
        }
        check(pt_merge_create(&config, &ctx), "pt_merge_create");

        if (config.transport != PT_MERGE_TRANSPORT_NCCL) {
            std::vector<unsigned char> handles(size_t(ranks) * PT_MERGE_IPC_HANDLE_BYTES);
            unsigned char* own = handles.data() + size_t(rank) * PT_MERGE_IPC_HANDLE_BYTES;
            check(pt_merge_ipc_handle(ctx, own), "pt_merge_ipc_handle");
            store.publish(handle_name(rank), own, PT_MERGE_IPC_HANDLE_BYTES);
            published.push_back(handle_name(rank));
            for (int peer = 0; peer < ranks; ++peer) {
                if (peer == rank) continue;
                std::vector<unsigned char> const bytes = store.wait_for(handle_name(peer), PT_MERGE_IPC_HANDLE_BYTES);
                std::copy(bytes.begin(), bytes.end(), handles.begin() + size_t(peer) * PT_MERGE_IPC_HANDLE_BYTES);
            }
            check(pt_merge_connect(ctx, handles.data()), "pt_merge_connect");
        }

        if (rank != 0) {
            unsigned char const empty = 0;
            store.publish(done_name(rank), &empty, 0);
            return ctx;
        }
        for (int peer = 1; peer < ranks; ++peer) store.wait_for(done_name(peer), 0);
        store.remove("id");
        for (int peer = 0; peer < ranks; ++peer) {
            store.remove(handle_name(peer));
            store.remove(done_name(peer));
        }
        return ctx;
    } catch (...) {
        for (std::string const& name : published) store.remove(name);
        pt_merge_destroy(ctx);
        throw;
    }
}

}  // namespace pt_trt
