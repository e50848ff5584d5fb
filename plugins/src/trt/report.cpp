/* One-line errors of the TensorRT plugin PTTrackMerge (report.h). */
#include "report.h"

#include <cstdio>

namespace pt_trt {

int32_t report_error(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, std::string const& message) noexcept {
    try {
        std::string const line = "PTTrackMerge: " + message;
        if (!recorder) recorder = getPluginRegistry()->getErrorRecorder();
        if (recorder) {
            recorder->reportError(code, line.c_str());
        } else if (nvinfer1::ILogger* logger = getLogger()) {
            logger->log(nvinfer1::ILogger::Severity::kERROR, line.c_str());
        } else {
            std::fprintf(stderr, "%s\n", line.c_str());
        }
    } catch (...) {  // no memory for the message: say so without one
        std::fputs("PTTrackMerge: an error (no memory to describe it)\n", stderr);
    }
    return 1;
}

}  // namespace pt_trt
