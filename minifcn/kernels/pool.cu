// Max pooling on the GPU: the NumPy twin is minifcn/functional/pool.py.
//
//   forward:  y[n, c, oh, ow] = max over taps (u, v) of xpad[n, c, oh*sh + u*dh, ow*sw + v*dw]
//             tap[n, c, oh, ow] = u*kw + v of the winner, as torch picks it: padding
//             never wins (a window whose pixels are all -inf reports its first pixel);
//             the first maximum in scan order wins ties; a NaN wins over any number,
//             and a later NaN over an earlier one
//   backward: dx[n, c, y, x] = sum of dy over the windows whose winning tap sits on (y, x)
//
// The backward pass is a gather like col2im (one thread per input pixel, visiting only the
// windows that can read it), so it needs no atomics.
#include "common.cuh"

template <typename T, typename I>
__device__ __forceinline__ void max_pool_body(const T* __restrict__ x, T* __restrict__ y,
                                              int* __restrict__ tap, I total, int h, int w,
                                              Windows2d g) {
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
        const int ow = (int)(idx % (I)g.wo);
        const I rest = idx / (I)g.wo;
        const int oh = (int)(rest % (I)g.ho);
        const I nc = rest / (I)g.ho;
        const T* __restrict__ plane = x + (long long)nc * h * w;
        T best = negative_infinity<T>();
        int best_tap = -1;                      // none yet: the first pixel is taken as is
        for (int u = 0; u < g.kh; ++u) {
            const int yy = oh * g.sh + u * g.dh - g.ph;
            if (yy < 0 || yy >= h) continue;
            for (int v = 0; v < g.kw; ++v) {
                const int xx = ow * g.sw + v * g.dw - g.pw;
                if (xx < 0 || xx >= w) continue;
                const T val = plane[(long long)yy * w + xx];
                // strictly greater keeps the first of equal values; a NaN (val != val)
                // always takes over, so the last NaN wins, as in torch
                if (best_tap < 0 || val > best || val != val) {
                    best = val;
                    best_tap = u * g.kw + v;
                }
            }
        }
        y[idx] = best;
        tap[idx] = best_tap < 0 ? 0 : best_tap; // an all-padding window reports tap 0, -inf
    }
}

template <typename T>
__device__ __forceinline__ void max_pool_kernel(const T* x, T* y, int* tap, long long nc, int h,
                                                int w, Windows2d g) {
    const long long total = nc * g.ho * g.wo;
    if (fits_32bit_index(total))
        max_pool_body<T, unsigned int>(x, y, tap, (unsigned int)total, h, w, g);
    else
        max_pool_body<T, long long>(x, y, tap, total, h, w, g);
}

extern "C" __global__ void max_pool2d_f32(const float* __restrict__ x, float* __restrict__ y,
                                          int* __restrict__ tap, long long nc, int h, int w,
                                          int kh, int kw, int sh, int sw, int ph, int pw,
                                          int dh, int dw, int ho, int wo) {
    max_pool_kernel<float>(x, y, tap, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}

extern "C" __global__ void max_pool2d_f64(const double* __restrict__ x, double* __restrict__ y,
                                          int* __restrict__ tap, long long nc, int h, int w,
                                          int kh, int kw, int sh, int sw, int ph, int pw,
                                          int dh, int dw, int ho, int wo) {
    max_pool_kernel<double>(x, y, tap, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}

// -- backward ---------------------------------------------------------------------------------

template <typename T, typename I>
__device__ __forceinline__ void max_pool_backward_body(const T* __restrict__ dy,
                                                       const int* __restrict__ tap,
                                                       T* __restrict__ dx, I total, int h, int w,
                                                       Windows2d g) {
    const long long windows = (long long)g.ho * g.wo;
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
        const int xx = (int)(idx % (I)w);
        const I rest = idx / (I)w;
        const int yy = (int)(rest % (I)h);
        const I nc = rest / (I)h;
        const T* __restrict__ dyc = dy + (long long)nc * windows;
        const int* __restrict__ tapc = tap + (long long)nc * windows;
        T sum = (T)0;
        for_each_window_reading(g, yy + g.ph, xx + g.pw, [&](int i, int j, int oh, int ow) {
            const long long k = (long long)oh * g.wo + ow;
            if (tapc[k] == i * g.kw + j) sum += dyc[k];
        });
        dx[idx] = sum;
    }
}

template <typename T>
__device__ __forceinline__ void max_pool_backward_kernel(const T* dy, const int* tap, T* dx,
                                                         long long nc, int h, int w, Windows2d g) {
    const long long total = nc * h * w;
    if (fits_32bit_index(total))
        max_pool_backward_body<T, unsigned int>(dy, tap, dx, (unsigned int)total, h, w, g);
    else
        max_pool_backward_body<T, long long>(dy, tap, dx, total, h, w, g);
}

extern "C" __global__ void max_pool2d_backward_f32(const float* __restrict__ dy,
                                                   const int* __restrict__ tap,
                                                   float* __restrict__ dx, long long nc, int h,
                                                   int w, int kh, int kw, int sh, int sw, int ph,
                                                   int pw, int dh, int dw, int ho, int wo) {
    max_pool_backward_kernel<float>(dy, tap, dx, nc, h, w,
                                    Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}

extern "C" __global__ void max_pool2d_backward_f64(const double* __restrict__ dy,
                                                   const int* __restrict__ tap,
                                                   double* __restrict__ dx, long long nc, int h,
                                                   int w, int kh, int kw, int sh, int sw, int ph,
                                                   int pw, int dh, int dw, int ho, int wo) {
    max_pool_backward_kernel<double>(dy, tap, dx, nc, h, w,
                                     Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}
