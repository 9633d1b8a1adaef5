// col2im v3: gather in stride-phase order (dilation 1).
//
// Padded column xp = q*sw + r splits into a block q and a phase r. All pixels of one
// phase are reached by the same taps j = r, r + sw, r + 2*sw, ... from windows ow = q,
// q - 1, q - 2, ... So v3 numbers its threads (nc, y, r, q) with q fastest: a warp covers
// consecutive q of one phase, runs the same loop bounds without divergence, and reads
// consecutive col entries (coalesced) — paid for with image writes sw apart.
#include "../../minifcn/kernels/common.cuh"

template <typename T, typename I>
__device__ __forceinline__ void col2im_v3_body(const T* __restrict__ col, T* __restrict__ x,
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
        T sum = (T)0;
        for (int i = yp - qy * g.sh, a = 0; i < g.kh; i += g.sh, ++a) {
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
        x[((long long)nc * h + y) * w + xx] = sum;
    }
}

template <typename T>
__device__ __forceinline__ void col2im_v3_kernel(const T* col, T* x, long long nc, int h, int w,
                                                 Windows2d g) {
    const int qw = (w + g.pw + g.sw - 1) / g.sw;        // column blocks covering the image
    const long long total = nc * h * g.sw * qw;
    if (fits_32bit_index(total))
        col2im_v3_body<T, unsigned int>(col, x, (unsigned int)total, h, w, qw, g);
    else
        col2im_v3_body<T, long long>(col, x, total, h, w, qw, g);
}

extern "C" __global__ void col2im_v3_f32(const float* __restrict__ col, float* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_v3_kernel<float>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}

extern "C" __global__ void col2im_v3_f64(const double* __restrict__ col, double* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_v3_kernel<double>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}
