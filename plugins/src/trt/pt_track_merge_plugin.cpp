/* The TensorRT plugin PTTrackMerge (pt_track_merge_plugin.h). */
#include "pt_track_merge_plugin.h"

#include <cuda_runtime_api.h>

#include <climits>
#include <stdexcept>
#include <vector>

#include "report.h"

namespace pt_trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ErrorCode;

bool fits(int64_t a, int64_t b) { return a == b || a < 0 || b < 0; }

std::string text(Dims const& d) {
    std::string out = "[";
    for (int32_t i = 0; i < d.nbDims; ++i) out += (i ? ", " : "") + std::to_string(d.d[i]);
    return out + "]";
}

template <typename Desc, typename DimsOf>
std::vector<Dims> dims_of(Desc const* descs, int32_t count, DimsOf dims) {
    std::vector<Dims> out;
    for (int32_t i = 0; i < count; ++i) out.push_back(dims(descs[i]));
    return out;
}

/* The token rows of h: the product of its leading dims. */
int64_t rows_of(Dims const& h) {
    int64_t rows = 1;
    for (int32_t i = 0; i + 1 < h.nbDims; ++i) rows *= h.d[i];
    return rows;
}

pt_merge_dtype merge_dtype(DataType type) {
    return type == DataType::kFLOAT ? PT_MERGE_FP32 : (type == DataType::kHALF ? PT_MERGE_FP16 : PT_MERGE_BF16);
}

}  // namespace

nvinfer1::IPluginCapability* PTTrackMergePlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
    switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* PTTrackMergePlugin::clone() noexcept {
    try {
        return new PTTrackMergePlugin(*this);
    } catch (...) {
        return nullptr;
    }
}

int32_t PTTrackMergePlugin::fail(ErrorCode code, std::string const& message) const noexcept {
    return report_error(recorder_, code, message);
}

std::vector<std::string> PTTrackMergePlugin::input_names() const {
    std::vector<std::string> names{"h"};
    if (fields_.reads_x()) names.push_back("x");
    if (fields_.has_combine_norm) names.push_back("combine_w");
    if (fields_.has_dispatch_norm) names.push_back("dispatch_w");
    if (fields_.has_next_norm) names.push_back("next_w");
    return names;
}

std::string PTTrackMergePlugin::count_problem(int32_t nbInputs, int32_t nbOutputs) const {
    if (nbInputs == fields_.nb_inputs() && nbOutputs == fields_.nb_outputs()) return "";
    std::string list;
    for (std::string const& name : input_names()) list += (list.empty() ? "" : ", ") + name;
    return "expects " + std::to_string(fields_.nb_inputs()) + " inputs (" + list + ") and " +
           std::to_string(fields_.nb_outputs()) + " outputs, not " + std::to_string(nbInputs) + " and " +
           std::to_string(nbOutputs);
}

std::string PTTrackMergePlugin::shape_problem(Dims const* inputs, int32_t nbInputs, int32_t nbOutputs) const {
    std::string const counts = count_problem(nbInputs, nbOutputs);
    if (!counts.empty()) return counts;
    std::vector<std::string> const names = input_names();
    Dims const& h = inputs[0];
    if (h.nbDims < 1) return "h has no dimensions: it must be [..., H]";
    int64_t const hidden = h.d[h.nbDims - 1];
    for (size_t i = 1; i < names.size(); ++i) {
        Dims const& d = inputs[i];
        if (names[i] == "x") {
            bool same = d.nbDims == h.nbDims;
            for (int32_t k = 0; same && k < h.nbDims; ++k) same = fits(d.d[k], h.d[k]);
            if (!same) return "x " + text(d) + " is not the shape of h " + text(h);
        } else if (d.nbDims != 1 || !fits(d.d[0], hidden)) {
            return names[i] + " " + text(d) + " is not [H] = [" + std::to_string(hidden) + "]";
        }
    }
    return "";
}

int32_t PTTrackMergePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                            nvinfer1::DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept {
    try {
        std::vector<Dims> const dims = dims_of(in, nbInputs, [](auto const& t) { return t.desc.dims; });
        std::string const problem = shape_problem(dims.data(), nbInputs, nbOutputs);
        if (!problem.empty()) return fail(ErrorCode::kINVALID_ARGUMENT, problem);
        int64_t const most_rows = rows_of(in[0].max);
        if (most_rows > fields_.max_tokens)
            return fail(ErrorCode::kINVALID_ARGUMENT, "the profile's largest h " + text(in[0].max) + " has " +
                                                          std::to_string(most_rows) + " rows, over max_tokens " +
                                                          std::to_string(fields_.max_tokens));
        return 0;
    } catch (std::exception const& e) {
        return fail(ErrorCode::kINTERNAL_ERROR, e.what());
    }
}

