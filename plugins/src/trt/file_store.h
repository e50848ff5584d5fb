/* A directory of small files through which the ranks of one job exchange bytes (no MPI in the library).
 * A rank publishes a file atomically (a temporary file renamed into place), the others poll for it.
 * The directory is $PT_TRTLLM_RENDEZVOUS_DIR (default /tmp/pt_trtllm_rendezvous, created mode 0700);
 * a wait gives up after $PT_TRTLLM_RENDEZVOUS_TIMEOUT_S seconds (default 300). Every file name starts
 * with the store's prefix. */
#ifndef PT_TRT_FILE_STORE_H
#define PT_TRT_FILE_STORE_H

#include <cstddef>
#include <string>
#include <vector>

namespace pt_trt {

class FileStore {
public:
    /* Reads the variables and creates the directory; throws std::runtime_error (one line). */
    explicit FileStore(std::string prefix);

    /* Writes <prefix>.<name> atomically; throws std::runtime_error naming the file. */
    void publish(std::string const& name, unsigned char const* bytes, size_t size) const;

    /* Polls for <prefix>.<name> and returns its bytes, which must be `size`; throws std::runtime_error naming
     * the file on a timeout or another size. */
    std::vector<unsigned char> wait_for(std::string const& name, size_t size) const;

    /* Removes <prefix>.<name> if it is there. */
    void remove(std::string const& name) const noexcept;

private:
    std::string path(std::string const& name) const;

    std::string dir_;
    std::string prefix_;
    double timeout_s_;
};

}  // namespace pt_trt

#endif  // PT_TRT_FILE_STORE_H
