// CPU unit tests of the merge arithmetic (include/pt_merge_math.h), run by ctest: T simulated ranks each
// run the prologue row driver, their outputs are summed (the all-reduce), the epilogue row driver runs,
// and all three outputs are compared with an independent double-precision reference of pt-spec
// section 3 (combine norm, combine op, dispatch norm, next norm), for every combine op and residual
// form, with and without each norm, T = 1..4, several H, fp32/fp16/bf16. Exit status 0 iff all pass.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "pt_merge_math.h"

using namespace pt_merge;

namespace {

using Row = std::vector<double>;

// ---- The reference, in double, written from the spec and not from the header. ----
Row rmsnorm(const Row& v, const Row& w, double eps) {
    double ms = 0;
    for (double e : v) ms += e * e;
    ms /= v.size();
    Row out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = v[i] / std::sqrt(ms + eps) * w[i];
    return out;
}

enum Op { MEAN, SUM, RESIDUAL_SUM };
const char* op_name(Op op) { return op == MEAN ? "mean" : (op == SUM ? "sum" : "residual_sum"); }

Row combine(Op op, const Row& x, const std::vector<Row>& hs) {
    Row out(x.size(), 0.0);
    for (size_t i = 0; i < x.size(); ++i) {
        for (const Row& h : hs) out[i] += op == RESIDUAL_SUM ? h[i] - x[i] : h[i];
        if (op == MEAN) out[i] /= hs.size();
        if (op == RESIDUAL_SUM) out[i] += x[i];
    }
    return out;
}

// The quantity and epilogue scale that implement `op` (the mapping pt_merge.cu uses, written out).
struct Form {
    Op op;
    Quantity q;
    const char* name;
};
const Form FORMS[] = {{MEAN, PT_Q_H, "mean/h"}, {MEAN, PT_Q_MEAN_RESIDUAL, "mean/(h-x)/T"},
                      {SUM, PT_Q_H, "sum/h"}, {SUM, PT_Q_SUM_RESIDUAL, "sum/h-x/T"},
                      {RESIDUAL_SUM, PT_Q_RESIDUAL, "residual_sum/h-x"}};

template <typename T>
struct DType;
template <>
struct DType<float> {
    static constexpr const char* name = "fp32";
    static constexpr double tol = 2e-5;
};
template <>
struct DType<__half> {
    static constexpr const char* name = "fp16";
    static constexpr double tol = 1e-2;
};
template <>
struct DType<__nv_bfloat16> {
    static constexpr const char* name = "bf16";
    static constexpr double tol = 4e-2;
};

template <typename T>
std::vector<T> to_dtype(const Row& v) {
    std::vector<T> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = from_float<T>((float)v[i]);
    return out;
}

template <typename T>
Row to_row(const std::vector<T>& v) {
    Row out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = to_float(v[i]);
    return out;
}

double rms(const Row& v) {
    double ms = 0;
    for (double e : v) ms += e * e;
    return std::sqrt(ms / v.size());
}

// max |got - ref| relative to max(1, magnitude): the rms of the reference, or for the merged state the
// summed rms of the terms it adds (rounding errors scale with those even where they cancel).
template <typename T>
double error(const std::vector<T>& got, const Row& ref, double magnitude = 0) {
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) worst = std::fmax(worst, std::fabs(to_float(got[i]) - ref[i]));
    if (std::isnan(worst)) return INFINITY;
    return worst / std::fmax(1.0, std::fmax(magnitude, rms(ref)));
}

int checks = 0, failures = 0;

void expect(double err, double tol, const std::string& what) {
    ++checks;
    if (err <= tol) return;
    ++failures;
    if (failures <= 20) std::printf("FAIL %s: error %.3g > tolerance %.3g\n", what.c_str(), err, tol);
}

