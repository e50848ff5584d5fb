/* The rendezvous and teardown of one merge group over a file store (rendezvous.h). */
#include "rendezvous.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace pt_trt {
namespace {

/* Throws the library's message, prefixed with the call unless the message starts with it already. */
void check(pt_merge_status status, char const* call) {
    if (status == PT_MERGE_OK) return;
    std::string const message = pt_merge_last_error(), prefix = std::string(call) + ": ";
    throw std::runtime_error(message.compare(0, prefix.size(), prefix) == 0 ? message : prefix + message);
}

std::string handle_name(int rank) { return "handle." + std::to_string(rank); }
std::string status_name(int rank) { return "connected." + std::to_string(rank); }
std::string closed_name(int rank) { return "closed." + std::to_string(rank); }

/* A failure read from a peer's status: its line, which names the rank that failed, is thrown as it is. */
struct PeerFailure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string one_line(std::string text) {
    std::replace(text.begin(), text.end(), '\n', ' ');
    std::replace(text.begin(), text.end(), '\r', ' ');
    return text.empty() ? "an error without a message" : text;
}

/* One line on stderr: teardown may run while the process exits, when TensorRT's logger may be gone. */
void log_line(std::string const& line) noexcept { std::fprintf(stderr, "PTTrackMerge: %s\n", line.c_str()); }

/* This rank's view of its group's files. */
class Member {
public:
    Member(pt_merge_config const& config, FileStore const& store)
        : store_(store), rank_(config.rank), ranks_(config.num_ranks) {}

    std::string who() const { return "rank " + std::to_string(rank_) + " of " + std::to_string(ranks_); }

    /* Throws a peer's failure line if a peer has published one. */
    void throw_if_a_peer_failed() const {
        std::vector<unsigned char> status;
        for (int peer = 0; peer < ranks_; ++peer)
            if (peer != rank_ && store_.read(status_name(peer), status) && !status.empty())
                throw PeerFailure(std::string(status.begin(), status.end()));
    }

    /* A peer's file, giving up as soon as a peer's status is a failure. */
    std::vector<unsigned char> wait_for(std::string const& name, size_t size) const {
        return store_.wait_for(name, size, [this] { throw_if_a_peer_failed(); });
    }

    /* Waits (one timeout for all) for every peer's closed.<p>; false on a timeout, with `missing` the first
     * file not there. */
    bool wait_all_closed(std::string& missing) const {
        int next = 0;
        std::vector<unsigned char> bytes;
        bool const all = store_.poll_until([&] {
            while (next < ranks_ && (next == rank_ || store_.read(closed_name(next), bytes))) ++next;
            return next == ranks_;
        });
        if (!all) missing = store_.path(closed_name(next));
        return all;
    }

    /* Once every rank has published closed.<p>, no rank reads the id, a handle or a status again. */
    void remove_exchange_files() const noexcept {
        store_.remove("id");
        for (int peer = 0; peer < ranks_; ++peer) {
            store_.remove(handle_name(peer));
            store_.remove(status_name(peer));
        }
    }

private:
    FileStore const& store_;
    int rank_, ranks_;
};

/* A group of one rank: nothing to exchange, no files. */
pt_merge_context* create_alone(pt_merge_config config) {
    std::vector<unsigned char> id(PT_MERGE_UNIQUE_ID_BYTES);
    if (config.transport != PT_MERGE_TRANSPORT_ONESHOT) {
        check(pt_merge_get_unique_id(id.data()), "pt_merge_get_unique_id");
        config.unique_id = id.data();
    }
    pt_merge_context* ctx = nullptr;
    check(pt_merge_create(&config, &ctx), "pt_merge_create");
    try {
        if (config.transport != PT_MERGE_TRANSPORT_NCCL) {
            std::vector<unsigned char> handle(PT_MERGE_IPC_HANDLE_BYTES);
            check(pt_merge_ipc_handle(ctx, handle.data()), "pt_merge_ipc_handle");
            check(pt_merge_connect(ctx, handle.data()), "pt_merge_connect");
        }
    } catch (...) {
        pt_merge_destroy(ctx);
        throw;
    }
    return ctx;
}

/* A failed join (T > 1): tell the peers, close what this rank opened, free this rank's buffer once no peer
 * can map it (else leak it), and throw `line`. `connecting`: pt_merge_connect was called (peers may be open
 * here); `exported`: handle.<rank> was published (this rank's buffer may be open in a peer). */
[[noreturn]] void abandon(pt_merge_config const& config, FileStore const& store, pt_merge_context* ctx,
                          bool connecting, bool exported, std::string const& line) {
    Member const group(config, store);
    try {
        store.publish(status_name(config.rank), line);  // the peers' waits give up on it (replaces an "ok")
    } catch (std::exception const& e) {
        log_line(group.who() + ": cannot publish its failure (" + one_line(e.what()) + "); the peers will time out");
    }
    if (has_peer_buffers(config)) {
        bool closed = true;
        if (connecting && pt_merge_disconnect(ctx) != PT_MERGE_OK) {
            closed = false;
            log_line(group.who() + ": " + one_line(pt_merge_last_error()) +
                     " (after a failed join): not publishing its closed file, so the peers keep their buffers");
        }
        if (closed) {
            try {
                store.publish(closed_name(config.rank), std::string());
            } catch (std::exception const& e) {
                log_line(group.who() + ": " + one_line(e.what()) + " (after a failed join): the peers will time out");
            }
        }
        if (exported) {
            std::string missing;
            bool all_closed = false;
            try {
                all_closed = group.wait_all_closed(missing);
                if (!all_closed) missing = store.timeout_text() + " waiting for " + missing;
            } catch (std::exception const& e) {
                missing = one_line(e.what());
            }
            if (!all_closed) {
                log_line(group.who() + ": " + missing +
                         " after a failed join: this rank's merge buffers are leaked, not freed (a peer may map them)");
                throw std::runtime_error(line);
            }
            group.remove_exchange_files();
        }
    }
    pt_merge_destroy(ctx);
    throw std::runtime_error(line);
}

}  // namespace

