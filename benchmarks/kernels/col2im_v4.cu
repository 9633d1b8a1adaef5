// col2im v4: gather, one thread per stride block of a row (dilation 1).
//
// Thread (nc, y, q) writes the sw pixels xp = q*sw + 0 .. q*sw + sw-1 of its row: it finds
// the row taps once and reuses them for every phase, and a warp of consecutive q reads
// consecutive col entries for each tap (coalesced) while together writing a contiguous
// stretch of 32*sw pixels. sw times fewer threads than v2, each doing sw pixels.
#include "../../minifcn/kernels/common.cuh"

template <typename T, typename I>
__device__ __forceinline__ void col2im_v4_body(const T* __restrict__ col, T* __restrict__ x,
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
            row[xx] = sum;
        }
    }
}

template <typename T>
__device__ __forceinline__ void col2im_v4_kernel(const T* col, T* x, long long nc, int h, int w,
                                                 Windows2d g) {
    const int qw = (w + g.pw + g.sw - 1) / g.sw;
    const long long total = nc * h * qw;
    if (fits_32bit_index(total))
        col2im_v4_body<T, unsigned int>(col, x, (unsigned int)total, h, w, qw, g);
    else
        col2im_v4_body<T, long long>(col, x, total, h, w, qw, g);
}

extern "C" __global__ void col2im_v4_f32(const float* __restrict__ col, float* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_v4_kernel<float>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}

extern "C" __global__ void col2im_v4_f64(const double* __restrict__ col, double* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_v4_kernel<double>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}
