// im2col and col2im on the GPU: the NumPy twins are minifcn/functional/im2col.py.
//
//   im2col:  col[n, c, i, j, oh, ow] = x[n, c, oh*sh + i*dh - ph, ow*sw + j*dw - pw]  (0 outside)
//   col2im:  x[n, c, y, x] = sum of the col entries im2col would copy from (y, x)
//
// Both are gathers — one thread per output element, each writes exactly one value — so
// col2im needs no atomics and gives the same bits on every run.
//
// col2im comes in three orders of the same gather (benchmarks/kernels/ has them numbered
// v2, v3, v4 with the measurements; minifcn/kernels/ops.py picks one):
//   col2im           one thread per pixel, any dilation                        (v2)
//   col2im_phase     dilation 1; threads in stride-phase order, col reads coalesce (v3)
//   col2im_rowblock  dilation 1; one thread per stride block of a row          (v4)
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

// -- the sum both dilation-1 orders share ------------------------------------------------------
//
// The col entries (of one (n, c) plane ``c``) that land on padded row q_y*sh + i0 and padded
// column q*sw + r: row taps i0, i0 + sh, ... from windows oh = q_y, q_y - 1, ...; column
// taps r, r + sw, ... from windows ow = q, q - 1, ...
template <typename T>
__device__ __forceinline__ T sum_taps_dilation1(const T* __restrict__ c, const Windows2d& g,
                                                int i0, int qy, int r, int q) {
    T sum = (T)0;
    for (int i = i0, a = 0; i < g.kh; i += g.sh, ++a) {
        const int oh = qy - a;
        if (oh < 0) break;
        if (oh >= g.ho) continue;
        for (int j = r, b = 0; j < g.kw; j += g.sw, ++b) {
            const int ow = q - b;
            if (ow < 0) break;
            if (ow >= g.wo) continue;
            sum += c[(((long long)i * g.kw + j) * g.ho + oh) * g.wo + ow];
        }
    }
    return sum;
}

// -- col2im_phase (v3): gather in stride-phase order, dilation 1 -----------------------------
//
// Padded column xp = q*sw + r splits into a block q and a phase r. All pixels of one phase
// are reached by the same taps j = r, r + sw, r + 2*sw, ... from windows ow = q, q - 1, ...
// Threads are numbered (nc, y, r, q) with q fastest: a warp covers consecutive q of one
// phase, runs the same loop bounds without divergence and reads consecutive col entries
// (coalesced) — paid for with image writes sw apart.

template <typename T, typename I>
__device__ __forceinline__ void col2im_phase_body(const T* __restrict__ col, T* __restrict__ x,
                                               I total, int h, int w, int qw, Windows2d g) {
    const long long plane = (long long)g.kh * g.kw * g.ho * g.wo;
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
        const int q = (int)(idx % (I)qw);
        I rest = idx / (I)qw;
        const int r = (int)(rest % (I)g.sw);
        rest /= (I)g.sw;
        const int y = (int)(rest % (I)h);
        const I nc = rest / (I)h;
        const int xx = q * g.sw + r - g.pw;
        if (xx < 0 || xx >= w) continue;         // the block's phase lies in the padding
        const int yp = y + g.ph;
        const int qy = yp / g.sh;
        const T* __restrict__ c = col + (long long)nc * plane;
        x[((long long)nc * h + y) * w + xx] = sum_taps_dilation1(c, g, yp - qy * g.sh, qy, r, q);
    }
}

template <typename T>
__device__ __forceinline__ void col2im_phase_kernel(const T* col, T* x, long long nc, int h, int w,
                                                 Windows2d g) {
    const int qw = (w + g.pw + g.sw - 1) / g.sw;        // column blocks covering the image
    const long long total = nc * h * g.sw * qw;
    if (fits_32bit_index(total))
        col2im_phase_body<T, unsigned int>(col, x, (unsigned int)total, h, w, qw, g);
    else
        col2im_phase_body<T, long long>(col, x, total, h, w, qw, g);
}

extern "C" __global__ void col2im_phase_f32(const float* __restrict__ col, float* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_phase_kernel<float>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}

extern "C" __global__ void col2im_phase_f64(const double* __restrict__ col, double* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_phase_kernel<double>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}

// -- col2im_rowblock (v4): one thread per stride block of a row, dilation 1 -----------------
//
// Thread (nc, y, q) writes the sw pixels xp = q*sw + 0 .. q*sw + sw-1 of its row: it finds
// the row taps once and reuses them for every phase; a warp of consecutive q reads
// consecutive col entries for each tap while writing a contiguous stretch of 32*sw pixels.

template <typename T, typename I>
__device__ __forceinline__ void col2im_rowblock_body(const T* __restrict__ col, T* __restrict__ x,
                                               I total, int h, int w, int qw, Windows2d g) {
    const long long plane = (long long)g.kh * g.kw * g.ho * g.wo;
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
        const int q = (int)(idx % (I)qw);
        const I rest = idx / (I)qw;
        const int y = (int)(rest % (I)h);
        const I nc = rest / (I)h;
        const int yp = y + g.ph;
        const int qy = yp / g.sh;
        const int i0 = yp - qy * g.sh;
        const T* __restrict__ c = col + (long long)nc * plane;
        T* __restrict__ row = x + ((long long)nc * h + y) * w;
        for (int r = 0; r < g.sw; ++r) {
            const int xx = q * g.sw + r - g.pw;
            if (xx < 0) continue;
            if (xx >= w) break;
            row[xx] = sum_taps_dilation1(c, g, i0, qy, r, q);
        }
    }
}

template <typename T>
__device__ __forceinline__ void col2im_rowblock_kernel(const T* col, T* x, long long nc, int h, int w,
                                                 Windows2d g) {
    const int qw = (w + g.pw + g.sw - 1) / g.sw;
    const long long total = nc * h * qw;
    if (fits_32bit_index(total))
        col2im_rowblock_body<T, unsigned int>(col, x, (unsigned int)total, h, w, qw, g);
    else
        col2im_rowblock_body<T, long long>(col, x, total, h, w, qw, g);
}

extern "C" __global__ void col2im_rowblock_f32(const float* __restrict__ col, float* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_rowblock_kernel<float>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}

extern "C" __global__ void col2im_rowblock_f64(const double* __restrict__ col, double* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_rowblock_kernel<double>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}
