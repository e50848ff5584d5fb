/* The creator of the TensorRT plugin PTTrackMerge (pt_track_merge_creator.h). */
#include "pt_track_merge_creator.h"

#include <exception>
#include <string>

#include "merge_fields.h"
#include "pt_track_merge_plugin.h"
#include "report.h"

namespace pt_trt {

nvinfer1::IPluginV3* PTTrackMergeCreator::createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                                       nvinfer1::TensorRTPhase phase) noexcept {
    try {
        MergeFields const fields = read_fields(fc ? *fc : nvinfer1::PluginFieldCollection{});
        return new PTTrackMergePlugin(fields, phase);
    } catch (std::exception const& e) {
        report_error(nullptr, nvinfer1::ErrorCode::kINVALID_ARGUMENT,
                     "layer '" + std::string(name ? name : "") + "': " + e.what());
        return nullptr;
    }
}

nvinfer1::PluginFieldCollection const* PTTrackMergeCreator::getFieldNames() noexcept {
    static MergeFields const defaults;
    static auto const fields = plugin_fields(defaults);
    static nvinfer1::PluginFieldCollection const collection{kNbFields, fields.data()};
    return &collection;
}

char const* PTTrackMergeCreator::getPluginName() const noexcept { return kPluginName; }
char const* PTTrackMergeCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* PTTrackMergeCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }

}  // namespace pt_trt
