/* The TensorRT plugin PTTrackMerge (IPluginV3 with the IPluginV3One core, build and runtime capabilities):
 * one PT track merge (include/pt_merge.h) per layer.
 *   inputs   h [..., H] (rows = the product of the leading dims), x [same shape] iff combine_op is
 *            residual_sum or residual_form is set, then combine_w, dispatch_w, next_w [H] iff their
 *            has_*_norm field is set; all of one dtype (kFLOAT, kHALF or kBF16), linear format;
 *   outputs  merged, then dispatch_normed iff has_dispatch_norm, then next_normed iff has_next_norm
 *            (each the shape and dtype of h).
 * A plugin created for the runtime phase takes its process's shared merge context (shared_context.h) in
 * onShapeChange, the first call that knows the dtype and H; one created for the build phase never
 * communicates (its enqueue, which only the builder's timing runs, does nothing). */
#ifndef PT_TRT_PT_TRACK_MERGE_PLUGIN_H
#define PT_TRT_PT_TRACK_MERGE_PLUGIN_H

#include <NvInferRuntime.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "merge_fields.h"
#include "shared_context.h"

namespace pt_trt {

constexpr char const* kPluginName = "PTTrackMerge";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "pt_trtllm";

class PTTrackMergePlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime {
public:
    PTTrackMergePlugin(MergeFields const& fields, nvinfer1::TensorRTPhase phase) : fields_(fields), phase_(phase) {}

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override { return fields_.nb_outputs(); }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                    void const* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t fail(nvinfer1::ErrorCode code, std::string const& message) const noexcept;
    std::vector<std::string> input_names() const;
    /* "" when TensorRT's input and output counts are the ones the fields give, else what is wrong. */
    std::string count_problem(int32_t nbInputs, int32_t nbOutputs) const;
    /* "" when the input dims and counts fit the fields (-1, unknown at build time, fits any extent). */
    std::string shape_problem(nvinfer1::Dims const* inputs, int32_t nbInputs, int32_t nbOutputs) const;
    /* Holds the shared context for this dtype and H on the current device (runtime phase). */
    void take_context(nvinfer1::DataType type, int64_t hidden);

    MergeFields fields_;
    nvinfer1::TensorRTPhase phase_;
    nvinfer1::IErrorRecorder* recorder_ = nullptr;  // the execution context's, once attached
    std::shared_ptr<SharedContext> context_;
    std::array<nvinfer1::PluginField, kNbFields> serialized_{};  // getFieldsToSerialize's storage
    nvinfer1::PluginFieldCollection collection_{};
};

}  // namespace pt_trt

#endif  // PT_TRT_PT_TRACK_MERGE_PLUGIN_H
