/* The PluginFields of PTTrackMerge: their values with the documented defaults (MergeFields), reading and
 * checking a PluginFieldCollection, the collection that serializes them, and the C API configuration
 * (pt_merge_config) they give once the dtype, H and device are known. */
#ifndef PT_TRT_MERGE_FIELDS_H
#define PT_TRT_MERGE_FIELDS_H

#include <NvInferRuntime.h>

#include <array>

#include "pt_merge.h"

namespace pt_trt {

struct MergeFields {
    int32_t combine_op = PT_MERGE_MEAN;  // pt_merge_combine_op: 0 mean, 1 sum, 2 residual_sum
    int32_t residual_form = 0;           // 1: PT_MERGE_RESIDUAL_FORM
    int32_t num_ranks = 1;               // T
    int32_t rank = 0;
    int32_t has_combine_norm = 0;
    int32_t has_dispatch_norm = 0;
    int32_t has_next_norm = 0;
    float combine_eps = 1e-6f;
    float dispatch_eps = 1e-6f;
    float next_eps = 1e-6f;
    int32_t transport = PT_MERGE_TRANSPORT_AUTO;  // pt_merge_transport: 0 auto, 1 nccl, 2 oneshot
    int32_t max_tokens = 8192;                    // rows one enqueue may merge (sizes the workspace)
    int32_t oneshot_max_bytes = 0;                // 0: PT_MERGE_DEFAULT_ONESHOT_BYTES

    bool reads_x() const { return combine_op == PT_MERGE_RESIDUAL_SUM || residual_form != 0; }
    int32_t nb_inputs() const { return 1 + reads_x() + has_combine_norm + has_dispatch_norm + has_next_norm; }
    int32_t nb_outputs() const { return 1 + has_dispatch_norm + has_next_norm; }
};

constexpr int32_t kNbFields = 13;

/* The fields of `fc` over the defaults; an unknown name, a wrong type or length, or a bad value throws
 * std::invalid_argument with a one-line message naming the field. */
MergeFields read_fields(nvinfer1::PluginFieldCollection const& fc);

/* Every field, its data pointing into `fields` (which must outlive the result's use). */
std::array<nvinfer1::PluginField, kNbFields> plugin_fields(MergeFields const& fields);

/* The C API configuration of this rank's merge context (no unique id yet). */
pt_merge_config merge_config(MergeFields const& fields, pt_merge_dtype dtype, int hidden, int device);

}  // namespace pt_trt

#endif  // PT_TRT_MERGE_FIELDS_H
