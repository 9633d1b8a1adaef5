// im2col and col2im on the GPU: the NumPy twins are minifcn/functional/im2col.py.
//
//   im2col:  col[n, c, i, j, oh, ow] = x[n, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw]  (0 outside)
//   col2im:  x[n, c, y, x] = sum of the col entries im2col would copy from (y, x)
//
// Both are gathers — one thread per output element, each writes exactly one value — so
// col2im needs no atomics and gives the same bits on every run.
#include "common.cuh"

// -- im2col: one thread per col element ------------------------------------------------------

template <typename T, typename I>
__device__ __forceinline__ void im2col_body(const T* __restrict__ x, T* __restrict__ col,
                                            I total, int h, int w, Windows2d g) {
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
        // idx runs over (nc, i, j, oh, ow), ow fastest: consecutive threads write
        // consecutive col entries.
        const int ow = (int)(idx % (I)g.wo);
        I rest = idx / (I)g.wo;
        const int oh = (int)(rest % (I)g.ho);
        rest /= (I)g.ho;
        const int j = (int)(rest % (I)g.kw);
        rest /= (I)g.kw;
        const int i = (int)(rest % (I)g.kh);
        const I nc = rest / (I)g.kh;
        const int y = oh * g.sh + i * g.dh - g.ph;
        const int xx = ow * g.sw + j * g.dw - g.pw;
        T v = (T)0;
        if (y >= 0 && y < h && xx >= 0 && xx < w)
            v = x[((long long)nc * h + y) * w + xx];
        col[idx] = v;
    }
}

template <typename T>
__device__ __forceinline__ void im2col_kernel(const T* x, T* col, long long nc, int h, int w,
                                              Windows2d g) {
    const long long total = nc * g.kh * g.kw * g.ho * g.wo;
    if (fits_32bit_index(total))
        im2col_body<T, unsigned int>(x, col, (unsigned int)total, h, w, g);
    else
        im2col_body<T, long long>(x, col, total, h, w, g);
}

extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ col,
                                      long long nc, int h, int w, int kh, int kw, int sh, int sw,
                                      int ph, int pw, int dh, int dw, int ho, int wo) {
    im2col_kernel<float>(x, col, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}

extern "C" __global__ void im2col_f64(const double* __restrict__ x, double* __restrict__ col,
                                      long long nc, int h, int w, int kh, int kw, int sh, int sw,
                                      int ph, int pw, int dh, int dw, int ho, int wo) {
    im2col_kernel<double>(x, col, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}

// -- col2im: one thread per image pixel, summing only the taps that reach it -------------------

template <typename T, typename I>
__device__ __forceinline__ void col2im_body(const T* __restrict__ col, T* __restrict__ x,
                                            I total, int h, int w, Windows2d g) {
    const long long plane = (long long)g.kh * g.kw * g.ho * g.wo;   // col entries per (n, c)
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
        const int xx = (int)(idx % (I)w);
        const I rest = idx / (I)w;
        const int y = (int)(rest % (I)h);
        const I nc = rest / (I)h;
        const T* __restrict__ c = col + (long long)nc * plane;
        T sum = (T)0;
        for_each_window_reading(g, y + g.ph, xx + g.pw, [&](int i, int j, int oh, int ow) {
            sum += c[(((long long)i * g.kw + j) * g.ho + oh) * g.wo + ow];
        });
        x[idx] = sum;
    }
}

template <typename T>
__device__ __forceinline__ void col2im_kernel(const T* col, T* x, long long nc, int h, int w,
                                              Windows2d g) {
    const long long total = nc * h * w;
    if (fits_32bit_index(total))
        col2im_body<T, unsigned int>(col, x, (unsigned int)total, h, w, g);
    else
        col2im_body<T, long long>(col, x, total, h, w, g);
}

extern "C" __global__ void col2im_f32(const float* __restrict__ col, float* __restrict__ x,
                                      long long nc, int h, int w, int kh, int kw, int sh, int sw,
                                      int ph, int pw, int dh, int dw, int ho, int wo) {
    col2im_kernel<float>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}

extern "C" __global__ void col2im_f64(const double* __restrict__ col, double* __restrict__ x,
                                      long long nc, int h, int w, int kh, int kw, int sh, int sw,
                                      int ph, int pw, int dh, int dw, int ho, int wo) {
    col2im_kernel<double>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}
