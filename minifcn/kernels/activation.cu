// ReLU and dropout on the GPU: the NumPy twins are in minifcn/functional/activation.py.
//
//   relu:              y = max(x, 0)            (NaN stays NaN, as np.maximum)
//   relu_backward:     dx = y > 0 ? dy : 0      (from the forward output y; a select,
//                      so an inf/NaN dy stays out of the zeros)
//   dropout:           m = [u >= p] / (1 - p);  y = x * m     (u ~ U[0, 1), one u per mask value)
//   dropout_backward:  dx = dy * m
//
// Element-wise, so flat 64-bit indices and nothing else. Dropout's mask may be shared by
// `group` consecutive elements: group = 1 for element-wise dropout, H*W for the
// channel-wise form (one mask value per (n, c) feature map).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void relu_kernel(const T* __restrict__ x, T* __restrict__ y,
                                            long long total) {
    for (long long i = first_index<long long>(); i < total; i += grid_stride<long long>()) {
        const T v = x[i];
        y[i] = (v > (T)0 || v != v) ? v : (T)0;
    }
}

extern "C" __global__ void relu_f32(const float* __restrict__ x, float* __restrict__ y,
                                    long long total) {
    relu_kernel<float>(x, y, total);
}

extern "C" __global__ void relu_f64(const double* __restrict__ x, double* __restrict__ y,
                                    long long total) {
    relu_kernel<double>(x, y, total);
}

template <typename T>
__device__ __forceinline__ void relu_backward_kernel(const T* __restrict__ dy,
                                                     const T* __restrict__ y,
                                                     T* __restrict__ dx, long long total) {
    for (long long i = first_index<long long>(); i < total; i += grid_stride<long long>())
        dx[i] = y[i] > (T)0 ? dy[i] : (T)0;
}

extern "C" __global__ void relu_backward_f32(const float* __restrict__ dy,
                                             const float* __restrict__ y,
                                             float* __restrict__ dx, long long total) {
    relu_backward_kernel<float>(dy, y, dx, total);
}

extern "C" __global__ void relu_backward_f64(const double* __restrict__ dy,
                                             const double* __restrict__ y,
                                             double* __restrict__ dx, long long total) {
    relu_backward_kernel<double>(dy, y, dx, total);
}

// -- dropout ------------------------------------------------------------------------------------

// One pass instead of NumPy's four (compare, cast, scale, multiply). The thread of the first
// element of each group also writes the group's mask value, which the backward pass reuses.
template <typename T>
__device__ __forceinline__ void dropout_kernel(const T* __restrict__ x,
                                               const float* __restrict__ u,
                                               T* __restrict__ y, T* __restrict__ mask,
                                               long long total, long long group, float p,
                                               T scale) {
    for (long long i = first_index<long long>(); i < total; i += grid_stride<long long>()) {
        const long long k = group == 1 ? i : i / group;
        const T m = u[k] >= p ? scale : (T)0;
        y[i] = x[i] * m;
        if (group == 1 || k * group == i) mask[k] = m;
    }
}

extern "C" __global__ void dropout_f32(const float* __restrict__ x, const float* __restrict__ u,
                                       float* __restrict__ y, float* __restrict__ mask,
                                       long long total, long long group, float p, float scale) {
    dropout_kernel<float>(x, u, y, mask, total, group, p, scale);
}

extern "C" __global__ void dropout_f64(const double* __restrict__ x, const float* __restrict__ u,
                                       double* __restrict__ y, double* __restrict__ mask,
                                       long long total, long long group, float p, double scale) {
    dropout_kernel<double>(x, u, y, mask, total, group, p, scale);
}

template <typename T>
__device__ __forceinline__ void dropout_backward_kernel(const T* __restrict__ dy,
                                                        const T* __restrict__ mask,
                                                        T* __restrict__ dx, long long total,
                                                        long long group) {
    for (long long i = first_index<long long>(); i < total; i += grid_stride<long long>())
        dx[i] = dy[i] * mask[group == 1 ? i : i / group];
}

extern "C" __global__ void dropout_backward_f32(const float* __restrict__ dy,
                                                const float* __restrict__ mask,
                                                float* __restrict__ dx, long long total,
                                                long long group) {
    dropout_backward_kernel<float>(dy, mask, dx, total, group);
}

extern "C" __global__ void dropout_backward_f64(const double* __restrict__ dy,
                                                const double* __restrict__ mask,
                                                double* __restrict__ dx, long long total,
                                                long long group) {
    dropout_backward_kernel<double>(dy, mask, dx, total, group);
}
