/* The PluginFields of PTTrackMerge (merge_fields.h). */
#include "merge_fields.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pt_trt {
namespace {

using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

/* One field: an INT32 member or a FLOAT32 member. */
struct FieldSpec {
    char const* name;
    int32_t MergeFields::*int_member;
    float MergeFields::*float_member;
};

constexpr std::array<FieldSpec, kNbFields> kSpecs{{
    {"combine_op", &MergeFields::combine_op, nullptr},
    {"residual_form", &MergeFields::residual_form, nullptr},
    {"num_ranks", &MergeFields::num_ranks, nullptr},
    {"rank", &MergeFields::rank, nullptr},
    {"has_combine_norm", &MergeFields::has_combine_norm, nullptr},
    {"has_dispatch_norm", &MergeFields::has_dispatch_norm, nullptr},
    {"has_next_norm", &MergeFields::has_next_norm, nullptr},
    {"combine_eps", nullptr, &MergeFields::combine_eps},
    {"dispatch_eps", nullptr, &MergeFields::dispatch_eps},
    {"next_eps", nullptr, &MergeFields::next_eps},
    {"transport", &MergeFields::transport, nullptr},
    {"max_tokens", &MergeFields::max_tokens, nullptr},
    {"oneshot_max_bytes", &MergeFields::oneshot_max_bytes, nullptr},
}};

void require(bool ok, std::string const& message) {
    if (!ok) throw std::invalid_argument(message);
}

void check_flag(char const* name, int32_t value) {
    require(value == 0 || value == 1, std::string(name) + " " + std::to_string(value) + " is not 0 or 1");
}

void check_eps(char const* name, float value) {
    char text[32];
    std::snprintf(text, sizeof text, "%g", double(value));
    require(std::isfinite(value) && value >= 0.0f, std::string(name) + " " + text + " is not a finite number >= 0");
}

void check_values(MergeFields const& f) {
    require(f.combine_op >= PT_MERGE_MEAN && f.combine_op <= PT_MERGE_RESIDUAL_SUM,
            "combine_op " + std::to_string(f.combine_op) + " is not 0 (mean), 1 (sum) or 2 (residual_sum)");
    check_flag("residual_form", f.residual_form);
    check_flag("has_combine_norm", f.has_combine_norm);
    check_flag("has_dispatch_norm", f.has_dispatch_norm);
    check_flag("has_next_norm", f.has_next_norm);
    require(f.num_ranks >= 1, "num_ranks " + std::to_string(f.num_ranks) + " is not >= 1");
    require(f.rank >= 0 && f.rank < f.num_ranks,
            "rank " + std::to_string(f.rank) + " is not in 0.." + std::to_string(f.num_ranks - 1));
    check_eps("combine_eps", f.combine_eps);
    check_eps("dispatch_eps", f.dispatch_eps);
    check_eps("next_eps", f.next_eps);
    require(f.transport >= PT_MERGE_TRANSPORT_AUTO && f.transport <= PT_MERGE_TRANSPORT_ONESHOT,
            "transport " + std::to_string(f.transport) + " is not 0 (auto), 1 (nccl) or 2 (oneshot)");
    require(f.transport != PT_MERGE_TRANSPORT_ONESHOT || f.num_ranks <= PT_MERGE_MAX_RANKS,
            "num_ranks " + std::to_string(f.num_ranks) + " is over " + std::to_string(PT_MERGE_MAX_RANKS) +
                ", the one-shot transport's largest group");
    require(f.max_tokens >= 1, "max_tokens " + std::to_string(f.max_tokens) + " is not >= 1");
    require(f.oneshot_max_bytes >= 0, "oneshot_max_bytes " + std::to_string(f.oneshot_max_bytes) + " is not >= 0");
}

}  // namespace

MergeFields read_fields(nvinfer1::PluginFieldCollection const& fc) {
    MergeFields f;
    for (int32_t i = 0; i < fc.nbFields; ++i) {
        PluginField const& given = fc.fields[i];
        std::string const name = given.name ? given.name : "";
        FieldSpec const* spec = nullptr;
        for (FieldSpec const& s : kSpecs)
            if (name == s.name) spec = &s;
        require(spec != nullptr, "unknown field '" + name + "'");
        PluginFieldType const type = spec->float_member ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32;
        require(given.type == type && given.length == 1 && given.data != nullptr,
                "field '" + name + "' must hold one " + (spec->float_member ? "FLOAT32" : "INT32"));
        if (spec->float_member)
            std::memcpy(&(f.*spec->float_member), given.data, sizeof(float));
        else
            std::memcpy(&(f.*spec->int_member), given.data, sizeof(int32_t));
    }
    check_values(f);
    return f;
}

std::array<PluginField, kNbFields> plugin_fields(MergeFields const& fields) {
    std::array<PluginField, kNbFields> out;
    for (size_t i = 0; i < kSpecs.size(); ++i) {
        FieldSpec const& s = kSpecs[i];
        out[i] = s.float_member ? PluginField(s.name, &(fields.*s.float_member), PluginFieldType::kFLOAT32, 1)
                                : PluginField(s.name, &(fields.*s.int_member), PluginFieldType::kINT32, 1);
    }
    return out;
}

pt_merge_config merge_config(MergeFields const& f, pt_merge_dtype dtype, int hidden, int device) {
    pt_merge_config c{};
    c.rank = f.rank;
    c.num_ranks = f.num_ranks;
    c.device = device;
    c.unique_id = nullptr;
    c.dtype = dtype;
    c.combine_op = static_cast<pt_merge_combine_op>(f.combine_op);
    c.flags = f.residual_form ? PT_MERGE_RESIDUAL_FORM : 0u;
    c.hidden = hidden;
    c.max_tokens = f.max_tokens;
    c.transport = static_cast<pt_merge_transport>(f.transport);
    c.oneshot_max_bytes = static_cast<size_t>(f.oneshot_max_bytes);
    return c;
}

}  // namespace pt_trt
