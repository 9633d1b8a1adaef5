// conv_transpose2d in one kernel: col2im with the GEMM fused in. The NumPy twin is
// _conv_transpose2d_fused in minifcn/functional/conv.py.
//
// The two-kernel forward (GEMM, then col2im) first writes the col matrix
//
//   col[n, o, i, j, oh, ow] = sum_c W[c, o', i, j] * x[n, c, oh, ow]          (cuBLAS)
//
// (c over the C/groups input channels of o's group, o' = o's index within its group)
// and then gathers, for each output pixel, the col entries whose tap (i, j) of window
// (oh, ow) lands on it (col2im in im2col.cu). Here a thread is one output pixel, as in that
// col2im gather, but it computes each col entry on the spot from x and W instead of
// reading it:
//
//   y[n, o, Y, X] = b[o] + sum over the (i, j, oh, ow) that reach (Y, X) of
//                          sum_c W[c, o', i, j] * x[n, c, oh, ow]
//
// No col matrix, and one launch instead of two or three. A pixel gathers at most
// ceil(kh/t_h)*ceil(kw/t_w) taps, t = s / gcd(s, d) (ceil(k/s) per axis without dilation),
// each C/groups multiply-adds, with no data reuse between threads beyond the caches. So
// this is for small problems, where the launches and the cuBLAS call cost more than the
// arithmetic (FCN's k4 s2 upsamplers); large ones go to the GEMM paths (_pick_algorithm
// in conv.py).
#include "common.cuh"

template <typename T, typename I>
__device__ __forceinline__ void conv_transpose2d_body(
        const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
        T* __restrict__ y, I total, int c_in, int c_out, int groups, int hout, int wout,
        Windows2d g, bool has_bias) {
    // The windows of g are the input pixels (g.ho x g.wo = H x W): input pixel (oh, ow)
    // stamps its kernel at padded output position (oh*sh, ow*sw).
    const int cg = c_in / groups, og = c_out / groups;
    const int taps = g.kh * g.kw;
    const long long in_plane = (long long)g.ho * g.wo;
    const long long w_channel = (long long)og * taps;           // W's stride between c's
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
        const int xx = (int)(idx % (I)wout);
        I rest = idx / (I)wout;
        const int yy = (int)(rest % (I)hout);
        rest /= (I)hout;
        const int o = (int)(rest % (I)c_out);
        const I n = rest / (I)c_out;
        const int grp = o / og;
        const T* __restrict__ xs = x + ((long long)n * c_in + (long long)grp * cg) * in_plane;
        const T* __restrict__ ws = w + ((long long)grp * cg * og + (o - grp * og)) * taps;
        T sum = (T)0;
        for_each_window_reading(g, yy + g.ph, xx + g.pw, [&](int i, int j, int oh, int ow) {
            const T* __restrict__ xc = xs + (long long)oh * g.wo + ow;
            const T* __restrict__ wc = ws + i * g.kw + j;
            for (int c = 0; c < cg; ++c)
                sum += wc[c * w_channel] * xc[c * in_plane];
        });
        y[idx] = has_bias ? sum + bias[o] : sum;
    }
}

template <typename T>
__device__ __forceinline__ void conv_transpose2d_kernel(
        const T* x, const T* w, const T* bias, T* y, long long n, int c_in, int c_out,
        int groups, int hout, int wout, Windows2d g, int has_bias) {
    const long long total = n * c_out * hout * wout;
    if (fits_32bit_index(total))
        conv_transpose2d_body<T, unsigned int>(x, w, bias, y, (unsigned int)total, c_in, c_out,
                                               groups, hout, wout, g, has_bias != 0);
    else
        conv_transpose2d_body<T, long long>(x, w, bias, y, total, c_in, c_out, groups, hout,
                                            wout, g, has_bias != 0);
}

// x (N, C, H, W), w (C, O/groups, kh, kw), bias (O,) — any array of its own when has_bias
// is 0: it is not read — y (N, O, hout, wout). (h, w_in) is the input size H x W: the
// number of windows.
extern "C" __global__ void conv_transpose2d_f32(
        const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
        float* __restrict__ y, long long n, int c_in, int c_out, int groups, int h, int w_in,
        int hout, int wout, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
        int has_bias) {
    conv_transpose2d_kernel<float>(x, w, bias, y, n, c_in, c_out, groups, hout, wout,
                                   Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, h, w_in}, has_bias);
}

extern "C" __global__ void conv_transpose2d_f64(
        const double* __restrict__ x, const double* __restrict__ w, const double* __restrict__ bias,
        double* __restrict__ y, long long n, int c_in, int c_out, int groups, int h, int w_in,
        int hout, int wout, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
        int has_bias) {
    conv_transpose2d_kernel<double>(x, w, bias, y, n, c_in, c_out, groups, hout, wout,
                                    Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, h, w_in}, has_bias);
}
