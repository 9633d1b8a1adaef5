// col2im v5: v3's coalesced reads, then a transpose through shared memory so that the
// writes coalesce too (dilation 1, stride up to 64).
//
// v3 reads col in stride-phase order (coalesced) but writes pixels sw apart; v2 writes
// consecutive pixels but reads sw planes apart. Here a block takes a tile of one image row:
// TILE_Q stride blocks x sw phases. Pass 1 sums each pixel in phase order, as v3 does, into
// shared memory; after a barrier, pass 2 copies the tile out in pixel order. The tile's
// rows are padded by one so that pass 2's reads, TILE_Q + 1 apart, hit distinct banks.
//
// The only kernel here with shared memory and __syncthreads: the CPU emulator runs the
// threads of a block concurrently for it.
#include "../../minifcn/kernels/common.cuh"

#define TILE_Q 32            // stride blocks per tile
#define MAX_STRIDE 64        // shared memory is sized for strides up to this

template <typename T>
__device__ __forceinline__ void col2im_v5_kernel(const T* __restrict__ col, T* __restrict__ x,
                                                 long long nc, int h, int w, Windows2d g) {
    __shared__ T tile[MAX_STRIDE * (TILE_Q + 1)];
    const int s = g.sw;
    if (s > MAX_STRIDE) return;                   // (the host refuses these)
    const int qw = (w + g.pw + s - 1) / s;        // stride blocks covering a padded row
    const int tiles_per_row = (qw + TILE_Q - 1) / TILE_Q;
    const long long tiles = nc * h * tiles_per_row;
    const long long plane = (long long)g.kh * g.kw * g.ho * g.wo;
    const int tile_size = TILE_Q * s;
    // a whole block takes one tile at a time, so every thread reaches every barrier
    for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int qt = (int)(t % tiles_per_row);
        const long long row = t / tiles_per_row;  // = nc * h + y
        const int y = (int)(row % h);
        const T* __restrict__ c = col + (row / h) * plane;
        const int yp = y + g.ph;
        const int qy = yp / g.sh;
        const int i0 = yp - qy * g.sh;
        // pass 1: phase-major, consecutive threads on consecutive q (coalesced col reads)
        for (int e = threadIdx.x; e < tile_size; e += blockDim.x) {
            const int r = e / TILE_Q, qq = e - r * TILE_Q;
            const int q = qt * TILE_Q + qq;
            T sum = (T)0;
            for (int i = i0, a = 0; i < g.kh; i += g.sh, ++a) {
                const int oh = qy - a;
                if (oh < 0) break;
                if (oh >= g.ho) continue;
                for (int j = r, b = 0; j < g.kw; j += s, ++b) {
                    const int ow = q - b;
                    if (ow < 0) break;
                    if (ow >= g.wo) continue;
                    sum += c[(((long long)i * g.kw + j) * g.ho + oh) * g.wo + ow];
                }
            }
            tile[r * (TILE_Q + 1) + qq] = sum;
        }
        __syncthreads();
        // pass 2: pixel order, consecutive threads on consecutive pixels (coalesced writes)
        T* __restrict__ out = x + row * w;
        for (int e = threadIdx.x; e < tile_size; e += blockDim.x) {
            const int qq = e / s, r = e - qq * s;
            const int xx = (qt * TILE_Q + qq) * s + r - g.pw;
            if (xx >= 0 && xx < w) out[xx] = tile[r * (TILE_Q + 1) + qq];
        }
        __syncthreads();                          // the tile is reused by the next pass 1
    }
}

extern "C" __global__ void col2im_v5_f32(const float* __restrict__ col, float* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_v5_kernel<float>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}

extern "C" __global__ void col2im_v5_f64(const double* __restrict__ col, double* __restrict__ x,
                                         long long nc, int h, int w, int kh, int kw, int sh,
                                         int sw, int ph, int pw, int ho, int wo) {
    col2im_v5_kernel<double>(col, x, nc, h, w, Windows2d{kh, kw, sh, sw, ph, pw, 1, 1, ho, wo});
}