// One case: T ranks, one row of H, each optional norm on or off.
template <typename T>
void run_case(std::mt19937& rng, const Form& f, int tracks, int hidden, bool cnorm, bool dnorm, bool nnorm,
              double scale_h, double eps) {
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> uniform(0.5, 1.5);
    auto random_row = [&](double s, bool weight) {
        Row r(hidden);
        for (double& e : r) e = weight ? uniform(rng) : s * normal(rng);
        return to_row(to_dtype<T>(r));  // values the dtype can hold: both sides see the same inputs
    };
    Row x = random_row(1.0, false), wc = random_row(0, true), wd = random_row(0, true), wn = random_row(0, true);
    std::vector<Row> hs;
    for (int t = 0; t < tracks; ++t) hs.push_back(random_row(scale_h, false));

    // reference
    std::vector<Row> hcs;
    for (const Row& h : hs) hcs.push_back(cnorm ? rmsnorm(h, wc, eps) : h);
    Row merged_ref = combine(f.op, x, hcs);
    double terms = 0;
    for (const Row& hc : hcs) terms += rms(hc);
    const double magnitude = rms(x) + (f.op == MEAN ? terms / tracks : terms);

    // the header's arithmetic: T prologues, a float sum rounded to the dtype (the all-reduce), the epilogue
    std::vector<T> xd = to_dtype<T>(x), wcd = to_dtype<T>(wc), wdd = to_dtype<T>(wd), wnd = to_dtype<T>(wn);
    const float inv_tracks = 1.0f / tracks;
    std::vector<float> sum(hidden, 0.0f);
    std::vector<T> q(hidden);
    for (const Row& h : hs) {
        std::vector<T> hd = to_dtype<T>(h);
        prologue_row<T>(f.q, hd.data(), xd.data(), cnorm ? wcd.data() : nullptr, (float)eps, inv_tracks, hidden,
                        q.data());
        for (int i = 0; i < hidden; ++i) sum[i] += to_float(q[i]);
    }
    std::vector<T> reduced(hidden), merged(hidden), dispatched(hidden), next(hidden);
    for (int i = 0; i < hidden; ++i) reduced[i] = from_float<T>(sum[i]);
    const float scale = (f.q == PT_Q_H && f.op == MEAN) ? inv_tracks : 1.0f;
    epilogue_row<T>(f.q, reduced.data(), xd.data(), scale, dnorm ? wdd.data() : nullptr, (float)eps,
                    nnorm ? wnd.data() : nullptr, (float)eps, hidden, merged.data(), dispatched.data(), next.data());

    const std::string what = std::string(DType<T>::name) + " " + f.name + " T=" + std::to_string(tracks) +
                             " H=" + std::to_string(hidden) + " combine_norm=" + std::to_string(cnorm) +
                             " dispatch_norm=" + std::to_string(dnorm) + " next_norm=" + std::to_string(nnorm) +
                             " |h|~" + std::to_string(scale_h) + " eps=" + std::to_string(eps);
    // merged end to end (the tolerance is relative to the magnitude of its terms); each norm
    // against the reference norm of the output it reads (a norm of a row that cancelled to near zero
    // amplifies the merge's rounding: that conditioning is the model's, not the kernel's)
    expect(error(merged, merged_ref, magnitude), DType<T>::tol, what + ": merged");
    if (dnorm) expect(error(dispatched, rmsnorm(to_row(merged), wd, eps)), DType<T>::tol, what + ": dispatch_normed");
    if (nnorm)
        expect(error(next, rmsnorm(to_row(dnorm ? dispatched : merged), wn, eps)), DType<T>::tol, what + ": next_normed");
}

template <typename T>
void run_dtype() {
    std::mt19937 rng(1234);
    const int hiddens[] = {1, 7, 64, 576, 4099};
    const double scales[] = {0.05, 1.0, 20.0};
    const double epsilons[] = {1e-6, 0.5};
    for (const Form& f : FORMS)
        for (int tracks = 1; tracks <= 4; ++tracks)
            for (int hidden : hiddens)
                for (int norms = 0; norms < 8; ++norms)
                    for (double s : scales)
                        for (double eps : epsilons)
                            run_case<T>(rng, f, tracks, hidden, norms & 1, norms & 2, norms & 4, s, eps);
}

}  // namespace

int main() {
    run_dtype<float>();
    run_dtype<__half>();
    run_dtype<__nv_bfloat16>();
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
