// Helpers shared by the kernels in this folder.
//
// Three compilers read these files: NVRTC (what CuPy compiles with at run time), nvcc
// (the compile check in tests/test_kernels_compile.py) and g++ (the CPU emulator in
// tests/cuda_emu/). So: no standard headers, no shared memory, no __syncthreads — each
// thread's work depends on nothing another thread does, which is what lets the emulator
// run the threads one after another.
#ifndef MINIFCN_COMMON_CUH
#define MINIFCN_COMMON_CUH

// -- grid-stride loops ------------------------------------------------------------------
// Every kernel takes a 1-D launch of any size: thread t handles elements t, t + T, t + 2T,
// ... (T = all threads of the grid). A grid smaller than the work loops; a larger one
// leaves threads idle. Both are correct, and the tests launch both.

template <typename I>
__device__ __forceinline__ I first_index() {
    return (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x;
}

template <typename I>
__device__ __forceinline__ I grid_stride() {
    return (I)blockDim.x * (I)gridDim.x;
}

// Flat indices are 64-bit (arrays may pass 2^31 elements), but a 64-bit division costs
// several times a 32-bit one and the kernels that split an index into (n, c, y, x) do
// four of them per element. So they run the same body with 32-bit unsigned indices
// whenever the last index plus one grid stride still fits (a uniform branch: every thread
// of the launch takes the same side). The emulator lowers the limit to test both sides.
#ifndef MINIFCN_INDEX32_LIMIT
#define MINIFCN_INDEX32_LIMIT 0xffffffffLL
#endif

__device__ __forceinline__ bool fits_32bit_index(long long total) {
    return total + (long long)blockDim.x * (long long)gridDim.x <= MINIFCN_INDEX32_LIMIT;
}

// -- float helpers for the float and double instantiations --------------------------------

template <typename T> __device__ __forceinline__ T negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() {
    return __int_as_float((int)0xff800000u);
}
template <> __device__ __forceinline__ double negative_infinity<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ull);
}

template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() {
    return __int_as_float(0x7fc00000);
}
template <> __device__ __forceinline__ double quiet_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000ll);
}

__device__ __forceinline__ float math_exp(float v) { return expf(v); }
__device__ __forceinline__ double math_exp(double v) { return exp(v); }
__device__ __forceinline__ float math_log(float v) { return logf(v); }
__device__ __forceinline__ double math_log(double v) { return log(v); }

// -- the geometry of im2col / pooling windows ------------------------------------------------
// Window (oh, ow) tap (i, j) reads padded pixel (oh*sh + i*dh, ow*sw + j*dw); padded pixel
// (yp, xp) is image pixel (yp - ph, xp - pw).

struct Windows2d {
    int kh, kw;   // taps per window
    int sh, sw;   // stride
    int ph, pw;   // zero (or -inf) padding before the image
    int dh, dw;   // dilation
    int ho, wo;   // number of windows (may exceed what fits: extra windows read padding)
};

__device__ __forceinline__ int gcd_int(int a, int b) {
    while (b != 0) { int t = a % b; a = b; b = t; }
    return a;
}

// The taps i that put padded row yp at a window start (yp - i*d divisible by s) are
// i0, i0 + step, i0 + 2*step, ... with step = s / gcd(s, d). Returns i0, or a value past
// any kernel size when no tap does (possible only when gcd(s, d) > 1 does not divide yp).
__device__ __forceinline__ int first_tap(int yp, int s, int d, int step) {
    if (d == 1) return yp % s;                   // the common case: one modulo
    for (int i = 0; i < step; ++i)
        if ((yp - i * d) % s == 0) return i;
    return 0x7fffffff;
}

// The adjoint of reading windows: calls f(i, j, oh, ow) for every tap (i, j) of every
// window (oh, ow) that reads padded pixel (yp, xp) — i.e. oh*sh + i*dh == yp and
// ow*sw + j*dw == xp with 0 <= oh < ho, 0 <= ow < wo — in ascending (i, j) order.
// Only the taps of the pixel's stride phase are visited (2 x 2 of FCN-32s's 64 x 64
// kernel with stride 32), never the whole kernel.
template <typename F>
__device__ __forceinline__ void for_each_window_reading(const Windows2d& g, int yp, int xp, F f) {
    const int step_h = g.dh == 1 ? g.sh : g.sh / gcd_int(g.sh, g.dh);
    const int step_w = g.dw == 1 ? g.sw : g.sw / gcd_int(g.sw, g.dw);
    const int j0 = first_tap(xp, g.sw, g.dw, step_w);
    for (int i = first_tap(yp, g.sh, g.dh, step_h); i < g.kh; i += step_h) {
        const int oy = yp - i * g.dh;           // = oh * sh
        if (oy < 0) break;                      // larger taps start further up
        const int oh = oy / g.sh;
        if (oh >= g.ho) continue;               // starts below the last window
        for (int j = j0; j < g.kw; j += step_w) {
            const int ox = xp - j * g.dw;
            if (ox < 0) break;
            const int ow = ox / g.sw;
            if (ow >= g.wo) continue;
            f(i, j, oh, ow);
        }
    }
}

#endif  // MINIFCN_COMMON_CUH
