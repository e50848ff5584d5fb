/* The process-wide registry of merge contexts (shared_context.h). The rendezvous files of a context are
 * named <job>.<group>.g<n>: the job id (job_id.h, made safe for a file name and tagged with its hash), the
 * configuration the ranks of the group share (not rank or device), and n, how many rendezvous of that group
 * this process attempted before, failed ones included (every rank counts the same, as a failure is agreed
 * by the whole group, so a context created again meets the peers' new one, never the files an earlier one
 * left). A group of one rank needs no job id (and writes no file). */
#include "shared_context.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "file_store.h"
#include "job_id.h"
#include "rendezvous.h"

namespace pt_trt {
namespace {

char const* dtype_name(pt_merge_dtype dtype) {
    return dtype == PT_MERGE_FP32 ? "fp32" : (dtype == PT_MERGE_FP16 ? "fp16" : "bf16");
}

/* What every rank of the group has in common. */
std::string group_key(pt_merge_config const& c) {
    return "T" + std::to_string(c.num_ranks) + "-" + dtype_name(c.dtype) + "-H" + std::to_string(c.hidden) + "-op" +
           std::to_string(c.combine_op) + "-rf" + std::to_string(c.flags & PT_MERGE_RESIDUAL_FORM) + "-tr" +
           std::to_string(c.transport) + "-mt" + std::to_string(c.max_tokens) + "-ob" +
           std::to_string(c.oneshot_max_bytes);
}

/* The job id as a file-name part: its safe characters (at most 48), then a hash of all of it. */
std::string job_part(std::string const& id) {
    std::string safe;
    uint64_t hash = 1469598103934665603ull;  // FNV-1a
    for (char c : id) {
        unsigned char const ch = static_cast<unsigned char>(c);
        hash = (hash ^ ch) * 1099511628211ull;
        bool const plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (safe.size() < 48) safe += plain ? char(ch) : '_';
    }
    char tag[17];
    std::snprintf(tag, sizeof tag, "%016llx", static_cast<unsigned long long>(hash));
    return safe + "-" + tag;
}

}  // namespace

SharedContext::SharedContext(pt_merge_config const& config, FileStore store)
    : config_(config), store_(std::move(store)), ctx_(join_merge_group(config, store_)) {}

SharedContext::~SharedContext() { leave_merge_group(ctx_, config_, store_); }

std::shared_ptr<SharedContext> acquire_shared_context(pt_merge_config const& config) {
    static std::mutex mutex;
    static std::map<std::string, std::weak_ptr<SharedContext>> live;  // by group, rank and device
    static std::map<std::string, int> created;                         // by group
    std::lock_guard<std::mutex> lock(mutex);

    std::string const group = group_key(config);
    std::string const key = group + "-r" + std::to_string(config.rank) + "-dev" + std::to_string(config.device);
    if (std::shared_ptr<SharedContext> held = live[key].lock()) return held;

    std::string const job = config.num_ranks > 1 ? job_part(job_id()) : "pid" + std::to_string(getpid());
    FileStore store(job + "." + group + ".g" + std::to_string(created[group]));
    ++created[group];  // a failed rendezvous leaves files: the next one of this group uses new names
    auto made = std::make_shared<SharedContext>(config, std::move(store));
    live[key] = made;
    return made;
}

}  // namespace pt_trt
