/* The rendezvous file store (file_store.h). */
#include "file_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace pt_trt {
namespace {

constexpr char const* kDirVariable = "PT_TRTLLM_RENDEZVOUS_DIR";
constexpr char const* kTimeoutVariable = "PT_TRTLLM_RENDEZVOUS_TIMEOUT_S";
constexpr auto kPollInterval = std::chrono::milliseconds(10);

std::runtime_error system_error(std::string const& what, std::string const& path) {
    return std::runtime_error(what + " " + path + ": " + std::strerror(errno));
}

std::string seconds_text(double seconds) {
    char text[32];
    std::snprintf(text, sizeof text, "%g s", seconds);
    return text;
}

double timeout_seconds() {
    char const* text = std::getenv(kTimeoutVariable);
    if (!text || !*text) return 300.0;
    char* end = nullptr;
    double const seconds = std::strtod(text, &end);
    if (*end != '\0' || !std::isfinite(seconds) || seconds <= 0.0)
        throw std::runtime_error(std::string(kTimeoutVariable) + "='" + text + "' is not a number of seconds > 0");
    return seconds;
}

}  // namespace

FileStore::FileStore(std::string prefix) : prefix_(std::move(prefix)), timeout_s_(timeout_seconds()) {
    char const* dir = std::getenv(kDirVariable);
    dir_ = dir && *dir ? dir : "/tmp/pt_trtllm_rendezvous";
    if (mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST)
        throw system_error(std::string("cannot create the rendezvous directory (") + kDirVariable + ")", dir_);
}

std::string FileStore::path(std::string const& name) const { return dir_ + "/" + prefix_ + "." + name; }

std::string FileStore::timeout_text() const {
    return "timed out after " + seconds_text(timeout_s_) + " (" + kTimeoutVariable + ")";
}

void FileStore::publish(std::string const& name, std::string const& text) const {
    publish(name, reinterpret_cast<unsigned char const*>(text.data()), text.size());
}

void FileStore::publish(std::string const& name, unsigned char const* bytes, size_t size) const {
    std::string const final_path = path(name);
    std::string const temporary = final_path + ".tmp" + std::to_string(getpid());
    std::FILE* file = std::fopen(temporary.c_str(), "wb");
    if (!file) throw system_error("cannot create", temporary);
    bool const written = std::fwrite(bytes, 1, size, file) == size;
    if (std::fclose(file) != 0 || !written) {
        std::remove(temporary.c_str());
        throw system_error("cannot write", temporary);
    }
    if (std::rename(temporary.c_str(), final_path.c_str()) != 0) {
        std::remove(temporary.c_str());
        throw system_error("cannot rename into place", final_path);
    }
}

bool FileStore::read(std::string const& name, std::vector<unsigned char>& out) const {
    std::string const file_path = path(name);
    std::FILE* file = std::fopen(file_path.c_str(), "rb");
    if (!file) {
        if (errno == ENOENT) return false;
        throw system_error("cannot open", file_path);
    }
    out.clear();
    unsigned char buffer[4096];
    size_t got;
    while ((got = std::fread(buffer, 1, sizeof buffer, file)) > 0) out.insert(out.end(), buffer, buffer + got);
    bool const failed = std::ferror(file) != 0;
    std::fclose(file);
    if (failed) throw system_error("cannot read", file_path);
    return true;
}

bool FileStore::poll_until(std::function<bool()> const& done) const {
    auto const deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(kPollInterval);
    }
    return true;
}

std::vector<unsigned char> FileStore::wait_for(std::string const& name, size_t size,
                                               std::function<void()> const& between_polls) const {
    std::vector<unsigned char> bytes;
    bool const found = poll_until([&] {
        if (read(name, bytes)) return true;
        if (between_polls) between_polls();
        return false;
    });
    if (!found)
        throw std::runtime_error(timeout_text() + " waiting for " + path(name) + ": has every rank of the job started?");
    if (size != kAnySize && bytes.size() != size)
        throw std::runtime_error(path(name) + " holds " + std::to_string(bytes.size()) + " bytes, not " +
                                 std::to_string(size) + " (a file of another run? remove it)");
    return bytes;
}

void FileStore::remove(std::string const& name) const noexcept { std::remove(path(name).c_str()); }

}  // namespace pt_trt
