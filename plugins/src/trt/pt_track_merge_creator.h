/* The creator of the TensorRT plugin PTTrackMerge (IPluginCreatorV3One; name "PTTrackMerge", version "1",
 * namespace "pt_trtllm"): the same fields build a plugin for either phase (TensorRT passes the serialized
 * ones back for kRUNTIME); bad fields are refused with a one-line error and nullptr. */
#ifndef PT_TRT_PT_TRACK_MERGE_CREATOR_H
#define PT_TRT_PT_TRACK_MERGE_CREATOR_H

#include <NvInferRuntime.h>

namespace pt_trt {

class PTTrackMergeCreator : public nvinfer1::IPluginCreatorV3One {
public:
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
};

}  // namespace pt_trt

#endif  // PT_TRT_PT_TRACK_MERGE_CREATOR_H
