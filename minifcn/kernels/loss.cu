// Softmax cross-entropy over every pixel: the NumPy twin is minifcn/functional/loss.py.
//
// logits z (N, K, H, W), labels t (N, H, W); one thread per pixel (n, y, x), looping over
// the K classes, which sit H*W apart (so neighbouring threads read neighbouring addresses):
//
//   forward:   loss[n, y, x] = log(sum_k exp(z_k - m)) - (z_t - m),   m = max_k z_k
//   backward:  grad[n, k, y, x] = (exp(z_k - m - log(sum_k exp(z_k - m))) - [k == t]) / denom
//
// Both are 0 where t == ignore_index. The caller sums the losses (in float64) and passes
// denom = number of counted pixels for reduction='mean', 1 for 'sum'.
#include "common.cuh"

// The pixel's max and log-sum-exp over classes; z points at class 0, classes `hw` apart.
template <typename T>
__device__ __forceinline__ void log_sum_exp(const T* __restrict__ z, int k, long long hw,
                                            T& m, T& lse) {
    m = z[0];
    for (int c = 1; c < k; ++c) {
        const T v = z[c * hw];
        if (v > m || v != v) m = v;             // NaN propagates, as np.max
    }
    T s = (T)0;
    for (int c = 0; c < k; ++c) s += math_exp(z[c * hw] - m);
    lse = math_log(s);
}

template <typename T>
__device__ __forceinline__ void softmax_ce_kernel(const T* __restrict__ z,
                                                  const long long* __restrict__ labels,
                                                  T* __restrict__ loss, long long n, int k,
                                                  long long hw, long long ignore_index) {
    const long long total = n * hw;
    for (long long p = first_index<long long>(); p < total; p += grid_stride<long long>()) {
        const long long t = labels[p];
        if (t == ignore_index) { loss[p] = (T)0; continue; }
        if (t < 0 || t >= k) { loss[p] = quiet_nan<T>(); continue; }   // the host checks first
        const T* __restrict__ zp = z + (p / hw) * k * hw + p % hw;
        T m, lse;
        log_sum_exp(zp, k, hw, m, lse);
        loss[p] = lse - (zp[t * hw] - m);
    }
}

extern "C" __global__ void softmax_cross_entropy_f32(const float* __restrict__ z,
                                                     const long long* __restrict__ labels,
                                                     float* __restrict__ loss, long long n, int k,
                                                     long long hw, long long ignore_index) {
    softmax_ce_kernel<float>(z, labels, loss, n, k, hw, ignore_index);
}

extern "C" __global__ void softmax_cross_entropy_f64(const double* __restrict__ z,
                                                     const long long* __restrict__ labels,
                                                     double* __restrict__ loss, long long n, int k,
                                                     long long hw, long long ignore_index) {
    softmax_ce_kernel<double>(z, labels, loss, n, k, hw, ignore_index);
}

template <typename T>
__device__ __forceinline__ void softmax_ce_backward_kernel(const T* __restrict__ z,
                                                           const long long* __restrict__ labels,
                                                           T* __restrict__ grad, long long n,
                                                           int k, long long hw,
                                                           long long ignore_index, T denom) {
    const long long total = n * hw;
    for (long long p = first_index<long long>(); p < total; p += grid_stride<long long>()) {
        const long long t = labels[p];
        const long long base = (p / hw) * k * hw + p % hw;
        const T* __restrict__ zp = z + base;
        T* __restrict__ gp = grad + base;
        if (t == ignore_index) {
            for (int c = 0; c < k; ++c) gp[c * hw] = (T)0;
            continue;
        }
        T m, lse;
        log_sum_exp(zp, k, hw, m, lse);
        for (int c = 0; c < k; ++c) {
            const T prob = math_exp(zp[c * hw] - m - lse);
            gp[c * hw] = (prob - (c == t ? (T)1 : (T)0)) / denom;
        }
    }
}

extern "C" __global__ void softmax_cross_entropy_backward_f32(
        const float* __restrict__ z, const long long* __restrict__ labels,
        float* __restrict__ grad, long long n, int k, long long hw, long long ignore_index,
        float denom) {
    softmax_ce_backward_kernel<float>(z, labels, grad, n, k, hw, ignore_index, denom);
}

extern "C" __global__ void softmax_cross_entropy_backward_f64(
        const double* __restrict__ z, const long long* __restrict__ labels,
        double* __restrict__ grad, long long n, int k, long long hw, long long ignore_index,
        double denom) {
    softmax_ce_backward_kernel<double>(z, labels, grad, n, k, hw, ignore_index, denom);
}
