/* The arithmetic of one PT track merge (docs/pt-spec.md section 3), written once as __host__ __device__
 * functions: the CUDA kernels (src/merge_kernels.cu) call them per element, and the CPU unit tests
 * (tests/test_merge_math.cpp) run the same functions through the row drivers at the bottom.
 *
 * One merge, for one token row of H elements on the rank that holds track t:
 *
 *   prologue   hc = combine_norm ? RMSNorm(h, w_combine) : h          (rounded to the dtype, like torch)
 *              q  = the quantity to reduce, by pt_quantity:
 *                   PT_Q_H                 q = hc
 *                   PT_Q_RESIDUAL          q = hc - x
 *                   PT_Q_MEAN_RESIDUAL     q = (hc - x) / T
 *                   PT_Q_SUM_RESIDUAL      q = hc - x / T
 *              (computed in float32 from the dtype values, rounded once to the dtype)
 *   transport  r = sum over the T ranks of q                        (the one all-reduce)
 *   epilogue   out0 merged = r * scale   for PT_Q_H (scale 1/T for mean, 1 for sum or when the
 *                                         transport already averaged)
 *                          = x + r       for the three residual forms
 *                 x + sum_t(h_t - x)       = residual_sum
 *                 x + sum_t((h_t - x) / T) = mean_t(h_t)
 *                 x + sum_t(h_t - x / T)   = sum_t(h_t)
 *              out1 dispatch-normed = RMSNorm(out0, w_dispatch)   when a per-track dispatch norm follows
 *                                     (the track's residual stream for the next block)
 *              out2 next-normed     = RMSNorm(out1 if present else out0, w_next)   when asked
 *                                     (the next layer's input norm, or the final norm)
 *              Each output is rounded to the dtype before the next norm reads it, as torch would.
 *
 * RMSNorm(v, w) = v / sqrt(mean(v^2) + eps) * w, in float32 (pt-spec section 3); the weight w has the
 * activation dtype.
 */
#ifndef PT_MERGE_MATH_H
#define PT_MERGE_MATH_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifdef __CUDACC__
#define PT_HD __host__ __device__ __forceinline__
#else
#define PT_HD inline
#endif

namespace pt_merge {

/* The quantity each rank reduces (see the header comment). */
enum Quantity { PT_Q_H = 0, PT_Q_RESIDUAL = 1, PT_Q_MEAN_RESIDUAL = 2, PT_Q_SUM_RESIDUAL = 3 };

PT_HD bool is_residual(Quantity q) { return q != PT_Q_H; }

/* float <-> storage dtype (round to nearest even for fp16/bf16). */
PT_HD float to_float(float v) { return v; }
PT_HD float to_float(__half v) { return __half2float(v); }
PT_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> PT_HD T from_float(float v);
template <> PT_HD float from_float<float>(float v) { return v; }
template <> PT_HD __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> PT_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
/* v as the dtype would hold it. */
template <typename T> PT_HD float round_to(float v) { return to_float(from_float<T>(v)); }

/* 1 / sqrt(mean(v^2) + eps) of a row whose squares sum to `sum_sq`. */
PT_HD float rms_inv(float sum_sq, int hidden, float eps) {
#ifdef __CUDA_ARCH__
    return rsqrtf(sum_sq / hidden + eps);
#else
    return 1.0f / sqrtf(sum_sq / hidden + eps);
#endif
}

/* One element of RMSNorm(v, w), given the row's rms_inv. */
PT_HD float norm_element(float v, float inv_rms, float w) { return v * inv_rms * w; }

/* One element of the reduced quantity from the (combine-normed) track output hc and the input x. */
PT_HD float prologue_element(Quantity q, float hc, float x, float inv_tracks) {
    switch (q) {
    case PT_Q_RESIDUAL: return hc - x;
    case PT_Q_MEAN_RESIDUAL: return (hc - x) * inv_tracks;
    case PT_Q_SUM_RESIDUAL: return hc - x * inv_tracks;
    default: return hc;
    }
}

/* One element of the merged state from the reduced value r and the input x. */
PT_HD float epilogue_element(Quantity q, float r, float x, float scale) {
    return is_residual(q) ? x + r : r * scale;
}

/* ---- Row drivers: the whole-row order of the kernels, sequential (the CPU tests run these). ---- */

/* q[i] for one row: optional combine norm (w_combine null: none), then the quantity. */
template <typename T>
inline void prologue_row(Quantity q, const T* h, const T* x, const T* w_combine, float eps,
                         float inv_tracks, int hidden, T* out) {
    float inv_rms = 1.0f;
    if (w_combine) {
        float sum_sq = 0.0f;
        for (int i = 0; i < hidden; ++i) sum_sq += to_float(h[i]) * to_float(h[i]);
        inv_rms = rms_inv(sum_sq, hidden, eps);
    }
    for (int i = 0; i < hidden; ++i) {
        float hc = to_float(h[i]);
        if (w_combine) hc = round_to<T>(norm_element(hc, inv_rms, to_float(w_combine[i])));
        float xi = is_residual(q) ? to_float(x[i]) : 0.0f;
        out[i] = from_float<T>(prologue_element(q, hc, xi, inv_tracks));
    }
}

/* RMSNorm of one row of the dtype (the epilogue's norms). */
template <typename T>
inline void norm_row(const T* v, const T* w, float eps, int hidden, T* out) {
    float sum_sq = 0.0f;
    for (int i = 0; i < hidden; ++i) sum_sq += to_float(v[i]) * to_float(v[i]);
    float inv_rms = rms_inv(sum_sq, hidden, eps);
    for (int i = 0; i < hidden; ++i) out[i] = from_float<T>(norm_element(to_float(v[i]), inv_rms, to_float(w[i])));
}

/* The epilogue of one row: merged (out0), then the dispatch norm (out1, when w_dispatch), then the
 * next norm of out1-or-out0 (out2, when w_next). */
template <typename T>
inline void epilogue_row(Quantity q, const T* reduced, const T* x, float scale, const T* w_dispatch,
                         float dispatch_eps, const T* w_next, float next_eps, int hidden, T* merged,
                         T* dispatch_normed, T* next_normed) {
    for (int i = 0; i < hidden; ++i) {
        float xi = is_residual(q) ? to_float(x[i]) : 0.0f;
        merged[i] = from_float<T>(epilogue_element(q, to_float(reduced[i]), xi, scale));
    }
    const T* last = merged;
    if (w_dispatch) {
        norm_row(merged, w_dispatch, dispatch_eps, hidden, dispatch_normed);
        last = dispatch_normed;
    }
    if (w_next) norm_row(last, w_next, next_eps, hidden, next_normed);
}

}  // namespace pt_merge

#endif  // PT_MERGE_MATH_H
