/* The merge's prologue and epilogue kernels: one thread block per token row, 16-byte vector loads when
 * H and every pointer allow (else one element at a time), float32 row sums for the RMSNorms; the
 * per-element arithmetic is include/pt_merge_math.h. */
#include <cstdint>
#include <cuda/atomic>

#include "merge_kernels.h"

namespace pt_merge {
namespace {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
    T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load(const void* base, size_t row, int hidden, int i) {
    return reinterpret_cast<const Vec<T, N>*>(static_cast<const T*>(base) + row * hidden)[i];
}

template <typename T, int N>
__device__ __forceinline__ void store(void* base, size_t row, int hidden, int i, const Vec<T, N>& v) {
    reinterpret_cast<Vec<T, N>*>(static_cast<T*>(base) + row * hidden)[i] = v;
}

/* The sum of v over the block (blockDim.x a multiple of 32), returned to every thread. */
__device__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // warp_sums may still be read by a previous call
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    float t = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

/* The buffer of a one-shot merge: base + (epoch & 1) * stride. */
__device__ __forceinline__ const void* parity_buffer(const void* base, unsigned epoch, size_t stride) {
    return static_cast<const char*>(base) + (epoch & 1u) * stride;
}

template <typename T, int N>
__global__ void prologue_kernel(PrologueArgs a) {
    const size_t row = blockIdx.x;
    void* const dst = a.epoch ? const_cast<void*>(parity_buffer(a.out, *a.epoch + 1u, a.parity_stride)) : a.out;
    const int nvec = a.hidden / N;
    const bool residual = is_residual(a.q);
    float inv_rms = 1.0f;
    if (a.w_combine) {
        float sum_sq = 0.0f;
        for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
            Vec<T, N> hv = load<T, N>(a.h, row, a.hidden, i);
#pragma unroll
            for (int j = 0; j < N; ++j) sum_sq += to_float(hv.v[j]) * to_float(hv.v[j]);
        }
        inv_rms = rms_inv(block_sum(sum_sq), a.hidden, a.eps);
    }
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        Vec<T, N> hv = load<T, N>(a.h, row, a.hidden, i), xv, wv, out;
        if (residual) xv = load<T, N>(a.x, row, a.hidden, i);
        if (a.w_combine) wv = load<T, N>(a.w_combine, 0, 0, i);
#pragma unroll
        for (int j = 0; j < N; ++j) {
            float hc = to_float(hv.v[j]);
            if (a.w_combine) hc = round_to<T>(norm_element(hc, inv_rms, to_float(wv.v[j])));
            float xi = residual ? to_float(xv.v[j]) : 0.0f;
            out.v[j] = from_float<T>(prologue_element(a.q, hc, xi, a.inv_tracks));
        }
        store<T, N>(dst, row, a.hidden, i, out);
    }
}

/* dst = RMSNorm(src, w) of one row, src written earlier by this same thread (same indices). */
template <typename T, int N>
__device__ void norm_pass(const void* src, const void* w, float eps, void* dst, size_t row, int hidden) {
    const int nvec = hidden / N;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        Vec<T, N> v = load<T, N>(src, row, hidden, i);
#pragma unroll
        for (int j = 0; j < N; ++j) sum_sq += to_float(v.v[j]) * to_float(v.v[j]);
    }
    const float inv_rms = rms_inv(block_sum(sum_sq), hidden, eps);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        Vec<T, N> v = load<T, N>(src, row, hidden, i), wv = load<T, N>(w, 0, 0, i), out;
#pragma unroll
        for (int j = 0; j < N; ++j) out.v[j] = from_float<T>(norm_element(to_float(v.v[j]), inv_rms, to_float(wv.v[j])));
        store<T, N>(dst, row, hidden, i, out);
    }
}

/* The reduced quantity at vector i of a row: read (NCCL reduced it in place), or the one-shot sum of
 * every rank's buffer, in rank order in float32, rounded to the dtype as an all-reduce output is. */
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> reduced_at(const EpilogueArgs& a, unsigned epoch, size_t row, int i) {
    if (a.num_peers == 0) return load<T, N>(a.reduced, row, a.hidden, i);
    float acc[N] = {};
    for (int p = 0; p < a.num_peers; ++p) {
        Vec<T, N> v = load<T, N>(parity_buffer(a.peers[p], epoch, a.parity_stride), row, a.hidden, i);
#pragma unroll
        for (int j = 0; j < N; ++j) acc[j] += to_float(v.v[j]);
    }
    Vec<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.v[j] = from_float<T>(acc[j]);
    return out;
}

