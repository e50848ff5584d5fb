/* A directory of small files through which the ranks of one job exchange bytes (no MPI in the library).
 * A rank publishes a file atomically (a temporary file renamed into place), the others poll for it.
 * The directory is $PT_TRTLLM_RENDEZVOUS_DIR (default /tmp/pt_trtllm_rendezvous, created mode 0700);
 * a wait gives up after $PT_TRTLLM_RENDEZVOUS_TIMEOUT_S seconds (default 300). Every file name starts
 * with the store's prefix. A FileStore is a value (directory, prefix, timeout): copies name the same files. */
#ifndef PT_TRT_FILE_STORE_H
#define PT_TRT_FILE_STORE_H

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace pt_trt {

class FileStore {
public:
    /* wait_for's `size` for a file of any size. */
    static constexpr size_t kAnySize = SIZE_MAX;

    /* Reads the variables and creates the directory; throws std::runtime_error (one line). */
    explicit FileStore(std::string prefix);

    /* Writes <prefix>.<name> atomically (replacing any file of that name); throws std::runtime_error
     * naming the file. */
    void publish(std::string const& name, unsigned char const* bytes, size_t size) const;
    void publish(std::string const& name, std::string const& text) const;

    /* The bytes of <prefix>.<name> into `out`, or false while it does not exist; throws std::runtime_error
     * naming the file when it exists but cannot be read. */
    bool read(std::string const& name, std::vector<unsigned char>& out) const;

    /* Polls for <prefix>.<name> and returns its bytes, which must be `size` (any size: kAnySize); after
     * each poll that did not find it, calls `between_polls` (if given; what it throws propagates). Throws
     * std::runtime_error naming the file on a timeout ("... has every rank of the job started?") or
     * another size. */
    std::vector<unsigned char> wait_for(std::string const& name, size_t size,
                                        std::function<void()> const& between_polls = {}) const;

    /* Calls `done` at once and then every poll interval until it returns true (then true), or until the
     * timeout has passed (then false). What `done` throws propagates. */
    bool poll_until(std::function<bool()> const& done) const;

    /* Removes <prefix>.<name> if it is there. */
    void remove(std::string const& name) const noexcept;

    /* The path of <prefix>.<name>, for messages. */
    std::string path(std::string const& name) const;

    /* "timed out after <seconds> s (PT_TRTLLM_RENDEZVOUS_TIMEOUT_S)", for messages. */
    std::string timeout_text() const;

private:
    std::string dir_;
    std::string prefix_;
    double timeout_s_;
};

}  // namespace pt_trt

#endif  // PT_TRT_FILE_STORE_H