int32_t PTTrackMergePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept {
    try {
        std::string const problem = count_problem(nbInputs, nbOutputs);
        if (!problem.empty()) return fail(ErrorCode::kINVALID_ARGUMENT, problem);
        for (int32_t i = 0; i < nbOutputs; ++i) outputTypes[i] = inputTypes[0];
        return 0;
    } catch (std::exception const& e) {
        return fail(ErrorCode::kINTERNAL_ERROR, e.what());
    }
}

int32_t PTTrackMergePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                            nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs,
                                            int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept {
    try {
        std::string const problem = count_problem(nbInputs, nbOutputs);
        if (!problem.empty()) return fail(ErrorCode::kINVALID_ARGUMENT, problem);
        for (int32_t i = 0; i < nbOutputs; ++i) outputs[i] = inputs[0];
        return 0;
    } catch (std::exception const& e) {
        return fail(ErrorCode::kINTERNAL_ERROR, e.what());
    }
}

bool PTTrackMergePlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
    nvinfer1::PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
    if (pos > 0) return d.type == inOut[0].desc.type;
    return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
}

void PTTrackMergePlugin::take_context(DataType type, int64_t hidden) {
    if (hidden < 1 || hidden > INT_MAX) throw std::runtime_error("H " + std::to_string(hidden) + " is not in 1..INT_MAX");
    int device = 0;
    cudaError_t const e = cudaGetDevice(&device);
    if (e != cudaSuccess) throw std::runtime_error(std::string("cudaGetDevice: ") + cudaGetErrorString(e));
    pt_merge_dtype const dtype = merge_dtype(type);
    if (context_) {
        pt_merge_config const& held = context_->config();
        if (held.dtype == dtype && held.hidden == hidden && held.device == device) return;
        context_.reset();
    }
    context_ = acquire_shared_context(merge_config(fields_, dtype, static_cast<int>(hidden), device));
}

int32_t PTTrackMergePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                          nvinfer1::PluginTensorDesc const*, int32_t nbOutputs) noexcept {
    try {
        std::vector<Dims> const dims = dims_of(in, nbInputs, [](auto const& t) { return t.dims; });
        std::string const problem = shape_problem(dims.data(), nbInputs, nbOutputs);
        if (!problem.empty()) return fail(ErrorCode::kINVALID_ARGUMENT, problem);
        if (phase_ == nvinfer1::TensorRTPhase::kRUNTIME) take_context(in[0].type, dims[0].d[dims[0].nbDims - 1]);
        return 0;
    } catch (std::exception const& e) {
        return fail(ErrorCode::kFAILED_INITIALIZATION, e.what());
    }
}

int32_t PTTrackMergePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const*,
                                    void const* const* inputs, void* const* outputs, void*,
                                    cudaStream_t stream) noexcept {
    if (phase_ == nvinfer1::TensorRTPhase::kBUILD) return 0;  // the builder's timing: no collective
    if (!context_) return fail(ErrorCode::kFAILED_EXECUTION, "enqueue without a merge context (onShapeChange failed)");
    int64_t const rows = rows_of(inputDesc[0].dims);
    if (rows == 0) return 0;
    if (rows > fields_.max_tokens)
        return fail(ErrorCode::kFAILED_EXECUTION, std::to_string(rows) + " rows exceed max_tokens " +
                                                      std::to_string(fields_.max_tokens) +
                                                      " (the field that sizes the workspace; rebuild with a larger one)");
    int32_t next = 1;
    void const* x = fields_.reads_x() ? inputs[next++] : nullptr;
    pt_merge_norms norms{};
    norms.combine_weight = fields_.has_combine_norm ? inputs[next++] : nullptr;
    norms.combine_eps = fields_.combine_eps;
    norms.dispatch_weight = fields_.has_dispatch_norm ? inputs[next++] : nullptr;
    norms.dispatch_eps = fields_.dispatch_eps;
    norms.next_weight = fields_.has_next_norm ? inputs[next++] : nullptr;
    norms.next_eps = fields_.next_eps;
    pt_merge_outputs out{};
    out.merged = outputs[0];
    out.dispatch_normed = fields_.has_dispatch_norm ? outputs[1] : nullptr;
    out.next_normed = fields_.has_next_norm ? outputs[1 + fields_.has_dispatch_norm] : nullptr;
    if (pt_merge_run(context_->get(), inputs[0], x, static_cast<int>(rows), &norms, &out, stream) != PT_MERGE_OK)
        return fail(ErrorCode::kFAILED_EXECUTION, std::string("pt_merge_run: ") + pt_merge_last_error());
    return 0;
}

nvinfer1::IPluginV3* PTTrackMergePlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept {
    try {
        auto attached = std::make_unique<PTTrackMergePlugin>(*this);
        attached->recorder_ = context ? context->getErrorRecorder() : nullptr;
        return attached.release();
    } catch (...) {
        return nullptr;
    }
}

nvinfer1::PluginFieldCollection const* PTTrackMergePlugin::getFieldsToSerialize() noexcept {
    serialized_ = plugin_fields(fields_);
    collection_.nbFields = kNbFields;
    collection_.fields = serialized_.data();
    return &collection_;
}

}  // namespace pt_trt