template <typename T, int N>
__global__ void epilogue_kernel(EpilogueArgs a) {
    const size_t row = blockIdx.x;
    const int nvec = a.hidden / N;
    const bool residual = is_residual(a.q);
    const unsigned epoch = a.epoch ? *a.epoch : 0u;
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        Vec<T, N> rv = reduced_at<T, N>(a, epoch, row, i), xv, out;
        if (residual) xv = load<T, N>(a.x, row, a.hidden, i);
#pragma unroll
        for (int j = 0; j < N; ++j) {
            float xi = residual ? to_float(xv.v[j]) : 0.0f;
            out.v[j] = from_float<T>(epilogue_element(a.q, to_float(rv.v[j]), xi, a.scale));
        }
        store<T, N>(a.merged, row, a.hidden, i, out);
    }
    const void* last = a.merged;
    if (a.w_dispatch) {
        norm_pass<T, N>(a.merged, a.w_dispatch, a.dispatch_eps, a.dispatch_normed, row, a.hidden);
        last = a.dispatch_normed;
    }
    if (a.w_next) norm_pass<T, N>(last, a.w_next, a.next_eps, a.next_normed, row, a.hidden);
}

__global__ void barrier_kernel(BarrierArgs a) {
    const unsigned next = *a.epoch + 1u;
    const int p = threadIdx.x;
    if (p < a.num_ranks) {
        __threadfence_system();  // this rank's buffer writes (the prologue) before its flag, to every peer
        cuda::atomic_ref<unsigned, cuda::thread_scope_system> at_peer(a.flags[p][a.rank]);
        at_peer.store(next, cuda::memory_order_release);
        cuda::atomic_ref<unsigned, cuda::thread_scope_system> from_peer(a.flags[a.rank][p]);
        // a peer may be one barrier ahead (next + 1); the signed difference survives the 2^32 wrap
        while ((int)(from_peer.load(cuda::memory_order_acquire) - next) < 0) __nanosleep(32);
    }
    __syncthreads();  // every thread has read *a.epoch
    if (p == 0) *a.epoch = next;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int threads_for(int nvec) {
    int t = ((nvec + 31) / 32) * 32;
    return t < 32 ? 32 : (t > 1024 ? 1024 : t);
}

template <typename T, typename Args>
cudaError_t launch(const Args& a, bool vector_ok, cudaStream_t stream, void (*vec_kernel)(Args),
                   void (*scalar_kernel)(Args)) {
    constexpr int N = 16 / sizeof(T);
    if (a.tokens <= 0) return cudaSuccess;
    const bool vec = vector_ok && a.hidden % N == 0;
    if (vec)
        vec_kernel<<<a.tokens, threads_for(a.hidden / N), 0, stream>>>(a);
    else
        scalar_kernel<<<a.tokens, threads_for(a.hidden), 0, stream>>>(a);
    return cudaGetLastError();
}

template <typename T>
cudaError_t prologue_as(const PrologueArgs& a, cudaStream_t s) {
    constexpr int N = 16 / sizeof(T);
    const bool ok = aligned16(a.h) && aligned16(a.x) && aligned16(a.w_combine) && aligned16(a.out) &&
                    (a.parity_stride & 15u) == 0;
    return launch<T, PrologueArgs>(a, ok, s, prologue_kernel<T, N>, prologue_kernel<T, 1>);
}

template <typename T>
cudaError_t epilogue_as(const EpilogueArgs& a, cudaStream_t s) {
    constexpr int N = 16 / sizeof(T);
    bool peers_ok = true;
    for (int p = 0; p < a.num_peers; ++p) peers_ok = peers_ok && aligned16(a.peers[p]);
    const bool ok = peers_ok && (a.parity_stride & 15u) == 0 && aligned16(a.reduced) && aligned16(a.x) && aligned16(a.w_dispatch) && aligned16(a.w_next) &&
                    aligned16(a.merged) && aligned16(a.dispatch_normed) && aligned16(a.next_normed);
    return launch<T, EpilogueArgs>(a, ok, s, epilogue_kernel<T, N>, epilogue_kernel<T, 1>);
}

}  // namespace

cudaError_t launch_barrier(const BarrierArgs& a, cudaStream_t stream) {
    barrier_kernel<<<1, 32, 0, stream>>>(a);
    return cudaGetLastError();
}

cudaError_t launch_prologue(pt_merge_dtype dtype, const PrologueArgs& a, cudaStream_t stream) {
    switch (dtype) {
    case PT_MERGE_FP16: return prologue_as<__half>(a, stream);
    case PT_MERGE_BF16: return prologue_as<__nv_bfloat16>(a, stream);
    default: return prologue_as<float>(a, stream);
    }
}

cudaError_t launch_epilogue(pt_merge_dtype dtype, const EpilogueArgs& a, cudaStream_t stream) {
    switch (dtype) {
    case PT_MERGE_FP16: return epilogue_as<__half>(a, stream);
    case PT_MERGE_BF16: return epilogue_as<__nv_bfloat16>(a, stream);
    default: return epilogue_as<float>(a, stream);
    }
}

}  // namespace pt_merge
