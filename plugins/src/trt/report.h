/* One-line errors of the TensorRT plugin PTTrackMerge: to the error recorder TensorRT gave the plugin, else
 * to the plugin registry's, else to TensorRT's logger, else to stderr. */
#ifndef PT_TRT_REPORT_H
#define PT_TRT_REPORT_H

#include <NvInferRuntime.h>

#include <string>

namespace pt_trt {

/* Reports "PTTrackMerge: <message>"; `recorder` may be null. Returns 1 (a failing TensorRT status). */
int32_t report_error(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, std::string const& message) noexcept;

}  // namespace pt_trt

#endif  // PT_TRT_REPORT_H
