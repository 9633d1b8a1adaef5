// prelude.h — lets g++ compile a CUDA kernel file as ordinary C++ so that its kernels can
// run on the CPU (see __init__.py beside this file).
//
// A launch runs every thread of every block one after another, setting the built-in
// index variables before each call. That is faithful for kernels whose threads never talk
// to each other, and the package's kernels keep to that.
//
// A source that uses __syncthreads is compiled with EMU_CONCURRENT_BLOCKS instead (the
// Python side decides): blocks still run one after another, but the threads of a block
// run at once, one OS thread each, meeting at __syncthreads; __shared__ arrays become
// function statics, which all threads of the block see. Warp functions do not exist here.
#ifndef MINIFCN_CUDA_EMU_PRELUDE_H
#define MINIFCN_CUDA_EMU_PRELUDE_H

#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#ifdef EMU_CONCURRENT_BLOCKS
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
#endif

using std::exp;   // exp/log of float and double, as CUDA's device math provides them
using std::log;

// -- the CUDA keywords, defined away ---------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// __restrict__ is a g++ keyword already.

// -- built-in types and index variables ------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

#ifdef EMU_CONCURRENT_BLOCKS
static thread_local uint3 threadIdx, blockIdx;
#define __shared__ static
#else
static uint3 threadIdx, blockIdx;
#endif
static dim3 blockDim, gridDim;

// -- intrinsics the kernels use ----------------------------------------------------------------
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, sizeof i); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, sizeof d); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, sizeof i); return i; }

// Threads run one at a time, so an atomic is a plain read-modify-write.
template <typename T>
inline T atomicAdd(T* address, T value) { T old = *address; *address = old + value; return old; }

namespace emu {

#ifdef EMU_CONCURRENT_BLOCKS
// A reusable barrier for the threads of one block.
struct Barrier {
    std::mutex m;
    std::condition_variable cv;
    unsigned int count = 0, waiting = 0, generation = 0;
    void wait() {
        std::unique_lock<std::mutex> lock(m);
        const unsigned int gen = generation;
        if (++waiting == count) { waiting = 0; ++generation; cv.notify_all(); }
        else cv.wait(lock, [&] { return gen != generation; });
    }
};
static Barrier block_barrier;
#endif

}  // namespace emu

#ifdef EMU_CONCURRENT_BLOCKS
inline void __syncthreads() { emu::block_barrier.wait(); }
#endif

namespace emu {

// Call kernel k with the arguments packed as CUDA's cuLaunchKernel packs them: args[i]
// points at the value of parameter i.
template <typename... A, std::size_t... I>
inline void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(args[I])...);
}

template <typename... A>
inline int launch(void (*k)(A...), const unsigned int* cfg, void** args) {
    gridDim = dim3(cfg[0], cfg[1], cfg[2]);
    blockDim = dim3(cfg[3], cfg[4], cfg[5]);
#ifdef EMU_CONCURRENT_BLOCKS
    // one OS thread per thread of a block; together they run the blocks in turn, meeting
    // at a barrier after each so that no block starts while another one's threads still run
    block_barrier.count = blockDim.x * blockDim.y * blockDim.z;
    std::vector<std::thread> threads;
    for (unsigned int tz = 0; tz < blockDim.z; ++tz)
    for (unsigned int ty = 0; ty < blockDim.y; ++ty)
    for (unsigned int tx = 0; tx < blockDim.x; ++tx)
        threads.emplace_back([=] {
            threadIdx = uint3{tx, ty, tz};
            for (unsigned int bz = 0; bz < gridDim.z; ++bz)
            for (unsigned int by = 0; by < gridDim.y; ++by)
            for (unsigned int bx = 0; bx < gridDim.x; ++bx) {
                blockIdx = uint3{bx, by, bz};
                call(k, args, std::index_sequence_for<A...>{});
                block_barrier.wait();
            }
        });
    for (auto& t : threads) t.join();
#else
    for (unsigned int bz = 0; bz < gridDim.z; ++bz)
    for (unsigned int by = 0; by < gridDim.y; ++by)
    for (unsigned int bx = 0; bx < gridDim.x; ++bx) {
        for (unsigned int tz = 0; tz < blockDim.z; ++tz)
        for (unsigned int ty = 0; ty < blockDim.y; ++ty)
        for (unsigned int tx = 0; tx < blockDim.x; ++tx) {
            blockIdx = uint3{bx, by, bz};
            threadIdx = uint3{tx, ty, tz};
            call(k, args, std::index_sequence_for<A...>{});
        }
    }
#endif
    return 0;
}

// The parameter types as text ("const float*,long long,int"), so that the Python side can
// check every argument against what the kernel declares — the check CuPy cannot make.
template <typename T> struct type_name;
#define EMU_TYPE_NAME(T) template <> struct type_name<T> { static const char* get() { return #T; } };
EMU_TYPE_NAME(int) EMU_TYPE_NAME(unsigned int) EMU_TYPE_NAME(long long)
EMU_TYPE_NAME(unsigned long long) EMU_TYPE_NAME(float) EMU_TYPE_NAME(double)
EMU_TYPE_NAME(float*) EMU_TYPE_NAME(const float*) EMU_TYPE_NAME(double*)
EMU_TYPE_NAME(const double*) EMU_TYPE_NAME(int*) EMU_TYPE_NAME(const int*)
EMU_TYPE_NAME(long long*) EMU_TYPE_NAME(const long long*)
EMU_TYPE_NAME(unsigned char*) EMU_TYPE_NAME(const unsigned char*)
#undef EMU_TYPE_NAME

template <typename... A>
inline const char* signature(void (*)(A...)) {
    static const std::string text = [] {
        std::string s;
        const char* names[] = {type_name<A>::get()..., nullptr};
        for (std::size_t i = 0; i < sizeof...(A); ++i) { if (i) s += ","; s += names[i]; }
        return s;
    }();
    return text.c_str();
}

}  // namespace emu

// One per kernel, after the kernel source: emu_launch_<name> and emu_signature_<name>.
#define EMU_EXPORT(name)                                                                   \
    extern "C" int emu_launch_##name(const unsigned int* cfg, void** args) {                \
        return emu::launch(name, cfg, args);                                                \
    }                                                                                      \
    extern "C" const char* emu_signature_##name() { return emu::signature(name); }

#endif  // MINIFCN_CUDA_EMU_PRELUDE_H
