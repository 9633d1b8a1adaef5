// col2im v1: scatter. One thread per col entry adds it into the image with atomicAdd.
//
// The version one writes first: the loop of im2col run backwards. Reads of col are
// perfectly coalesced, but the image must be zeroed beforehand (an extra pass), overlapping
// windows collide on the same pixels, and the order of the additions — so the last bits of
// the sums — changes from run to run. Any stride, padding and dilation.
#include "../../minifcn/kernels/common.cuh"

template <typename T, typename I>
__device__ __forceinline__ void col2im_v1_body(const T* __restrict__ col, T* __restrict__ x,
                                               I total, int h, int w, Windows2d g) {
    for (I idx = first_index<I>(); idx < total; idx += grid_stride<I>()) {
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
        if (y >= 0 && y < h && xx >= 0 && xx < w)
            atomicAdd(x + ((long long)nc * h + y) * w + xx, col[idx]);
    }
}

template <typename T>
__device__ __forceinline__ void col2im_v1_kernel(const T* col, T* x, long long nc, int h, int w,
                                                 Windows2d g) {
    const long long total = nc * g.kh * g.kw * g.ho * g.wo;
    if (fits_32bit_index(total))
        col2im_v1_body<T, unsigned int>(col, x, (unsigned int)total, h, w, g);
    else
        col2im_v1_body<T, long long>(col, x, total, h, w, g);
}

extern "C" __global__ void col2im_v1_f32(const float* __restrict__ col, float* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int dh, int dw, int ho, int wo) {
    col2im_v1_kernel<float>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}

extern "C" __global__ void col2im_v1_f64(const double* __restrict__ col, double* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int dh, int dw, int ho, int wo) {
    col2im_v1_kernel<double>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo});
}