bool has_peer_buffers(pt_merge_config const& config) {
    return config.num_ranks > 1 && config.transport != PT_MERGE_TRANSPORT_NCCL;
}

pt_merge_context* join_merge_group(pt_merge_config config, FileStore const& store) {
    if (config.num_ranks == 1) return create_alone(config);
    int const ranks = config.num_ranks, rank = config.rank;
    Member const group(config, store);
    // this rank's files of an earlier job with the same job id: none of this job can be there yet
    store.remove(status_name(rank));
    store.remove(closed_name(rank));
    store.remove(handle_name(rank));

    pt_merge_context* ctx = nullptr;
    bool exported = false, connecting = false;
    std::string failure;
    try {
        std::vector<unsigned char> id(PT_MERGE_UNIQUE_ID_BYTES);
        if (config.transport != PT_MERGE_TRANSPORT_ONESHOT) {
            if (rank == 0) {
                check(pt_merge_get_unique_id(id.data()), "pt_merge_get_unique_id");
                store.publish("id", id.data(), id.size());
            } else {
                id = group.wait_for("id", PT_MERGE_UNIQUE_ID_BYTES);
            }
            config.unique_id = id.data();
        }
        check(pt_merge_create(&config, &ctx), "pt_merge_create");

        if (has_peer_buffers(config)) {
            std::vector<unsigned char> handles(size_t(ranks) * PT_MERGE_IPC_HANDLE_BYTES);
            unsigned char* own = handles.data() + size_t(rank) * PT_MERGE_IPC_HANDLE_BYTES;
            check(pt_merge_ipc_handle(ctx, own), "pt_merge_ipc_handle");
            store.publish(handle_name(rank), own, PT_MERGE_IPC_HANDLE_BYTES);
            exported = true;
            for (int peer = 0; peer < ranks; ++peer) {
                if (peer == rank) continue;
                std::vector<unsigned char> const bytes = group.wait_for(handle_name(peer), PT_MERGE_IPC_HANDLE_BYTES);
                std::copy(bytes.begin(), bytes.end(), handles.begin() + size_t(peer) * PT_MERGE_IPC_HANDLE_BYTES);
            }
            connecting = true;
            check(pt_merge_connect(ctx, handles.data()), "pt_merge_connect");
        }

        // the agreement: every rank's status, so every rank returns or every rank throws
        store.publish(status_name(rank), std::string());
        for (int peer = 0; peer < ranks; ++peer) {
            if (peer == rank) continue;
            std::vector<unsigned char> const status = group.wait_for(status_name(peer), FileStore::kAnySize);
            if (!status.empty()) throw PeerFailure(std::string(status.begin(), status.end()));
        }
    } catch (PeerFailure const& e) {
        failure = e.what();
    } catch (std::exception const& e) {
        failure = group.who() + " failed to join its merge group: " + one_line(e.what());
    } catch (...) {
        failure = group.who() + " failed to join its merge group: an unknown exception";
    }
    if (!failure.empty()) abandon(config, store, ctx, connecting, exported, failure);

    // every rank read the id and all handles before it published its status
    store.remove(handle_name(rank));
    if (rank == 0) store.remove("id");
    return ctx;
}

void leave_merge_group(pt_merge_context* ctx, pt_merge_config const& config, FileStore const& store) noexcept {
    if (!ctx) return;
    if (!has_peer_buffers(config)) {
        pt_merge_destroy(ctx);
        return;
    }
    try {
        Member const group(config, store);
        if (pt_merge_disconnect(ctx) != PT_MERGE_OK) {
            log_line(group.who() + ": " + one_line(pt_merge_last_error()) +
                     " at teardown: not publishing its closed file, so the peers keep their buffers");
        } else {
            try {
                store.publish(closed_name(config.rank), std::string());
            } catch (std::exception const& e) {
                log_line(group.who() + ": " + one_line(e.what()) + " at teardown: the peers will time out");
            }
        }
        std::string missing;
        if (!group.wait_all_closed(missing)) {
            log_line(group.who() + ": " + store.timeout_text() + " waiting for " + missing +
                     " at teardown (has a rank exited, or kept its engine?): this rank's merge buffers are leaked, "
                     "not freed (a peer may still map them)");
            return;
        }
        pt_merge_destroy(ctx);
        group.remove_exchange_files();
    } catch (std::exception const& e) {  // no allocation here: this function must not throw
        std::fprintf(stderr, "PTTrackMerge: teardown of a merge context: %s: its buffers are leaked, not freed\n", e.what());
    } catch (...) {
        std::fputs("PTTrackMerge: teardown of a merge context failed: its buffers are leaked, not freed\n", stderr);
    }
}

}  // namespace pt_trt
