/* Registers the PTTrackMerge creator with TensorRT's plugin registry, in the namespace "pt_trtllm", when
 * libpt_trtllm_plugins.so is loaded (ctypes.CDLL(path, RTLD_GLOBAL), trtexec --staticPlugins). TensorRT
 * documents this static registration as one of its two ways; the other, exporting getCreators for
 * IPluginRegistry::loadLibrary (trtexec --dynamicPlugins), is not offered: loadLibrary fails when a creator
 * of the library is already registered, which loading it would have just done. */
#include <NvInferRuntime.h>

#include "pt_track_merge_creator.h"
#include "pt_track_merge_plugin.h"
#include "report.h"

namespace pt_trt {
namespace {

struct Registration {
    Registration() {
        static PTTrackMergeCreator creator;
        if (!getPluginRegistry()->registerCreator(creator, kPluginNamespace))
            report_error(nullptr, nvinfer1::ErrorCode::kINVALID_CONFIG,
                         "registerCreator failed: a creator PTTrackMerge version 1 is already registered in the "
                         "namespace pt_trtllm (is libpt_trtllm_plugins.so loaded twice?)");
    }
};

Registration const registration;

}  // namespace
}  // namespace pt_trt
